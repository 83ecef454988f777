package joblogs

import (
	"context"
	"errors"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol"
)

// linger is how long a follower of a finished job's log waits for the
// provider's last bytes before it stops.
const linger = 2 * time.Second

// Jobs is what reading a job's log asks of the market: the job, and its
// changes.
type Jobs interface {
	Job(ctx context.Context, id protocol.JobID) (market.Job, error)
	WatchJob(ctx context.Context, id protocol.JobID) (<-chan market.Job, error)
}

// Read sends the log of a job's current run to w; with follow, as it
// grows, until the run's log is complete or the job has ended. A short
// run's log comes in its result instead of a stream: it is sent when the
// job ends.
func (b *Book) Read(ctx context.Context, jobs Jobs, id protocol.JobID, follow bool, w func([]byte) error) error {
	j, err := jobs.Job(ctx, id)
	if err != nil {
		return err
	}
	if j.Attempt == 0 {
		return nil // never awarded: no run, no log
	}
	if len(j.Log) > 0 {
		return w(j.Log)
	}
	l, err := b.Get(id, j.Attempt)
	if err != nil {
		return err
	}
	if !follow {
		_, err := l.Follow(ctx, 0, false, w)
		return err
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if states, err := jobs.WatchJob(fctx, id); err == nil {
		go b.stopAtEnd(fctx, cancel, states)
	}
	_, err = l.Follow(fctx, 0, true, w)
	if end, jerr := jobs.Job(ctx, id); jerr == nil && len(end.Log) > 0 && end.Attempt == j.Attempt {
		// The run's log came in its result: no stream will fill or end
		// the one waited on, so it leaves the book.
		l.Finish()
		return w(end.Log)
	}
	if errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return nil
	}
	return err
}

// stopAtEnd cancels a follower once the job has ended: at once when its
// log came in the result, else linger later, for the provider's last
// bytes.
func (b *Book) stopAtEnd(ctx context.Context, cancel context.CancelFunc, states <-chan market.Job) {
	defer cancel()
	for {
		select {
		case s, ok := <-states:
			if ok {
				if s.State.Terminal() && len(s.Log) > 0 {
					return // the log came in the result
				}
				continue
			}
			// The job ended: give the provider's last bytes a moment.
			select {
			case <-clock.After(b.clock, linger):
			case <-ctx.Done():
			}
			return
		case <-ctx.Done():
			return
		}
	}
}
