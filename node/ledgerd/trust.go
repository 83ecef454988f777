package ledgerd

// The settlement on ledger entries of version 3 (docs/TRUST.md): awards
// hold credits in holds naming their providers, with an expiry; the
// requester signs acceptances of bills, the provider claims them (and
// waives awards it gives back); the requester releases a named hold only
// after its expiry, when the ledger lets it.

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

// escrowWrite backs awards with holds naming their providers, as
// market.PlanHold decides; a new named hold replaces the job's posting
// hold in the same entry. done gets each award's hold entry, or the error
// that keeps it from being sent.
func (s *Service) escrowWrite(awards []market.HoldRequest, done func(holds [][]byte, errs []error)) *ledgerWrite {
	holds, errs := make([][]byte, len(awards)), make([]error, len(awards))
	at := make([]int, len(awards))
	w := &ledgerWrite{sends: true}
	for _, a := range awards {
		w.jobs = append(w.jobs, a.Job)
	}
	w.bodies = func(*batch) []ledger.Body {
		var bodies []ledger.Body
		for i, a := range awards {
			at[i] = -1
			job := ledger.Hash(a.Job)
			h, err := s.namedHold(s.self, job, a.Provider)
			var plan market.HoldPlan
			if err == nil {
				plan, err = market.PlanHold(h, a)
			}
			switch {
			case err != nil:
				errs[i] = err
			case plan.Reuse:
				holds[i], errs[i] = s.entryAt(s.self, h.Seq)
			default:
				at[i] = len(bodies)
				bodies = append(bodies, ledger.HoldBody{Job: job, Provider: a.Provider, Amount: plan.Amount,
					Expiry: plan.Expiry.UnixNano(), Replicas: uint8(max(1, a.Replicas))})
			}
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
	w.fail = func(err error) {
		for i := range errs {
			errs[i] = err
		}
		done(holds, errs)
	}
	return w
}

// namedHold is what this node's ledger shows of requester's hold of job
// naming provider.
func (s *Service) namedHold(requester peer.ID, job ledger.Hash, provider peer.ID) (market.LedgerHold, error) {
	h, ok, err := s.ledger.HoldOf(requester, job, provider)
	if err != nil || ok {
		return market.LedgerHold{Open: ok, Seq: h.Seq, Amount: h.Amount - h.Claimed, Expiry: h.Expiry}, err
	}
	paid, err := s.ledger.Claimed(requester, job, provider)
	return market.LedgerHold{Paid: paid}, err
}

// entryAt is the encoded entry seq of account's chain.
func (s *Service) entryAt(account peer.ID, seq uint64) ([]byte, error) {
	es, err := s.ledger.Entries(account, seq-1, 1)
	if err != nil || len(es) != 1 || es[0].Seq != seq {
		return nil, fmt.Errorf("entry %d of %s: not found (%v)", seq, account, err)
	}
	return es[0].Encode(), nil
}

// ReleaseUnawarded queues the release of the posting holds (naming no
// provider) of the ended ones among jobs.
func (s *Service) ReleaseUnawarded(jobs []*market.Job) {
	var ended []ledger.Hash
	for _, j := range jobs {
		if j.State.Terminal() {
			ended = append(ended, ledger.Hash(j.ID))
		}
	}
	if len(ended) > 0 {
		s.enqueue(s.releaseWrite(ended))
	}
}

// releaseEnded is the sweep's release of ended jobs' posting holds.
func (s *Service) releaseEnded(ended []*market.Job) *ledgerWrite {
	var jobs []ledger.Hash
	for _, j := range ended {
		jobs = append(jobs, ledger.Hash(j.ID))
	}
	if len(jobs) == 0 {
		return nil
	}
	return s.releaseWrite(jobs)
}

// releaseWrite releases the posting holds of jobs still open when written.
func (s *Service) releaseWrite(jobs []ledger.Hash) *ledgerWrite {
	w := &ledgerWrite{bodies: func(*batch) []ledger.Body {
		var bodies []ledger.Body
		for _, job := range jobs {
			if h, ok, err := s.ledger.HoldOf(s.self, job, ""); err == nil && ok && h.Provider == "" {
				bodies = append(bodies, ledger.ReleaseBody{Job: job})
			}
		}
		return bodies
	}}
	for _, job := range jobs {
		w.jobs = append(w.jobs, protocol.JobID(job))
	}
	return w
}

// releaseExpired queues the release of this node's named holds whose
// expiry has passed (the sweep calls it). The ledger refuses one while the
// named provider's chain, as this node has it, shows nothing after the
// expiry (ErrClaimWindowOpen, a wait): that release is left for the next
// sweep, so every claim dated before the expiry is applied first.
func (s *Service) releaseExpired(now time.Time, holds []storage.OpenHold) {
	type key struct {
		job      ledger.Hash
		provider peer.ID
	}
	var due []key
	for _, h := range holds {
		if h.Provider == "" {
			continue
		}
		if h.Named && !h.Expiry.IsZero() && now.After(h.Expiry) {
			due = append(due, key{h.Job, h.Provider})
		}
	}
	if len(due) == 0 {
		return
	}
	w := &ledgerWrite{bodies: func(*batch) []ledger.Body {
		var bodies []ledger.Body
		for _, k := range due {
			bodies = append(bodies, ledger.ReleaseBody{Job: k.job, Provider: k.provider})
		}
		return bodies
	}, done: func(_ []*ledger.Entry, errs []error) {
		for _, err := range errs {
			if err != nil && !errors.Is(err, ledger.ErrClaimWindowOpen) {
				s.log.Warn("release of an expired hold refused", "err", err)
			}
		}
	}}
	for _, k := range due {
		w.jobs = append(w.jobs, protocol.JobID(k.job))
	}
	s.enqueue(w)
}

// SignAcceptance signs this requester's acceptance of a bill.
func (s *Service) SignAcceptance(r market.AcceptanceRequest) ([]byte, error) {
	a := ledger.Acceptance{Job: ledger.Hash(r.Job), Requester: s.self, Provider: r.Provider, HoldSeq: r.HoldSeq,
		Amount: r.Amount, Final: r.Final, Receipt: r.Receipt}
	return a.Sign(s.cfg.Network, s.key)
}

// CheckHold makes sure the requester escrowed the lease in a hold naming
// this provider, covering the job and lasting long enough for the run and
// a claim (market.CheckLeaseHold), and claims the lease until it is
// written. It returns the hold's seq and expiry for the bill.
func (s *Service) CheckHold(ctx context.Context, l *market.Lease) (uint64, time.Time, error) {
	if err := s.ingestHold(ctx, l.Requester, l.Hold, l.Chain); err != nil {
		return 0, time.Time{}, err
	}
	h, err := s.namedHold(l.Requester, ledger.Hash(l.Job), s.self)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("escrow hold: %w", err)
	}
	if err := market.CheckLeaseHold(h, l.Price, l.Spec, l.MinHoldExpiry); err != nil {
		return 0, time.Time{}, err
	}
	if err := s.ledger.ClaimLease(s.self, l.Requester, ledger.Hash(l.Job)); err != nil {
		return 0, time.Time{}, fmt.Errorf("escrow hold backs no further run of the job by this provider (award %d): %w", l.Attempt, err)
	}
	return h.Seq, h.Expiry, nil
}

// WriteClaim queues this provider's claim of an accepted bill; it goes at
// once (the result waits for it). A final claim of the same bill already
// in the ledger (written before a restart that lost the bill's later
// state) counts as written: the hold it closed takes no second one.
func (s *Service) WriteClaim(c market.ClaimRequest, done func(error)) {
	body := ledger.ClaimBody{Job: ledger.Hash(c.Job), Requester: c.Requester, HoldSeq: c.HoldSeq, Amount: c.Amount,
		Final: c.Final, Receipt: c.Receipt, Acceptance: c.Acceptance}
	already := false
	s.enqueue(&ledgerWrite{jobs: []protocol.JobID{c.Job}, sends: true,
		bodies: func(*batch) []ledger.Body {
			if e, ok, err := s.ledger.FinalClaim(c.Requester, body.Job, s.self); err == nil && ok {
				if w, _ := e.Body.(ledger.ClaimBody); w.HoldSeq == c.HoldSeq && w.Receipt == c.Receipt {
					already = true
					return nil
				}
			}
			return []ledger.Body{body}
		},
		done: func(written []*ledger.Entry, errs []error) {
			if already || len(written) == 1 && written[0] != nil {
				done(nil)
				return
			}
			done(cmpErr(errs, errors.New("claim not written")))
		},
		fail: done})
}

func cmpErr(errs []error, otherwise error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return otherwise
}

// WriteWaive gives an award's hold back: the hold (and its chain) is
// ingested, and a waive of it written if it names this provider; it
// returns the waive entry once written.
func (s *Service) WriteWaive(ctx context.Context, w market.WaiveRequest) ([]byte, error) {
	if err := s.ingestHold(ctx, w.Requester, w.Hold, w.Chain); err != nil {
		return nil, err
	}
	h, err := s.namedHold(w.Requester, ledger.Hash(w.Job), s.self)
	if err != nil || !h.Open {
		return nil, cmpErr([]error{err}, errors.New("no hold naming this provider to waive"))
	}
	type result struct {
		raw []byte
		err error
	}
	ch := make(chan result, 1)
	body := ledger.WaiveBody{Job: ledger.Hash(w.Job), Requester: w.Requester, HoldSeq: h.Seq}
	s.enqueue(&ledgerWrite{jobs: []protocol.JobID{w.Job}, sends: true,
		bodies: func(*batch) []ledger.Body { return []ledger.Body{body} },
		done: func(written []*ledger.Entry, errs []error) {
			if len(written) == 1 && written[0] != nil {
				ch <- result{raw: written[0].Encode()}
				return
			}
			ch <- result{err: cmpErr(errs, errors.New("waive not written"))}
		},
		fail: func(err error) { ch <- result{err: err} }})
	select {
	case r := <-ch:
		return r.raw, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// receiptBody is a bill's receipt entry.
func receiptBody(b *pb.Bill) ledger.ReceiptBody {
	return ledger.ReceiptBody{Job: ledger.Hash(b.JobId), Receipt: ledger.Hash(b.Receipt), Result: b.ResultId,
		Usage:   ledger.Usage{WallMS: uint64(b.GetUsage().GetWallMs()), GPUMS: uint64(b.GetUsage().GetGpuMs()), ExitCode: b.ExitCode},
		Outputs: b.OutputsId}
}
