package ledgerd

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
)

// LoadGenesis reads a genesis file for network. Without one the node has
// an empty genesis: no grants, so it can earn credits but not spend them.
// swarmKey, if set, names the node's swarm key (a private network's), which
// a genesis that names one must match; it is read only then.
func LoadGenesis(path, network string, swarmKey func() (fingerprint string, err error)) (*ledger.Genesis, error) {
	g, err := storage.LoadGenesis(path)
	if errors.Is(err, os.ErrNotExist) {
		return &ledger.Genesis{Network: network}, nil
	}
	if err != nil {
		return nil, err
	}
	if g.Network != network {
		return nil, fmt.Errorf("genesis is for network %q, config says %q", g.Network, network)
	}
	if swarmKey != nil && g.SwarmKeyFingerprint != "" {
		got, err := swarmKey()
		if err != nil {
			return nil, fmt.Errorf("genesis: %w", err)
		}
		if got != g.SwarmKeyFingerprint {
			return nil, fmt.Errorf("genesis is for swarm key %s, this node has %s", g.SwarmKeyFingerprint, got)
		}
	}
	return g, nil
}

// ledgerGossipDelay is how long this node's new ledger entries wait before
// they are gossiped, so that the entries of many writes go out as one
// message: every other node checks and stores each message the moment it
// arrives, on the same cores the market's messages need. An award carries
// its hold (a provider that lacks the requester's entries before it
// fetches them), and reconciliation repairs what gossip misses, including
// what is still queued when the node stops.
const ledgerGossipDelay = 100 * time.Millisecond

// join joins the ledger gossip topic, where nodes publish the entries they
// write and the fraud proofs they find, and starts the reader of its
// subscription and the publisher of own entries.
func (s *Service) join(ps *pubsub.PubSub) error {
	name := protocol.LedgerTopic(s.cfg.Network)
	if err := ps.RegisterTopicValidator(name, s.validateLedgerGossip); err != nil {
		return fmt.Errorf("topic validator %s: %w", name, err)
	}
	var err error
	if s.topic, err = ps.Join(name); err != nil {
		return fmt.Errorf("join %s: %w", name, err)
	}
	sub, err := s.topic.Subscribe()
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", name, err)
	}
	// Own new entries: those written within ledgerGossipDelay of the
	// first go out together. Queueing never blocks.
	s.entries = gossip.NewBatcher(gossip.Config{
		Delay: ledgerGossipDelay, Pack: packEntries, Publish: s.publish, Clock: s.clock,
	})
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		for {
			if _, err := sub.Next(s.ctx); err != nil {
				return // validation did the work
			}
		}
	}()
	go func() { defer s.wg.Done(); s.entries.Run(s.ctx) }()
	// The genesis grant is claimed once the node has confirmed its head
	// with its peers (claimGrant): it may have claimed it before.
	return nil
}

// signEntry writes an entry to this node's chain and gossips it, whatever
// the head gate says: only for appendAll, which checks the gate, and for
// the caller that has just confirmed the head (see confirmHead).
func (s *Service) signEntry(body ledger.Body) (ledger.Entry, error) {
	e, err := s.ledger.Append(s.key, body)
	if err != nil {
		return e, err
	}
	s.entries.Add(s.ctx, e.Encode())
	return e, nil
}

// packEntries packs entries into ledger gossip messages, as few as the
// size limit allows: a node's batch of writes costs its peers one
// validation.
func packEntries(raws [][]byte) [][]byte {
	var msgs [][]byte
	for len(raws) > 0 {
		k := min(len(raws), protocol.MaxGossipEntries)
		msg := []byte{protocol.LedgerGossipEntries}
		for _, raw := range raws[:k] {
			msg = protocol.AppendFrame(msg, raw)
		}
		msgs = append(msgs, msg)
		raws = raws[k:]
	}
	return msgs
}

// publishEntries gossips entries at once.
func (s *Service) publishEntries(raws [][]byte) {
	for _, msg := range packEntries(raws) {
		s.publish(s.ctx, msg)
	}
}

// publish publishes a ledger gossip message: its type byte, then its body.
func (s *Service) publish(ctx context.Context, msg []byte) {
	if s.topic == nil {
		return
	}
	if err := s.topic.Publish(ctx, msg); err != nil {
		s.log.Debug("publish ledger gossip", "err", err)
	}
}

// decodeGossipEntries splits a gossiped batch into its entries' bytes.
func decodeGossipEntries(b []byte) ([][]byte, error) {
	// One encoding per batch (minimal lengths, nothing trailing): the same
	// entries never travel as different messages.
	return protocol.SplitFrames(b, protocol.MaxGossipEntries, ledger.MaxEntrySize)
}

// validateLedgerGossip ingests gossiped entries and fraud proofs: a batch
// whose entries are all valid is forwarded; repeats, and a batch with an
// entry that waits (for its predecessor, for funds, for the hold that
// backs a lease), are not (batchVerdict); invalid ones are rejected,
// which costs the sender score (see gossip.ScoreParams).
func (s *Service) validateLedgerGossip(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if from == s.self {
		// Our own publication, already in our ledger: validating it again
		// would find a duplicate and stop it from going out. Answered
		// outside withDB: Publish validates inline, and its callers may
		// hold the gate already (a nested read lock deadlocks once Close
		// waits for the write lock).
		return pubsub.ValidationAccept
	}
	res := pubsub.ValidationIgnore
	s.withDB(func() { res = s.validateLedgerMessage(from, m) })
	return res
}

func (s *Service) validateLedgerMessage(from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if len(m.Data) < 2 {
		s.rejected.Inc()
		return pubsub.ValidationReject
	}
	switch m.Data[0] {
	case protocol.LedgerGossipEntries:
		raws, err := decodeGossipEntries(m.Data[1:])
		if err != nil {
			s.rejected.Inc()
			s.log.Debug("ledger gossip rejected", "from", from, "err", err)
			return pubsub.ValidationReject
		}
		// Entries already stored need no signature check: a batch of
		// old entries costs a lookup each, not a verification.
		fresh := raws[:0:0]
		for _, raw := range raws {
			if ok, err := s.ledger.Has(sha256.Sum256(raw)); err != nil || !ok {
				fresh = append(fresh, raw)
			}
		}
		if len(fresh) == 0 || s.disk.Low() != nil {
			// With the disk low, peers' entries wait: reconciliation
			// brings them once there is room.
			return pubsub.ValidationIgnore
		}
		res, err := s.ledger.IngestMany(fresh)
		if err != nil {
			s.log.Warn("ingest gossiped entries", "err", err)
			return pubsub.ValidationIgnore // our store failed, not the sender
		}
		return s.batchVerdict(from, fresh, res)
	case protocol.LedgerGossipFraud:
		p, err := ledger.DecodeFraudProof(m.Data[1:])
		if err == nil {
			err = s.ledger.IngestFraudProof(p)
		}
		return s.ledgerVerdict(err)
	}
	s.rejected.Inc()
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
func (s *Service) batchVerdict(from peer.ID, raws [][]byte, res storage.IngestResult) pubsub.ValidationResult {
	for _, p := range res.Fraud {
		s.spreadFraud(p)
	}
	s.rejected.Add(float64(len(res.Rejected)))
	s.sendFraudProofs(from, res.Rejected)
	var inBatch map[accountSeq]bool // decoded only when something was refused
	for _, r := range res.Rejected {
		if inBatch == nil {
			inBatch = places(raws)
		}
		if r.Account == "" || inBatch[accountSeq{r.Account, r.Seq}] && senderFault(r.Err) {
			s.log.Debug("ledger gossip rejected", "from", from, "err", r.Err)
			return pubsub.ValidationReject
		}
	}
	if s.allStored(raws, res.Accepted) {
		return pubsub.ValidationAccept
	}
	return pubsub.ValidationIgnore
}

// places returns the places (account and seq) of the entries of raws.
func places(raws [][]byte) map[accountSeq]bool {
	in := make(map[accountSeq]bool, len(raws))
	for _, raw := range raws {
		if e, err := ledger.DecodeEntry(raw); err == nil {
			in[accountSeq{e.Account, e.Seq}] = true
		}
	}
	return in
}

// allStored reports whether every entry of raws is now stored: among
// those the ingest accepted, or (stored meanwhile by another ingest)
// found in the ledger.
func (s *Service) allStored(raws [][]byte, accepted []ledger.Entry) bool {
	stored := make(map[ledger.Hash]bool, len(accepted))
	for _, e := range accepted {
		stored[e.Hash()] = true
	}
	for _, raw := range raws {
		h := sha256.Sum256(raw)
		if stored[h] {
			continue
		}
		if ok, err := s.ledger.Has(h); err != nil || !ok {
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
	return !errors.Is(err, ledger.ErrFrozen) && !errors.Is(err, ledger.ErrFutureTime)
}

// accountSeq names an entry's place: its account and seq.
type accountSeq struct {
	account peer.ID
	seq     uint64
}

// ingestOne ingests one entry that did not come by gossip. Whichever way
// an equivocation is found, its proof is gossiped, so that every node
// freezes the account and not only the one that saw both entries.
func (s *Service) ingestOne(raw []byte) error {
	_, err := s.ledger.Ingest(raw)
	var eq *ledger.EquivocationError
	if errors.As(err, &eq) {
		s.spreadFraud(eq.Proof)
	}
	return err
}

// spreadFraud gossips a proof that this node has just stored: the account
// it convicts is now frozen here, and must be everywhere.
func (s *Service) spreadFraud(p ledger.FraudProof) {
	if a, err := ledger.DecodeEntry(p.A); err == nil {
		s.log.Warn("equivocation: account frozen", "account", a.Account, "seq", a.Seq)
	}
	s.publish(s.ctx, append([]byte{protocol.LedgerGossipFraud}, p.Encode()...))
}

// ledgerVerdict judges a gossiped fraud proof by what ingesting it did.
// A failure of this node's store (no room on its disk) says nothing of
// the proof: it is ignored, and comes again by gossip or reconciliation.
func (s *Service) ledgerVerdict(err error) pubsub.ValidationResult {
	switch {
	case err == nil:
		return pubsub.ValidationAccept
	case errors.Is(err, storage.ErrStore):
		s.log.Warn("store gossiped fraud proof", "err", err)
		return pubsub.ValidationIgnore
	case errors.Is(err, ledger.ErrDuplicate), errors.Is(err, ledger.ErrGap), errors.Is(err, ledger.ErrOverdraft):
		return pubsub.ValidationIgnore
	default:
		s.rejected.Inc()
		s.log.Debug("ledger gossip rejected", "err", err)
		return pubsub.ValidationReject
	}
}
