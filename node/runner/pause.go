package runner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/protocol"
)

// ErrUnknownRun is returned for a job and attempt this runner has not run
// (lately: it remembers the last endedMemory runs that ended).
var ErrUnknownRun = errors.New("runner: no run of this job and attempt")

// ErrRunEnded is returned for a run that has ended, or is being stopped.
var ErrRunEnded = errors.New("runner: the job's run has ended")

// ReasonGraceExpired is the failure reason of a run that stayed paused
// past the grace period: the requester sees it in the result.
const ReasonGraceExpired = "stopped: usage receipts not countersigned within grace"

// ReasonStopped is the failure reason of a run stopped with no reason.
const ReasonStopped = "stopped by the provider"

// DefaultPauseGrace is how long a run may stay paused when the config
// does not say (Config.PauseGrace): two settlement intervals of 60 s.
const DefaultPauseGrace = 2 * time.Minute

// endedMemory is how many ended runs the runner remembers, to tell them
// (ErrRunEnded) from runs it never had (ErrUnknownRun).
const endedMemory = 1024

// PausedSpan is a span a run was paused, as Config.OnPause hears it.
type PausedSpan struct {
	Job     protocol.JobID
	Attempt uint32
	executor.Span
}

// runKey names a run: a lease's job and attempt.
type runKey struct {
	job     protocol.JobID
	attempt uint32
}

// activeRun is a run from the start of Run to its end. mu orders Pause,
// Resume, Stop and the end, and so what the observer hears of the run.
type activeRun struct {
	key  runKey
	ctl  *executor.Control
	stop context.CancelCauseFunc // stops the run (staging and executor) with a reason
	gpus int64                   // the units its time is metered in (Usage)

	mu       sync.Mutex
	ended    bool
	stopping bool
	resumed  chan struct{} // while paused: closed when the pause ends
}

// runTable is the runs in progress and the keys of those that ended lately.
type runTable struct {
	mu    sync.Mutex
	live  map[runKey]*activeRun
	ended map[runKey]struct{}
	order []runKey // ended, oldest first
}

// track registers a run of l; its context is ctx's, also ended by Stop
// (and the grace period) with the reason as cause.
func (r *Runner) track(ctx context.Context, l *market.Lease) (*activeRun, context.Context) {
	ctx, stop := context.WithCancelCause(ctx)
	a := &activeRun{key: runKey{l.Job, l.Attempt}, ctl: executor.NewControl(), stop: stop,
		gpus: int64(max(l.Spec.GetResources().GetGpus(), 1))}
	t := &r.runs
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live == nil {
		t.live, t.ended = map[runKey]*activeRun{}, map[runKey]struct{}{}
	}
	t.live[a.key] = a
	delete(t.ended, a.key)
	return a, ctx
}

// untrack ends a run: a pause still in progress ends with it (the
// observer hears of it), and later calls get ErrRunEnded.
func (r *Runner) untrack(a *activeRun) {
	a.mu.Lock()
	a.ended = true
	a.stop(nil)
	span, ok := a.ctl.End()
	if a.resumed != nil {
		if !ok { // the executor ended the pause with the job
			spans := a.ctl.Spans()
			span = spans[len(spans)-1]
		}
		r.pauseEnded(a, span)
	}
	a.mu.Unlock()

	t := &r.runs
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[a.key] == a {
		delete(t.live, a.key)
	}
	t.ended[a.key] = struct{}{}
	t.order = append(t.order, a.key)
	for len(t.order) > endedMemory {
		delete(t.ended, t.order[0])
		t.order = t.order[1:]
	}
}

// lookup finds the run of job's attempt.
func (r *Runner) lookup(job protocol.JobID, attempt uint32) (*activeRun, error) {
	t := &r.runs
	t.mu.Lock()
	defer t.mu.Unlock()
	k := runKey{job, attempt}
	if a, ok := t.live[k]; ok {
		return a, nil
	}
	if _, ok := t.ended[k]; ok {
		return nil, fmt.Errorf("%w (job %s, attempt %d)", ErrRunEnded, job, attempt)
	}
	return nil, fmt.Errorf("%w (job %s, attempt %d)", ErrUnknownRun, job, attempt)
}

// Pause pauses the run of job's attempt (see the package doc): at once if
// its job runs, else as soon as it starts. Pausing a paused run does
// nothing. A run not resumed within the grace period is stopped with
// ReasonGraceExpired. ErrUnknownRun, ErrRunEnded; an error wrapping
// executor.ErrCannotPause when the executor stopped the job instead
// (wasm): the run then ends with executor.ReasonStoppedAtInterval.
func (r *Runner) Pause(job protocol.JobID, attempt uint32) error {
	a, err := r.lookup(job, attempt)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended || a.stopping {
		return fmt.Errorf("%w (job %s, attempt %d)", ErrRunEnded, job, attempt)
	}
	changed, err := a.ctl.Pause()
	switch {
	case errors.Is(err, executor.ErrEnded):
		return fmt.Errorf("%w (job %s, attempt %d)", ErrRunEnded, job, attempt)
	case errors.Is(err, executor.ErrCannotPause):
		a.stopping = true
		return fmt.Errorf("runner: pause job %s: %w", job, err)
	case err != nil:
		return fmt.Errorf("runner: pause job %s: %w", job, err)
	case !changed:
		return nil
	}
	spans := a.ctl.Spans()
	a.resumed = make(chan struct{})
	r.observe(a, spans[len(spans)-1])
	r.watchGrace(a, a.resumed)
	return nil
}

// Resume resumes the paused run of job's attempt; resuming a run that is
// not paused does nothing. ErrUnknownRun, ErrRunEnded (also once the
// grace period has stopped it).
func (r *Runner) Resume(job protocol.JobID, attempt uint32) error {
	a, err := r.lookup(job, attempt)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended || a.stopping {
		return fmt.Errorf("%w (job %s, attempt %d)", ErrRunEnded, job, attempt)
	}
	span, ok, err := a.ctl.Resume()
	switch {
	case errors.Is(err, executor.ErrEnded):
		return fmt.Errorf("%w (job %s, attempt %d)", ErrRunEnded, job, attempt)
	case err != nil:
		return fmt.Errorf("runner: resume job %s: %w", job, err)
	case ok:
		r.pauseEnded(a, span)
	}
	return nil
}

// Stop stops the run of job's attempt, paused or not: it ends with reason
// as its failure reason (ReasonStopped when empty), which the requester
// sees; its outputs are kept as after any failure. Stopping a run being
// stopped does nothing. ErrUnknownRun, ErrRunEnded.
func (r *Runner) Stop(job protocol.JobID, attempt uint32, reason string) error {
	a, err := r.lookup(job, attempt)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended {
		return fmt.Errorf("%w (job %s, attempt %d)", ErrRunEnded, job, attempt)
	}
	a.stopLocked(reason)
	return nil
}

// stopLocked stops the run, once, with reason.
func (a *activeRun) stopLocked(reason string) {
	if a.stopping {
		return
	}
	if reason == "" {
		reason = ReasonStopped
	}
	a.stopping = true
	a.stop(&executor.StopError{Reason: reason})
}

// PausedSpans returns the spans the run of job's attempt has been paused
// so far, in order (the last has no End while the run is paused).
// ErrUnknownRun; ErrRunEnded once the run has ended (Config.OnPause has
// heard every span by then).
func (r *Runner) PausedSpans(job protocol.JobID, attempt uint32) ([]executor.Span, error) {
	a, err := r.lookup(job, attempt)
	if err != nil {
		return nil, err
	}
	return a.ctl.Spans(), nil
}

// watchGrace stops the run if the pause that resumed belongs to does not
// end within the grace period.
func (r *Runner) watchGrace(a *activeRun, resumed chan struct{}) {
	t := r.clock.NewTimer(r.grace)
	r.wg.Go(func() {
		defer t.Stop()
		select {
		case <-t.C():
		case <-resumed:
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.resumed == resumed && !a.ended {
			r.log.Info("paused run not resumed within the grace period; stopped", "job", a.key.job, "attempt", a.key.attempt, "grace", r.grace)
			a.stopLocked(ReasonGraceExpired)
		}
	})
}

// pauseEnded tells the observer that the pause in progress ended with
// span, and ends its grace watch. Under a.mu.
func (r *Runner) pauseEnded(a *activeRun, span executor.Span) {
	close(a.resumed)
	a.resumed = nil
	r.observe(a, span)
}

// observe tells Config.OnPause of span. Under a.mu, so a run's spans are
// heard in order.
func (r *Runner) observe(a *activeRun, span executor.Span) {
	if r.cfg.OnPause != nil {
		r.cfg.OnPause(PausedSpan{Job: a.key.job, Attempt: a.key.attempt, Span: span})
	}
}

// pauseDefaults fills in the grace period and the clock.
func (r *Runner) pauseDefaults() {
	r.grace = r.cfg.PauseGrace
	if r.grace <= 0 {
		r.grace = DefaultPauseGrace
	}
	r.clock = r.cfg.Clock
	if r.clock == nil {
		r.clock = clock.System
	}
}

// stopReason is the reason a run's context was stopped with (Stop, the
// grace period), or "".
func stopReason(ctx context.Context) string {
	var s *executor.StopError
	if errors.As(context.Cause(ctx), &s) {
		return s.Reason
	}
	return ""
}
