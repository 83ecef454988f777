package ledgerd

import (
	"context"
	"crypto/sha256"
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

// escrowWrite is the ledger write that backs awards with holds, as
// market.PlanHold decides: the open hold that already covers it (the
// posting's, naming no provider, for a first award), or a new one (after
// a release of an old one that does not fit). done gets each award's
// hold entry, or the error that keeps it from being sent.
func (s *Service) escrowWrite(awards []market.HoldRequest, done func(holds [][]byte, errs []error)) *ledgerWrite {
	holds, errs := make([][]byte, len(awards)), make([]error, len(awards))
	at := make([]int, len(awards)) // index of each new hold in the bodies, or -1
	w := &ledgerWrite{sends: true}
	for _, a := range awards {
		w.jobs = append(w.jobs, a.Job)
	}
	w.bodies = func(*batch) []ledger.Body {
		var bodies []ledger.Body
		for i, a := range awards {
			at[i] = -1
			job := ledger.Hash(a.Job)
			open, entry, err := s.ledgerHold(job)
			var plan market.HoldPlan
			if err == nil {
				plan, err = market.PlanHold(open, a.Attempt, a.Amount)
			}
			switch {
			case err != nil:
				errs[i] = err
				continue
			case plan.Reuse:
				holds[i] = entry.Encode()
				continue
			case plan.Release:
				bodies = append(bodies, ledger.ReleaseBody{Job: job})
			}
			at[i] = len(bodies)
			bodies = append(bodies, ledger.HoldBody{Job: job, Provider: a.Provider, Amount: plan.Amount})
		}
		return bodies
	}
	w.done = func(written []*ledger.Entry, werrs []error) {
		for i, k := range at {
			switch {
			case k < 0:
			case written[k] == nil:
				errs[i] = s.describeRefusal(werrs[k])
			default:
				holds[i] = written[k].Encode()
			}
		}
		done(holds, errs)
	}
	// Failed without being written (the head stayed unconfirmed).
	w.fail = func(err error) {
		for i := range errs {
			errs[i] = err
		}
		done(holds, errs)
	}
	return w
}

// ledgerHold is what this node's ledger shows of its job: its open hold
// (with the entry that opened it), or whether it was paid.
func (s *Service) ledgerHold(job ledger.Hash) (market.LedgerHold, ledger.Entry, error) {
	e, ok, err := s.ledger.HoldEntry(s.self, job)
	if err != nil {
		return market.LedgerHold{}, e, err
	}
	if ok {
		h, _ := e.Body.(ledger.HoldBody)
		return market.LedgerHold{Open: true, Provider: h.Provider, Amount: h.Amount}, e, nil
	}
	_, paid, err := s.ledger.PaymentFor(s.self, job)
	return market.LedgerHold{Paid: paid}, e, err
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

// settleWrite is the ledger write that settles the finished ones among
// jobs, once they are persisted: a payment to the provider whose result
// was accepted, for the usage its receipt states, or a release. The hold
// stays open until then, so a crash between the two is settled on
// restart. nil if none has finished.
func (s *Service) settleWrite(jobs []*market.Job) *ledgerWrite {
	var ended []*market.Job
	for _, j := range jobs {
		if j.State.Terminal() {
			c := *j // the engine's job may change while the writer reads it
			ended = append(ended, &c)
		}
	}
	if len(ended) == 0 {
		return nil
	}
	w := &ledgerWrite{bodies: func(*batch) []ledger.Body { return s.settlements(ended) }}
	for _, j := range ended {
		w.jobs = append(w.jobs, j.ID)
	}
	return w
}

func (s *Service) settlements(jobs []*market.Job) []ledger.Body {
	var bodies []ledger.Body
	for _, j := range jobs {
		if b := s.settlement(j); b != nil {
			bodies = append(bodies, b)
		}
	}
	return bodies
}

// settlement is the entry that settles a finished job's open hold, as
// market.Settle says; nil if the job has not finished or has no open hold.
func (s *Service) settlement(j *market.Job) ledger.Body {
	if !j.State.Terminal() {
		return nil
	}
	hold, ok, err := s.ledger.HoldFor(s.self, ledger.Hash(j.ID))
	if err != nil || !ok {
		return nil
	}
	st, _ := market.Settle(j, hold.Amount)
	if !st.Pay {
		return ledger.ReleaseBody{Job: ledger.Hash(j.ID)}
	}
	return ledger.PaymentBody{Job: ledger.Hash(j.ID), To: st.To, Receipt: sha256.Sum256(j.Receipt), Amount: st.Amount}
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

// CheckHold makes sure the requester escrowed a lease's maximum cost before
// the provider runs it: the award's hold entry must be valid in this
// node's ledger (its chain is fetched from the requester if this node
// lacks earlier entries), cover the price, and back a lease that this
// provider has not taken yet: a hold backs one run, and a run whose lease
// the ledger refuses would have no record. On success the lease is
// claimed (storage.Ledger.ClaimLease) until leaseWrite has written it.
func (s *Service) CheckHold(ctx context.Context, l *market.Lease) error {
	if len(l.Hold) == 0 {
		return errors.New("award without an escrow hold")
	}
	if len(l.Chain) > 0 {
		// The award carried the entries this node lacked before the hold.
		if _, err := s.ingestFetched(l.Requester, l.Chain); err != nil {
			return fmt.Errorf("escrow hold's chain: %w", err)
		}
	}
	err := s.ingestOne(l.Hold)
	// A hold that waits for earlier entries of the requester's chain (they
	// come by gossip, maybe after the award) is fetched from the requester,
	// retrying until the lease's deadline.
	for delay := 50 * time.Millisecond; errors.Is(err, ledger.ErrGap); delay = min(2*delay, time.Second) {
		if serr := s.syncChainOnce(ctx, l.Requester); serr != nil {
			s.log.Debug("fetch requester's chain", "requester", l.Requester, "err", serr)
		}
		if err = s.ingestOne(l.Hold); !errors.Is(err, ledger.ErrGap) {
			break
		}
		if err := s.sleep(ctx, delay); err != nil {
			return fmt.Errorf("escrow hold: %w", err)
		}
	}
	if err != nil && !errors.Is(err, ledger.ErrDuplicate) {
		return fmt.Errorf("escrow hold: %w", err)
	}
	hold, ok, err := s.ledger.HoldFor(l.Requester, ledger.Hash(l.Job))
	if err != nil {
		return fmt.Errorf("escrow hold: %w", err)
	}
	open := market.LedgerHold{Open: ok, Provider: hold.Provider, Amount: hold.Amount}
	if err := market.CheckLeaseHold(open, s.self, l.Attempt, l.Price, l.Spec); err != nil {
		return err
	}
	// A requester that awards this provider the job again on a hold that
	// already backs its lease (a rogue one: an honest one writes a hold
	// for each award) gets no second run.
	if err := s.ledger.ClaimLease(s.self, l.Requester, ledger.Hash(l.Job)); err != nil {
		return fmt.Errorf("escrow hold backs no further run of the job by this provider (award %d): %w", l.Attempt, err)
	}
	return nil
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

// receiptWrite is the ledger write that records, in this provider's
// chain, the receipt it signed: the signed result's hash, the result's
// content ID and the usage. The ledger takes one receipt for each lease
// of the job in this chain: a result without a lease (the run stopped at
// the escrow check) has none, and writes nothing.
func (s *Service) receiptWrite(r *pb.Result, raw []byte) *ledgerWrite {
	body := ledger.ReceiptBody{Job: ledger.Hash(r.JobId), Receipt: sha256.Sum256(raw), Result: r.ResultId,
		Usage: ledger.Usage{WallMS: uint64(r.GetUsage().GetWallMs()), GPUMS: uint64(r.GetUsage().GetGpuMs()), ExitCode: r.ExitCode}}
	return &ledgerWrite{bodies: func(b *batch) []ledger.Body {
		leases, receipts, err := s.ledger.Leases(s.self, body.Job)
		if err != nil || leases+b.leases[body.Job] <= receipts+b.receipts[body.Job] {
			s.log.Debug("no lease left for a receipt; not recorded", "job", body.Job, "err", err)
			return nil
		}
		b.receipts[body.Job]++
		return []ledger.Body{body}
	}}
}
