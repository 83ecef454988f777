//go:build !ledgerv3

package ledgerd

// A BRIDGE, to be deleted when branch "ledger" (entry version 3: named
// holds with expiry, claims, waives, acceptances) is merged; trust.go
// (build tag ledgerv3) is the real settlement. Until then the market's new
// flow (bills, acceptances capped by the requester's observation, results
// delivered after the claim until acknowledged) runs on entries of
// version 2: the requester's acceptance is carried out as its payment,
// the provider's claim writes nothing, and a declined award is not waived.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
)

// errNeedsV3 is what the bridge answers where version 3 is needed.
var errNeedsV3 = errors.New("needs ledger entries of version 3")

// escrowWrite is the ledger write that backs awards with holds: the
// posting's hold for a first award that it covers, else a release of the
// open hold and a new one naming the provider. done gets each award's hold
// entry, or the error that keeps it from being sent.
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
			e, open, err := s.ledger.HoldEntry(s.self, job)
			if err != nil {
				errs[i] = err
				continue
			}
			if !open {
				if _, paid, err := s.ledger.PaymentFor(s.self, job); err != nil || paid {
					errs[i] = cmpErr(err, market.ErrJobPaid)
					continue
				}
			} else {
				h, _ := e.Body.(ledger.HoldBody)
				if h.Provider == "" && a.Attempt == 1 && h.Amount >= a.Amount {
					holds[i] = e.Encode()
					continue
				}
				bodies = append(bodies, ledger.ReleaseBody{Job: job})
			}
			at[i] = len(bodies)
			bodies = append(bodies, ledger.HoldBody{Job: job, Provider: a.Provider, Amount: a.Amount})
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

func cmpErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

// ReleaseUnawarded queues the release of the open holds of the ended ones
// among jobs whose bills were not accepted (an accepted bill paid it).
func (s *Service) ReleaseUnawarded(jobs []*market.Job) {
	var ended []ledger.Hash
	for _, j := range jobs {
		if j.State.Terminal() && !anyAccepted(j) {
			ended = append(ended, ledger.Hash(j.ID))
		}
	}
	if len(ended) > 0 {
		s.enqueue(s.releaseWrite(ended))
	}
}

func anyAccepted(j *market.Job) bool {
	for _, a := range j.Awards {
		if a.Acceptance != nil {
			return true
		}
	}
	return false
}

// SignAcceptance carries the acceptance out as the requester's payment of
// its amount to the provider (version 2 has no claims).
func (s *Service) SignAcceptance(r market.AcceptanceRequest) ([]byte, error) {
	job := ledger.Hash(r.Job)
	s.enqueue(&ledgerWrite{jobs: []protocol.JobID{r.Job}, bodies: func(*batch) []ledger.Body {
		if _, ok, err := s.ledger.HoldFor(s.self, job); err != nil || !ok {
			return nil
		}
		return []ledger.Body{ledger.PaymentBody{Job: job, To: r.Provider, Receipt: r.Receipt, Amount: r.Amount}}
	}})
	sum := sha256.Sum256(append(r.Receipt[:], r.Job[:]...))
	return s.key.Sign(sum[:])
}

// CheckHold checks the award's hold as version 2 does: the posting's hold
// for a first award, or one naming this provider; it covers the job.
func (s *Service) CheckHold(ctx context.Context, l *market.Lease) (uint64, time.Time, error) {
	if err := s.ingestHold(ctx, l.Requester, l.Hold, l.Chain); err != nil {
		return 0, time.Time{}, err
	}
	e, ok, err := s.ledger.HoldEntry(l.Requester, ledger.Hash(l.Job))
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("escrow hold: %w", err)
	}
	h, _ := e.Body.(ledger.HoldBody)
	switch {
	case !ok:
		return 0, time.Time{}, errors.New("escrow hold: none open for the job")
	case h.Provider == "" && l.Attempt != 1:
		return 0, time.Time{}, fmt.Errorf("escrow hold names no provider, and this is award %d of the job", l.Attempt)
	case h.Provider != "" && h.Provider != s.self:
		return 0, time.Time{}, fmt.Errorf("escrow hold names provider %s, not this one", h.Provider)
	}
	if want, err := market.MaxCost(l.Price, l.Spec); err != nil || h.Amount < want {
		return 0, time.Time{}, fmt.Errorf("escrow hold of %d does not cover the job's %d (%v)", h.Amount, want, err)
	}
	if err := s.ledger.ClaimLease(s.self, l.Requester, ledger.Hash(l.Job)); err != nil {
		return 0, time.Time{}, fmt.Errorf("escrow hold backs no further run of the job by this provider (award %d): %w", l.Attempt, err)
	}
	return e.Seq, time.Time{}, nil
}

// WriteClaim writes nothing: the requester paid when it accepted.
func (s *Service) WriteClaim(_ market.ClaimRequest, done func(error)) { done(nil) }

// WriteWaive writes nothing: version 2 has no waives.
func (s *Service) WriteWaive(context.Context, market.WaiveRequest) ([]byte, error) {
	return nil, errNeedsV3
}

// releaseEnded is the sweep's release of ended jobs' holds.
func (s *Service) releaseEnded(ended []*market.Job) *ledgerWrite {
	var jobs []ledger.Hash
	for _, j := range ended {
		if !anyAccepted(j) {
			jobs = append(jobs, ledger.Hash(j.ID))
		}
	}
	if len(jobs) == 0 {
		return nil
	}
	return s.releaseWrite(jobs)
}

// receiptBody is a bill's receipt entry.
func receiptBody(b *pb.Bill) ledger.ReceiptBody {
	return ledger.ReceiptBody{Job: ledger.Hash(b.JobId), Receipt: ledger.Hash(b.Receipt), Result: b.ResultId,
		Usage: ledger.Usage{WallMS: uint64(b.GetUsage().GetWallMs()), GPUMS: uint64(b.GetUsage().GetGpuMs()), ExitCode: b.ExitCode}}
}

// releaseWrite is the ledger write that releases the holds of jobs, those
// still open when it is written.
func (s *Service) releaseWrite(jobs []ledger.Hash) *ledgerWrite {
	w := &ledgerWrite{bodies: func(*batch) []ledger.Body {
		var bodies []ledger.Body
		for _, job := range jobs {
			if _, ok, err := s.ledger.HoldFor(s.self, job); err == nil && ok {
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

// releaseExpired does nothing: holds of version 2 do not expire.
func (s *Service) releaseExpired(time.Time, []storage.OpenHold) {}
