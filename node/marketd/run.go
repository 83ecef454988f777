package marketd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
)

// run starts a lease's job on its executor; the outcome goes back into the
// engine, which sends it to the requester as the signed result.
func (m *Driver) run(l *market.Lease) {
	// The job's deadline bounds staging and the run; max_duration bounds
	// the run alone (see runner.Run).
	rctx, cancel := context.WithDeadline(m.ctx, l.Deadline)
	m.running[l.Job] = runningLease{attempt: l.Attempt, cancel: cancel}
	runner := m.runner // read on the loop (a test may wrap it)
	m.wg.Go(func() {
		defer cancel()
		// A new goroutine runs before the ones already woken: let the
		// outbox send the acceptance before the run takes the CPU.
		runtime.Gosched()
		var out market.Outcome
		if seq, expiry, err := m.ledger.CheckHold(rctx, l); err != nil {
			// Not run: the award is given back, its hold waived if this
			// provider can (a hold naming it that expires too soon).
			out = market.Outcome{Declined: "escrow: " + err.Error()}
			out.Waive, _ = m.ledger.WriteWaive(m.ctx, market.WaiveRequest{Job: l.Job, Requester: l.Requester,
				Attempt: l.Attempt, Hold: l.Hold, Chain: l.Chain})
		} else {
			m.ledger.RecordLease(l)
			m.runStarted(l, seq, expiry)
			out = runner.Run(rctx, l)
			if rewrite := m.usageHook.Load(); rewrite != nil {
				out.Usage = (*rewrite)(out.Usage)
			}
			out.HoldSeq, out.HoldExpiry = seq, expiry
		}
		out.Attempt = l.Attempt
		// Blocks (see the package doc on queues).
		select {
		case m.in <- func() {
			// A newer lease of the same job (re-awarded after a cancel)
			// is not this run's to end.
			if r, ok := m.running[l.Job]; ok && r.attempt == l.Attempt {
				delete(m.running, l.Job)
			}
			m.eng.Finished(m.clock.Now(), l.Job, out)
		}:
		case <-m.ctx.Done():
		}
	})
}

// runStarted tells the engine that l's run starts on the hold at seq
// (expiring at expiry): a
// long lease is billed as it goes from now. Blocks (see the package doc
// on queues).
func (m *Driver) runStarted(l *market.Lease, seq uint64, expiry time.Time) {
	select {
	case m.in <- func() { m.eng.RunStarted(m.clock.Now(), l.Job, l.Attempt, seq, expiry) }:
	case <-m.ctx.Done():
	}
}

// pauseRuns pauses and resumes runs as the engine asks, in order. On the
// loop: a process's signal is immediate, a container's pause a call to
// the engine, and pauses come only of a requester's silence.
func (m *Driver) pauseRuns(reqs []market.PauseRequest) {
	for _, p := range reqs {
		var err error
		if p.Resume {
			err = m.runner.Resume(p.Job, p.Attempt)
		} else {
			err = m.runner.Pause(p.Job, p.Attempt)
		}
		if err != nil {
			// A run that ended meanwhile; or a wasm run, which cannot
			// pause: it was stopped instead, and ends (billed) like any.
			m.log.Info("run not paused or resumed", "job", p.Job, "attempt", p.Attempt, "resume", p.Resume, "err", err)
			continue
		}
		m.log.Info("run paused or resumed for an interim bill", "job", p.Job, "attempt", p.Attempt, "resumed", p.Resume)
	}
}

// runningLease is a run in progress: which attempt, and how to stop it.
type runningLease struct {
	attempt uint32
	cancel  context.CancelFunc
}

// restore loads persisted jobs into the engine after a restart. A crash
// between persisting a job's end and releasing its posting hold left that
// hold open: it is released once the node has confirmed its head with its
// peers (an earlier run may have released it, in entries this data dir
// lacks), by the ledger writer, which writes nothing before then. A job whose offer
// today's checks refuse (stored before a rule tightened, or signed by a
// clock since set back) is ended with the reason, not offered again:
// every peer would refuse it. The loop writes and settles it first thing.
func (m *Driver) restore() error {
	if err := m.restoreBills(); err != nil {
		return err
	}
	var ended []*market.Job
	invalid := map[protocol.JobID]error{}
	defer func() {
		now := m.clock.Now()
		for id, err := range invalid {
			m.log.Warn("stored job's offer is no longer valid; job ended", "job", id, "err", err)
			m.eng.Fail(now, id, "offer no longer valid: "+err.Error())
		}
		m.ledger.ReleaseUnawarded(ended)
	}()
	return m.jobs.Jobs(func(id string, rec []byte) error {
		var j market.Job
		if err := json.Unmarshal(rec, &j); err != nil {
			return fmt.Errorf("job %s: %w", id, err)
		}
		offer, err := protocol.OpenStoredOffer(j.Offer)
		if err == nil && offer.Signer != m.self {
			err = fmt.Errorf("%w: signed by %s", protocol.ErrSigner, offer.Signer)
		}
		if err != nil {
			m.log.Warn("stored job has an invalid offer; skipped", "job", id, "err", err)
			return nil
		}
		m.eng.Restore(m.clock.Now(), &j, offer)
		if j.State.Terminal() {
			ended = append(ended, &j)
		} else if err := offer.Recheck(m.network, m.clock.Now()); err != nil && !errors.Is(err, protocol.ErrExpired) {
			// An expired job expires on the engine's first tick.
			invalid[offer.Job] = err
		}
		return nil
	})
}

// restoreBills loads a provider's open bills after a restart: the runs
// that ended before it are billed, claimed and delivered as if it had not
// happened. A record that does not decode is dropped with a warning: its
// run goes unpaid, the rest are not held up by it.
func (m *Driver) restoreBills() error {
	var bad []string
	err := m.jobs.Bills(func(key string, rec []byte) error {
		var b market.BillRecord
		err := json.Unmarshal(rec, &b)
		if err == nil {
			b.Job, b.Attempt, err = billKeyJob(key)
		}
		if err == nil {
			err = m.eng.RestoreBill(m.clock.Now(), b)
		}
		if err != nil {
			m.log.Warn("stored bill unreadable; dropped", "bill", key, "err", err)
			bad = append(bad, key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.jobs.PutBills(nil, bad)
}

// billKeyJob reads the job and attempt out of a bill record's key
// (market.BillRecord.Key).
func billKeyJob(key string) (protocol.JobID, uint32, error) {
	parts := strings.Split(key, "/")
	if len(parts) != 3 {
		return protocol.JobID{}, 0, fmt.Errorf("bill key %q", key)
	}
	id, err := protocol.ParseJobID(parts[0])
	if err != nil {
		return id, 0, err
	}
	attempt, err := strconv.ParseUint(parts[1], 10, 32)
	return id, uint32(attempt), err
}
