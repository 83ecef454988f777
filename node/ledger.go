package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
)

// GenesisFile is the network's genesis in a node's data dir.
const GenesisFile = "genesis.json"

// Ledger gossip messages: a type byte, then an encoded entry or fraud proof.
const (
	ledgerMsgEntry = 1
	ledgerMsgFraud = 2
)

// loadGenesis reads the data dir's genesis file. Without one the node has
// an empty genesis: no grants, so it can earn credits but not spend them.
func loadGenesis(cfg Config) (*storage.Genesis, error) {
	g, err := storage.LoadGenesis(filepath.Join(cfg.DataDir, GenesisFile))
	if errors.Is(err, os.ErrNotExist) {
		return &storage.Genesis{Network: cfg.Network}, nil
	}
	if err != nil {
		return nil, err
	}
	if g.Network != cfg.Network {
		return nil, fmt.Errorf("genesis is for network %q, config says %q", g.Network, cfg.Network)
	}
	if cfg.Private && g.SwarmKeyFingerprint != "" {
		psk, err := LoadSwarmKey(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("genesis: %w", err)
		}
		if got := SwarmKeyFingerprint(psk); got != g.SwarmKeyFingerprint {
			return nil, fmt.Errorf("genesis is for swarm key %s, this node has %s", g.SwarmKeyFingerprint, got)
		}
	}
	return g, nil
}

// startLedger opens the ledger, claims this node's genesis grant, and joins
// the ledger gossip topic, where nodes publish the entries they write and
// the fraud proofs they find.
func (n *Node) startLedger(ctx context.Context) error {
	g, err := loadGenesis(n.cfg)
	if err != nil {
		return err
	}
	n.ledger, err = storage.OpenLedger(n.db, n.cfg.Network, g, time.Now,
		storage.WithStoreHook(func(e storage.Entry) { n.rset.add(e.Hash()) }))
	if err != nil {
		return err
	}
	// Nothing writes to the ledger yet: the summary starts from what is
	// stored, and the hook keeps it current from here on.
	for item, err := range n.ledger.Items() {
		if err != nil {
			return fmt.Errorf("ledger summary: %w", err)
		}
		n.rset.add(item.Hash)
	}
	name := protocol.Prefix(n.cfg.Network) + "/ledger/1"
	if err := n.pubsub.RegisterTopicValidator(name, n.validateLedgerGossip); err != nil {
		return fmt.Errorf("topic validator %s: %w", name, err)
	}
	if n.ledgerTopic, err = n.pubsub.Join(name); err != nil {
		return fmt.Errorf("join %s: %w", name, err)
	}
	sub, err := n.ledgerTopic.Subscribe()
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", name, err)
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			if _, err := sub.Next(ctx); err != nil {
				return // validation did the work
			}
		}
	}()
	if amount, ok := g.GrantFor(n.host.ID()); ok {
		if head, err := n.ledger.Head(n.host.ID()); err == nil && head.Seq == 0 {
			if _, err := n.appendEntry(storage.GrantBody{Amount: amount}); err != nil {
				return fmt.Errorf("claim genesis grant: %w", err)
			}
		}
	}
	return nil
}

// appendEntry writes an entry to this node's chain and gossips it.
func (n *Node) appendEntry(body storage.Body) (storage.Entry, error) {
	e, err := n.ledger.Append(n.priv, body)
	if err != nil {
		return e, err
	}
	n.publishLedger(ledgerMsgEntry, e.Encode())
	return e, nil
}

func (n *Node) publishLedger(kind byte, b []byte) {
	if n.ledgerTopic == nil {
		return
	}
	if err := n.ledgerTopic.Publish(n.runCtx, append([]byte{kind}, b...)); err != nil {
		n.log.Debug("publish ledger gossip", "err", err)
	}
}

// validateLedgerGossip ingests gossiped entries and fraud proofs: valid
// ones are forwarded; repeats and entries that wait for their predecessors
// are not; invalid ones are rejected, which costs the sender score.
func (n *Node) validateLedgerGossip(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if from == n.host.ID() {
		// Our own publication, already in our ledger: validating it again
		// would find a duplicate and stop it from going out.
		return pubsub.ValidationAccept
	}
	if len(m.Data) < 2 {
		n.ledgerRejected.Inc()
		return pubsub.ValidationReject
	}
	switch m.Data[0] {
	case ledgerMsgEntry:
		_, err := n.ledger.Ingest(m.Data[1:])
		return n.ledgerVerdict(err)
	case ledgerMsgFraud:
		p, err := storage.DecodeFraudProof(m.Data[1:])
		if err == nil {
			err = n.ledger.IngestFraudProof(p)
		}
		return n.ledgerVerdict(err)
	}
	n.ledgerRejected.Inc()
	return pubsub.ValidationReject
}

func (n *Node) ledgerVerdict(err error) pubsub.ValidationResult {
	var eq *storage.EquivocationError
	switch {
	case err == nil:
		return pubsub.ValidationAccept
	case errors.As(err, &eq):
		n.log.Warn("equivocation: account frozen", "account", eq.Account, "seq", eq.Seq)
		n.publishLedger(ledgerMsgFraud, eq.Proof.Encode())
		return pubsub.ValidationAccept
	case errors.Is(err, storage.ErrDuplicate), errors.Is(err, storage.ErrGap), errors.Is(err, storage.ErrOverdraft):
		return pubsub.ValidationIgnore
	default:
		n.ledgerRejected.Inc()
		n.log.Debug("ledger gossip rejected", "err", err)
		return pubsub.ValidationReject
	}
}

// --- settlement ---

// errCostOverflow refuses a price that makes a job's cost overflow.
var errCostOverflow = errors.New("price times GPUs times max_duration overflows")

// maxCost is what a job can cost at most: its price per GPU-second for
// every GPU (a job without GPUs is billed as one) for its whole
// max_duration, in micro-credits.
func maxCost(price uint64, spec *pb.JobSpec) (uint64, error) {
	gpus := max(uint64(spec.GetResources().GetGpus()), 1)
	secs := (uint64(max(spec.GetMaxDurationMs(), 0)) + 999) / 1000
	hi, perSec := bits.Mul64(price, gpus)
	hi2, total := bits.Mul64(perSec, secs)
	if hi != 0 || hi2 != 0 {
		return 0, errCostOverflow
	}
	return total, nil
}

// cost is what a run used at price: GPU-milliseconds metered by the
// provider, rounded up to a whole micro-credit, never above the hold.
func cost(price uint64, u *pb.Usage, hold uint64) uint64 {
	if u == nil || u.GpuMs <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(price, uint64(u.GpuMs))
	if hi != 0 || lo > math.MaxUint64-999 {
		return hold
	}
	return min((lo+999)/1000, hold)
}

// escrow returns the hold entry that backs an award: the job's open hold
// if it names this provider and covers the price, else a new one (the old
// one released in the same batch: a job is re-awarded, maybe dearer).
func (n *Node) escrow(id protocol.JobID, provider peer.ID, price uint64, spec *pb.JobSpec) ([]byte, error) {
	amount, err := maxCost(price, spec)
	if err != nil {
		return nil, err
	}
	job := storage.Hash(id)
	hold := storage.HoldBody{Job: job, Provider: provider, Amount: amount}
	e, ok, err := n.ledger.HoldEntry(n.host.ID(), job)
	if err != nil {
		return nil, err
	}
	if ok {
		if h, _ := e.Body.(storage.HoldBody); h.Provider == provider && h.Amount >= amount {
			return e.Encode(), nil
		}
		es, err := n.ledger.AppendBatch(n.priv, []storage.Body{storage.ReleaseBody{Job: job}, hold})
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			n.publishLedger(ledgerMsgEntry, e.Encode())
		}
		return es[1].Encode(), nil
	}
	if e, err = n.appendEntry(hold); err != nil {
		return nil, err
	}
	return e.Encode(), nil
}

// settle closes a finished job's hold: a payment to the provider whose
// result was accepted, for the usage its receipt states, or a release.
// The hold stays open until then, so a crash between the two is settled
// on restart.
func (n *Node) settle(j *market.Job) {
	if !j.State.Terminal() {
		return
	}
	hold, ok, err := n.ledger.HoldFor(n.host.ID(), storage.Hash(j.ID))
	if err != nil || !ok {
		return
	}
	var body storage.Body = storage.ReleaseBody{Job: storage.Hash(j.ID)}
	if j.State == market.Succeeded && len(j.Receipt) > 0 {
		body = storage.PaymentBody{
			Job: storage.Hash(j.ID), To: j.Provider, Receipt: sha256.Sum256(j.Receipt),
			Amount: cost(j.Price, j.Usage, hold.Amount),
		}
	}
	if _, err := n.appendEntry(body); err != nil {
		n.log.Error("settle job", "job", j.ID, "err", err)
	}
}

// checkHold makes sure the requester escrowed a lease's maximum cost before
// the provider runs it: the award's hold entry must be valid in this
// node's ledger (its chain is fetched from the requester if this node
// lacks earlier entries) and cover the price.
func (n *Node) checkHold(ctx context.Context, l *market.Lease) error {
	if len(l.Hold) == 0 {
		return errors.New("award without an escrow hold")
	}
	_, err := n.ledger.Ingest(l.Hold)
	if errors.Is(err, storage.ErrGap) {
		if err = n.syncChain(ctx, l.Requester); err == nil {
			_, err = n.ledger.Ingest(l.Hold)
		}
	}
	if err != nil && !errors.Is(err, storage.ErrDuplicate) {
		return fmt.Errorf("escrow hold: %w", err)
	}
	hold, ok, err := n.ledger.HoldFor(l.Requester, storage.Hash(l.Job))
	if err != nil {
		return fmt.Errorf("escrow hold: %w", err)
	}
	if !ok {
		return errors.New("escrow hold: none open for the job")
	}
	if hold.Provider != n.host.ID() {
		return fmt.Errorf("escrow hold names provider %s, not this one", hold.Provider)
	}
	want, err := maxCost(l.Price, l.Spec)
	if err != nil {
		return fmt.Errorf("escrow hold: %w", err)
	}
	if hold.Amount < want {
		return fmt.Errorf("escrow hold of %d does not cover the job's %d", hold.Amount, want)
	}
	return nil
}

// recordLease writes, in this provider's chain, that it took a lease.
func (n *Node) recordLease(l *market.Lease) {
	if _, err := n.appendEntry(storage.LeaseBody{Job: storage.Hash(l.Job), Requester: l.Requester, Price: l.Price}); err != nil {
		n.log.Warn("record lease", "job", l.Job, "err", err)
	}
}

// recordReceipt writes, in this provider's chain, the receipt it signed:
// the signed result's hash, the result's content ID and the usage.
func (n *Node) recordReceipt(r *pb.Result, raw []byte) {
	body := storage.ReceiptBody{Job: storage.Hash(r.JobId), Receipt: sha256.Sum256(raw), Result: r.ResultId,
		Usage: storage.Usage{WallMS: uint64(r.GetUsage().GetWallMs()), GPUMS: uint64(r.GetUsage().GetGpuMs()), ExitCode: r.ExitCode}}
	if _, err := n.appendEntry(body); err != nil {
		n.log.Warn("record receipt", "job", protocol.JobID(r.JobId), "err", err)
	}
}
