package ledgerd

import (
	"context"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
)

// OrphanHoldAge is how long a hold of a job this node has no record of
// (an orphan: the job's record was lost with a data dir restored from an
// older copy) stays open after the node first sees it so. The node that
// wrote the hold was an earlier run of this node, stopped before this run
// began; it signed the job's offers, every round of them expiring at the
// job's deadline, and no node opens an offer that expires more than
// protocol.MaxMessageTTL after it opens it. So no provider holds a lease
// of the job once MaxMessageTTL (and the clock skew a ledger allows) has
// passed since this run first saw the orphan, and no one can be paid from
// the hold: only this node signs its payments, and it has forgotten the
// job. The time first seen is stored, so that restarts do not postpone it.
const OrphanHoldAge = protocol.MaxMessageTTL + storage.DefaultMaxClockSkew

// sweepLoop looks for leftover holds once the head is confirmed, and then
// every hold_sweep_interval.
func (s *Service) sweepLoop(ctx context.Context) {
	t := s.clock.NewTicker(s.cfg.HoldSweepInterval)
	defer t.Stop()
	for {
		if _, err := s.SweepHolds(ctx, s.clock.Now()); err != nil && ctx.Err() == nil {
			s.log.Warn("sweep leftover holds", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// SweepHolds settles this node's open holds that nothing else will: a hold
// of a job that has ended is settled now (paid if its result was
// accepted, else released), and a hold of a job the node has no record of
// is released once OrphanHoldAge has passed since the node first saw it.
// The writes go through the ledger writer; what it found is in the report.
func (s *Service) SweepHolds(ctx context.Context, now time.Time) (SweepReport, error) {
	var r SweepReport
	holds, err := s.ledger.OpenHolds(s.self)
	if err != nil {
		return r, err
	}
	seenAt, err := s.db.OrphanHolds()
	if err != nil {
		return r, err
	}
	ids := make([]protocol.JobID, len(holds))
	for i, h := range holds {
		ids[i] = protocol.JobID(h.Job)
	}
	known, err := s.market.Lookup(ctx, ids)
	if err != nil {
		return r, err
	}
	var ended []*market.Job
	var release []ledger.Hash
	fresh := map[ledger.Hash]time.Time{}
	open := map[ledger.Hash]bool{}
	for _, h := range holds {
		open[h.Job] = true
		j, ok := known[protocol.JobID(h.Job)]
		switch {
		case ok && j.State.Terminal():
			ended = append(ended, j)
		case ok: // the market settles it when the job ends
		default:
			r.Orphans++
			since, seen := seenAt[h.Job]
			if !seen {
				since, fresh[h.Job] = now, now
			}
			if !now.Before(since.Add(OrphanHoldAge)) {
				release = append(release, h.Job)
			}
		}
	}
	var gone []ledger.Hash
	for job := range seenAt {
		if !open[job] || known[protocol.JobID(job)] != nil {
			gone = append(gone, job)
		}
	}
	if err := s.db.SetOrphanHolds(fresh, gone); err != nil {
		return r, err
	}
	r.Ended, r.Released = len(ended), len(release)
	s.releaseExpired(now, holds)
	if w := s.releaseEnded(ended); w != nil {
		s.log.Info("releasing holds of ended jobs", "jobs", len(ended))
		s.enqueue(w)
	}
	if len(release) > 0 {
		s.log.Info("releasing holds of jobs this node has no record of, past their deadline (data dir restored from an older copy?)",
			"holds", len(release))
		s.enqueue(s.releaseWrite(release))
	}
	return r, nil
}

// SweepReport is what a sweep found: holds of ended jobs (settled now),
// holds of jobs the node has no record of, and how many of those it
// released.
type SweepReport struct {
	Ended, Orphans, Released int
}
