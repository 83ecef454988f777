package ledgerd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
)

// offerHoldWrite is the ledger write that escrows a job's maximum cost at
// its max price once the job is posted (and persisted), naming no
// provider: it is synced while the offer collects bids, so the first award
// finds it on disk and leaves without waiting for a sync. An interactive
// job's first bid can come within a millisecond, so its hold goes at once;
// a batch job's waits up to lazyWrite to share a sync with others, a small
// part of its bid window (and an award that comes first takes it along).
// Without the credits for it, nothing is written and the award writes a
// hold at the winning price instead.
func (s *Service) offerHoldWrite(id protocol.JobID, spec *pb.JobSpec) *ledgerWrite {
	amount, ok := market.PostingHold(spec)
	if !ok {
		return nil
	}
	body := ledger.HoldBody{Job: ledger.Hash(id), Amount: amount}
	return &ledgerWrite{
		jobs:   []protocol.JobID{id},
		urgent: spec.GetTier() == protocol.TierInteractive,
		bodies: func(batch *batch) []ledger.Body {
			if _, ok, err := s.ledger.HoldFor(s.self, body.Job); err != nil || ok {
				return nil
			}
			// Holds computed earlier in the same batch are not applied
			// yet: count them, so this one does not make the batch fail.
			b, err := s.ledger.Balance(s.self)
			if err != nil || b.Available() < batch.held+amount {
				return nil
			}
			batch.held += amount
			return []ledger.Body{body}
		},
	}
}

// ChainBefore returns this node's entries after seq after and before the
// hold entry, oldest first, for an award to carry: nil when there are none,
// or more than an award may carry (the provider then fetches them).
func (s *Service) ChainBefore(hold []byte, after uint64) [][]byte {
	h, err := ledger.DecodeEntry(hold)
	if err != nil || after >= h.Seq-1 || h.Seq-1-after > protocol.MaxAwardChain {
		return nil
	}
	es, err := s.ledger.Entries(s.self, after, int(h.Seq-after-1))
	if err != nil {
		return nil
	}
	chain := make([][]byte, 0, len(es))
	size := 0
	for _, e := range es {
		raw := e.Encode()
		// Half a message at most, so the signed award always fits.
		if size += len(raw); e.Seq >= h.Seq || len(raw) > protocol.MaxHoldEntry || size > protocol.MaxMarketMessageSize/2 {
			return nil
		}
		chain = append(chain, raw)
	}
	return chain
}

// appendAll writes bodies to this node's chain with one sync per batch and
// gossips them; if a batch is refused (all or nothing), its bodies are
// written one by one, so one bad entry costs only itself. It returns the
// entries written, nil where a body was refused, and each refusal's
// error. Before the node has confirmed its head it writes nothing.
func (s *Service) appendAll(bodies []ledger.Body, what string) ([]*ledger.Entry, []error) {
	out, errs := make([]*ledger.Entry, len(bodies)), make([]error, len(bodies))
	if err := s.head.err(); err != nil {
		if len(bodies) > 0 {
			s.log.Warn(what+": not written", "entries", len(bodies), "err", err)
		}
		for i := range errs {
			errs[i] = err
		}
		return out, errs
	}
	for start := 0; start < len(bodies); start += storage.MaxAppendBatch {
		chunk := bodies[start:min(start+storage.MaxAppendBatch, len(bodies))]
		es, err := s.ledger.AppendBatch(s.key, chunk)
		if err == nil {
			raws := make([][]byte, len(es))
			for i := range es {
				out[start+i] = &es[i]
				raws[i] = es[i].Encode()
			}
			s.entries.Add(s.ctx, raws...)
			continue
		}
		for i, b := range chunk {
			e, err := s.signEntry(b)
			if err != nil {
				s.log.Error(what, "kind", b.Kind(), "err", err)
				errs[start+i] = err
				continue
			}
			out[start+i] = &e
		}
	}
	return out, errs
}

// SignGrant signs an award's grant: this node, its requester, grants the
// award's provider a lease of the job at its price and attempt. The
// provider's lease entry quotes it; without it no ledger takes the lease.
func (s *Service) SignGrant(a market.HoldRequest) ([]byte, error) {
	g := ledger.LeaseGrant{Job: ledger.Hash(a.Job), Requester: s.self, Provider: a.Provider,
		Price: a.Price, Attempt: a.Attempt}
	return g.Sign(s.cfg.Network, s.key)
}

// CheckGrant checks an award's grant to this provider (for market.Config's
// CheckGrant, on the engine's loop): the same check every ledger makes of
// the lease entry that will quote it. An award it refuses is declined.
func (s *Service) CheckGrant(requester peer.ID, job protocol.JobID, a *pb.Award) error {
	g := ledger.LeaseGrant{Job: ledger.Hash(job), Requester: requester, Provider: s.self,
		Price: a.Price, Attempt: a.Attempt}
	if err := g.Verify(s.cfg.Network, a.Grant); err != nil {
		return err
	}
	return nil
}

// leaseWrite is the ledger write that records, in this provider's chain,
// that it took a lease (after CheckHold found the hold that backs it and
// claimed the lease, a claim given back once the lease is written),
// quoting the requester's grant of the award.
func (s *Service) leaseWrite(l *market.Lease) *ledgerWrite {
	body := ledger.LeaseBody{Job: ledger.Hash(l.Job), Requester: l.Requester, Price: l.Price,
		Attempt: l.Attempt, Grant: l.Grant}
	return &ledgerWrite{
		bodies: func(b *batch) []ledger.Body {
			b.leases[body.Job]++
			return []ledger.Body{body}
		},
		done: func([]*ledger.Entry, []error) { s.ledger.UnclaimLease(s.self, body.Job) },
	}
}

// ingestHold takes an award's hold entry into this node's ledger: the
// entries before it that the award carried first, then the hold, fetching
// the requester's chain while the hold waits for entries this node lacks
// (they come by gossip, maybe after the award), until ctx ends.
func (s *Service) ingestHold(ctx context.Context, requester peer.ID, hold []byte, chain [][]byte) error {
	if len(hold) == 0 {
		return errors.New("award without an escrow hold")
	}
	if len(chain) > 0 {
		if _, err := s.ingestFetched(requester, chain); err != nil {
			return fmt.Errorf("escrow hold's chain: %w", err)
		}
	}
	err := s.ingestOne(hold)
	for delay := 50 * time.Millisecond; errors.Is(err, ledger.ErrGap); delay = min(2*delay, time.Second) {
		if serr := s.syncChainOnce(ctx, requester); serr != nil {
			s.log.Debug("fetch requester's chain", "requester", requester, "err", serr)
		}
		if err = s.ingestOne(hold); !errors.Is(err, ledger.ErrGap) {
			break
		}
		if err := s.sleep(ctx, delay); err != nil {
			return fmt.Errorf("escrow hold: %w", err)
		}
	}
	if err != nil && !errors.Is(err, ledger.ErrDuplicate) {
		return fmt.Errorf("escrow hold: %w", err)
	}
	return nil
}

// receiptWrite is the ledger write that records, in this provider's
// chain, the receipt of a bill it sent: the result's receipt hash, its
// content ID and the usage billed. The ledger takes one receipt for each
// lease of the job in this chain.
func (s *Service) receiptWrite(b *pb.Bill) *ledgerWrite {
	body := receiptBody(b)
	return &ledgerWrite{bodies: func(bt *batch) []ledger.Body {
		leases, receipts, err := s.ledger.Leases(s.self, body.Job)
		if err != nil || leases+bt.leases[body.Job] <= receipts+bt.receipts[body.Job] {
			s.log.Debug("no lease left for a receipt; not recorded", "job", body.Job, "err", err)
			return nil
		}
		bt.receipts[body.Job]++
		return []ledger.Body{body}
	}}
}

// IngestWaive takes a provider's waive entry that came with its decline.
func (s *Service) IngestWaive(raw []byte) error {
	err := errDBClosed
	s.withDB(func() { err = s.ingestOne(raw) })
	if errors.Is(err, ledger.ErrDuplicate) {
		return nil
	}
	return err
}
