package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/storage"
)

// GenesisFile is the network's genesis in a node's data dir.
const GenesisFile = "genesis.json"

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
	n.entryGossip = newEntryGossip(n)
	n.ledger, err = storage.OpenLedger(n.db, n.cfg.Network, g, time.Now,
		storage.WithStoreHook(func(e storage.Entry) { n.rset.add(e.Hash()) }),
		// Peers' entries are not fsynced one by one: every node ingests
		// every entry, and what a power loss drops, reconciliation brings
		// back. Own entries always are.
		storage.WithReceivedSync(false))
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
	name := protocol.LedgerTopic(n.cfg.Network)
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
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		for {
			if _, err := sub.Next(ctx); err != nil {
				return // validation did the work
			}
		}
	}()
	go func() { defer n.wg.Done(); n.entryGossip.Run(ctx) }()
	// The genesis grant is claimed once the node has confirmed its head
	// with its peers (claimGrant): it may have claimed it before.
	return nil
}

// signEntry writes an entry to this node's chain and gossips it, whatever
// the head gate says: only for appendAll, which checks the gate, and for
// the caller that has just confirmed the head (see confirmHead).
func (n *Node) signEntry(body storage.Body) (storage.Entry, error) {
	e, err := n.ledger.Append(n.priv, body)
	if err != nil {
		return e, err
	}
	n.entryGossip.Add(n.runCtx, e.Encode())
	return e, nil
}

// publishEntries gossips entries at once, as few messages as the size
// limit allows.
func (n *Node) publishEntries(raws [][]byte) {
	for _, msg := range packEntries(raws) {
		n.publishLedger(msg[0], msg[1:])
	}
}

// decodeGossipEntries splits a gossiped batch into its entries' bytes.
func decodeGossipEntries(b []byte) ([][]byte, error) {
	// One encoding per batch (minimal lengths, nothing trailing): the same
	// entries never travel as different messages.
	return protocol.SplitFrames(b, protocol.MaxGossipEntries, storage.MaxEntrySize)
}

func (n *Node) publishLedger(kind byte, b []byte) {
	if n.ledgerTopic == nil {
		return
	}
	if err := n.ledgerTopic.Publish(n.runCtx, append([]byte{kind}, b...)); err != nil {
		n.log.Debug("publish ledger gossip", "err", err)
	}
}

// validateLedgerGossip ingests gossiped entries and fraud proofs: a batch
// whose entries are all valid is forwarded; repeats, and a batch with an
// entry that waits (for its predecessor, for funds, for the hold that
// backs a lease), are not (batchVerdict); invalid ones are rejected,
// which costs the sender score (see peerScoreParams).
func (n *Node) validateLedgerGossip(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if from == n.host.ID() {
		// Our own publication, already in our ledger: validating it again
		// would find a duplicate and stop it from going out. Answered
		// outside withDB: Publish validates inline, and its callers may
		// hold the gate already (a nested read lock deadlocks once Close
		// waits for the write lock).
		return pubsub.ValidationAccept
	}
	res := pubsub.ValidationIgnore
	n.withDB(func() { res = n.validateLedgerMessage(from, m) })
	return res
}

func (n *Node) validateLedgerMessage(from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if len(m.Data) < 2 {
		n.ledgerRejected.Inc()
		return pubsub.ValidationReject
	}
	switch m.Data[0] {
	case protocol.LedgerGossipEntries:
		raws, err := decodeGossipEntries(m.Data[1:])
		if err != nil {
			n.ledgerRejected.Inc()
			n.log.Debug("ledger gossip rejected", "from", from, "err", err)
			return pubsub.ValidationReject
		}
		// Entries already stored need no signature check: a batch of
		// old entries costs a lookup each, not a verification.
		fresh := raws[:0:0]
		for _, raw := range raws {
			if ok, err := n.ledger.Has(sha256.Sum256(raw)); err != nil || !ok {
				fresh = append(fresh, raw)
			}
		}
		if len(fresh) == 0 || n.disk.Low() != nil {
			// With the disk low, peers' entries wait: reconciliation
			// brings them once there is room.
			return pubsub.ValidationIgnore
		}
		res, err := n.ledger.IngestMany(fresh)
		if err != nil {
			n.log.Warn("ingest gossiped entries", "err", err)
			return pubsub.ValidationIgnore // our store failed, not the sender
		}
		return n.batchVerdict(from, fresh, res)
	case protocol.LedgerGossipFraud:
		p, err := storage.DecodeFraudProof(m.Data[1:])
		if err == nil {
			err = n.ledger.IngestFraudProof(p)
		}
		return n.ledgerVerdict(err)
	}
	n.ledgerRejected.Inc()
	return pubsub.ValidationReject
}

// batchVerdict judges a gossiped batch by what became of its entries: one
// of them refused rejects the message (an honest peer forwards only
// batches it accepted); every one stored (or already known) forwards it.
// A batch with an entry that only waits (for its predecessor, for funds,
// for the hold that backs a lease), or that a fraud proof or a refusal
// that is no fault of the sender's kept out, is ignored: this node has
// not judged that entry, and a peer that holds what it waits for might
// find it invalid and blame this node for forwarding it. The entries
// stored here go on by reconciliation, and the waiting ones once what
// they wait for comes; a fraud proof goes out on its own (spreadFraud).
// Entries of other accounts that waited and were refused when this batch
// let them through are not the sender's doing: they count, but do not
// reject; nor do refusals an honest sender can cause (senderFault).
func (n *Node) batchVerdict(from peer.ID, raws [][]byte, res storage.IngestResult) pubsub.ValidationResult {
	for _, p := range res.Fraud {
		n.spreadFraud(p)
	}
	n.ledgerRejected.Add(float64(len(res.Rejected)))
	n.sendFraudProofs(from, res.Rejected)
	inBatch := map[accountSeq]bool{}
	for _, raw := range raws {
		if e, err := storage.DecodeEntry(raw); err == nil {
			inBatch[accountSeq{e.Account, e.Seq}] = true
		}
	}
	for _, r := range res.Rejected {
		if r.Account == "" || inBatch[accountSeq{r.Account, r.Seq}] && senderFault(r.Err) {
			n.log.Debug("ledger gossip rejected", "from", from, "err", r.Err)
			return pubsub.ValidationReject
		}
	}
	if n.allStored(raws, res.Accepted) {
		return pubsub.ValidationAccept
	}
	return pubsub.ValidationIgnore
}

// allStored reports whether every entry of raws is now stored: among
// those the ingest accepted, or (stored meanwhile by another ingest)
// found in the ledger.
func (n *Node) allStored(raws [][]byte, accepted []storage.Entry) bool {
	stored := make(map[storage.Hash]bool, len(accepted))
	for _, e := range accepted {
		stored[e.Hash()] = true
	}
	for _, raw := range raws {
		h := sha256.Sum256(raw)
		if stored[h] {
			continue
		}
		if ok, err := n.ledger.Has(h); err != nil || !ok {
			return false
		}
	}
	return true
}

// senderFault reports whether an entry refused with err shows its sender
// to be dishonest. Two refusals do not: an entry of an account this node
// froze (a forwarder may not have the fraud proof yet; it is sent one)
// and an entry dated past this node's clock and skew (the clocks may
// disagree). Every other refusal is one every node reaches alike, for
// good, and an honest node neither writes nor forwards such an entry.
func senderFault(err error) bool {
	return !errors.Is(err, storage.ErrFrozen) && !errors.Is(err, storage.ErrFutureTime)
}

// accountSeq names an entry's place: its account and seq.
type accountSeq struct {
	account peer.ID
	seq     uint64
}

// ingestOne ingests one entry that did not come by gossip. Whichever way
// an equivocation is found, its proof is gossiped, so that every node
// freezes the account and not only the one that saw both entries.
func (n *Node) ingestOne(raw []byte) error {
	_, err := n.ledger.Ingest(raw)
	var eq *storage.EquivocationError
	if errors.As(err, &eq) {
		n.spreadFraud(eq.Proof)
	}
	return err
}

// spreadFraud gossips a proof that this node has just stored: the account
// it convicts is now frozen here, and must be everywhere.
func (n *Node) spreadFraud(p storage.FraudProof) {
	if a, err := storage.DecodeEntry(p.A); err == nil {
		n.log.Warn("equivocation: account frozen", "account", a.Account, "seq", a.Seq)
	}
	n.publishLedger(protocol.LedgerGossipFraud, p.Encode())
}

// ledgerVerdict judges a gossiped fraud proof by what ingesting it did.
// A failure of this node's store (no room on its disk) says nothing of
// the proof: it is ignored, and comes again by gossip or reconciliation.
func (n *Node) ledgerVerdict(err error) pubsub.ValidationResult {
	switch {
	case err == nil:
		return pubsub.ValidationAccept
	case errors.Is(err, storage.ErrStore):
		n.log.Warn("store gossiped fraud proof", "err", err)
		return pubsub.ValidationIgnore
	case errors.Is(err, storage.ErrDuplicate), errors.Is(err, storage.ErrGap), errors.Is(err, storage.ErrOverdraft):
		return pubsub.ValidationIgnore
	default:
		n.ledgerRejected.Inc()
		n.log.Debug("ledger gossip rejected", "err", err)
		return pubsub.ValidationReject
	}
}
