package executor

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Pausing a running job is how a provider is paid as the job goes: when
// the requester stops countersigning usage receipts, the runner pauses
// the run (nothing more is owed for it while it is paused) and resumes
// it when they come back, or stops it. The runner makes a Control per
// run and hands it to the executor in Job.Control; the executor binds it
// to the job once the job runs:
//
//   - process: SIGSTOP / SIGCONT to the job's process group (every
//     process it started that stayed in its group; one that left the
//     group with setsid or setpgid is not paused, as it is not killed:
//     a process is no sandbox);
//   - docker: the engine's pause / unpause (the cgroup freezer: every
//     process in the container);
//   - noop: its sleep stops counting;
//   - wasm: wazero has no way to suspend a guest from outside (it only
//     checks, at loop heads and calls, whether the module was closed), and
//     blocking host functions would leave a guest that computes without
//     calling the host running: a pause stops the run instead, which ends
//     with ReasonStoppedAtInterval, and Pause returns ErrCannotPause.
//
// Paused time is not usage: Result.Wall (and so the GPU time the runner
// meters from it) leaves the paused spans out. Nor does max_duration
// run while the job is paused (see WithActiveTimeout): the job is held
// up by its requester's silence, not by its own work, and max_duration
// bounds the work it pays for. The caller's own deadline (the lease's,
// on the wall clock) still bounds the whole run, pauses included, so
// pauses cannot push a run past its hold's expiry.

// ReasonStoppedAtInterval is the failure reason of a run that its
// executor could not pause and stopped instead (wasm).
const ReasonStoppedAtInterval = "cannot pause: stopped at interval"

// ErrCannotPause is returned by Control.Pause for a job whose executor
// cannot pause it: the job was stopped instead, and its run ends with
// ReasonStoppedAtInterval.
var ErrCannotPause = errors.New(ReasonStoppedAtInterval)

// ErrEnded is returned by Control.Pause and Resume once the job no longer
// runs.
var ErrEnded = errors.New("job no longer runs")

// StopError is the cause to cancel a run's context with to stop it for a
// reason of the caller's: the run's Result.Reason is the text.
type StopError struct{ Reason string }

func (e *StopError) Error() string { return e.Reason }

// Span is a time a job was paused, from Start to End; End is zero while
// the pause lasts.
type Span struct{ Start, End time.Time }

// pauser pauses and resumes one running job.
type pauser interface {
	pause() error
	resume() error
}

// Control pauses and resumes a job while it runs, from any goroutine, and
// records the spans it was paused. A pause asked before the job starts
// is applied as soon as it does. The zero value is not usable: see
// NewControl.
type Control struct {
	mu     sync.Mutex
	p      pauser // set while the job runs
	ended  bool
	paused bool
	spans  []Span // the last is open while paused
	budget *budget
	// started is when the executor bound the running job: its usage so
	// far (Ran) counts from here.
	started time.Time
}

// NewControl returns the Control of a job that has not started.
func NewControl() *Control { return &Control{} }

// Pause pauses the job; it reports whether it was running before (false:
// it was paused already, and nothing changed). ErrEnded once the job no
// longer runs; an error wrapping ErrCannotPause when the executor stopped
// the job instead.
func (c *Control) Pause() (changed bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.ended:
		return false, ErrEnded
	case c.paused:
		return false, nil
	}
	if c.p != nil {
		if err := c.p.pause(); err != nil {
			return false, err
		}
	}
	now := time.Now()
	c.paused = true
	c.spans = append(c.spans, Span{Start: now})
	c.budget.stop(now)
	return true, nil
}

// Resume resumes a paused job and returns the span it was paused;
// ok is false if it was not paused (nothing changed). ErrEnded once the
// job no longer runs.
func (c *Control) Resume() (span Span, ok bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.ended:
		return Span{}, false, ErrEnded
	case !c.paused:
		return Span{}, false, nil
	}
	if c.p != nil {
		if err := c.p.resume(); err != nil {
			return Span{}, false, err
		}
	}
	return c.unpausedLocked(time.Now()), true, nil
}

// unpausedLocked closes the span in progress at now and restarts the
// max_duration clock.
func (c *Control) unpausedLocked(now time.Time) Span {
	c.paused = false
	s := &c.spans[len(c.spans)-1]
	s.End = now
	c.budget.start(now)
	return *s
}

// End marks the job ended (the executors do, when it exits; the caller
// may, once Run returned): later Pause and Resume return ErrEnded. A
// pause in progress ends now and is returned (ok true).
func (c *Control) End() (span Span, ok bool) {
	if c == nil {
		return Span{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.p, c.ended = nil, true
	if c.paused {
		span, ok = c.unpausedLocked(time.Now()), true
	}
	c.budget.stop(time.Now())
	return span, ok
}

// Spans returns the spans the job was paused, in order; the last one has
// no End while the pause lasts.
func (c *Control) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Active is the time since start (up to now) that the job was not
// paused; all of it for a nil Control.
func (c *Control) Active(start time.Time) time.Duration {
	now := time.Now()
	if c == nil {
		return now.Sub(start)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var paused time.Duration
	for _, s := range c.spans {
		end := s.End
		if end.IsZero() {
			end = now
		}
		if s.Start.Before(start) {
			s.Start = start
		}
		paused += max(end.Sub(s.Start), 0)
	}
	return now.Sub(start) - paused
}

// Ran is how long the job has run so far, since its executor started it,
// less the spans it was paused: what its interim bills meter. The
// executor's own start (Result.Wall's) comes a little before, so the
// final usage is never less. ok is false before the job started.
func (c *Control) Ran() (d time.Duration, ok bool) {
	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	if started.IsZero() {
		return 0, false
	}
	return c.Active(started), true
}

// bind attaches the running job's pauser; a pause asked before is applied
// now. When that fails (wasm, which stops instead) the pause is over.
func (c *Control) bind(p pauser) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return nil
	}
	c.p = p
	if c.started.IsZero() {
		c.started = time.Now()
	}
	if !c.paused {
		return nil
	}
	err := p.pause()
	if err != nil {
		c.unpausedLocked(time.Now())
	}
	return err
}

// WithActiveTimeout returns a copy of parent that ends once the job has
// run for d outside its paused spans, counted from this call, with
// cause context.DeadlineExceeded (the run fails with ReasonTimeout).
func (c *Control) WithActiveTimeout(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	b := &budget{left: d, cancel: cancel}
	c.mu.Lock()
	c.budget = b
	if !c.paused && !c.ended {
		b.start(time.Now())
	}
	c.mu.Unlock()
	return ctx, func() {
		c.mu.Lock()
		b.stop(time.Now())
		c.mu.Unlock()
		cancel(context.Canceled)
	}
}

// budget is what is left of a job's max_duration; its clock runs only
// while the job is not paused. Its methods are called under Control.mu.
type budget struct {
	left    time.Duration
	since   time.Time // when the clock last started
	running bool
	timer   *time.Timer
	cancel  context.CancelCauseFunc
}

func (b *budget) start(now time.Time) {
	if b == nil || b.running {
		return
	}
	b.running, b.since = true, now
	b.timer = time.AfterFunc(b.left, func() { b.cancel(context.DeadlineExceeded) })
}

func (b *budget) stop(now time.Time) {
	if b == nil || !b.running {
		return
	}
	b.running = false
	if b.timer.Stop() {
		b.left -= now.Sub(b.since)
	}
}
