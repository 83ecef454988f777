// Package executor runs the jobs a provider wins. One Executor interface
// has an implementation per kind of job: wasm (WASI modules under wazero,
// the sandboxed default), docker (containers through the Docker Engine
// API), process (host commands, for operators of a trusted private network)
// and noop (sleeps; for tests and benchmarks of the market).
//
// An executor knows nothing of the market or the network: it is given a
// job's spec, a scratch directory and writers for its output, and reports
// how the run ended and what it used.
package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mira-market/mira/protocol/pb"
)

// Job is one run of a leased job.
type Job struct {
	// ID names the job (hex of its job ID); executors use it to name
	// containers and for logs.
	ID string
	// Spec is the job as its requester posted it.
	Spec *pb.JobSpec
	// Module is the WASI module's bytes for the wasm executor, already
	// fetched and checked against its content ID by the caller.
	Module []byte
	// GPUs lists the device indices ("0", "1", ...) of the GPUs leased to
	// the job; empty for a CPU job.
	GPUs []string
	// Dir is a per-job scratch directory: the job's working directory and
	// the only host path it may see. It holds an empty out/, whose files
	// come back to the requester as the job's outputs, and inputs/ for a
	// job with inputs. Empty for a Scratchless executor's job.
	Dir string
	// DiskQuota is how many bytes the job may add to Dir beyond what it
	// holds when the run starts (its inputs): a run that writes more is
	// stopped, or its writes refused, and it fails with ReasonDiskQuota.
	// Zero or less: no quota.
	DiskQuota int64
	// Stdout and Stderr receive the job's output as it runs. They must be
	// safe to call from another goroutine than the one calling Run.
	Stdout, Stderr io.Writer
	// Control, when set, lets the caller pause and resume the job while
	// it runs (see Control): the executor binds it once the job runs, and
	// ends it when the job exits. Nil: the job cannot be paused.
	Control *Control
}

// Result is how a run ended and what it used.
type Result struct {
	// ExitCode is the job's exit status; -1 when it was killed.
	ExitCode int32
	// Reason says why a run failed ("out of memory", "max_duration
	// exceeded", "cancelled", ...); empty when it exited by itself.
	Reason string
	// Wall is the time from start to exit less the spans the job was
	// paused (Job.Control): the time it ran.
	Wall time.Duration
	// FirstOutput is the time from start to the first byte of output
	// (pauses included, at most Wall); zero when there was none.
	FirstOutput time.Duration
	// PeakMemory is the job's peak memory in bytes, where the executor can
	// tell; zero otherwise.
	PeakMemory uint64
}

// Failed reports whether the run did not end with exit status 0.
func (r Result) Failed() bool { return r.ExitCode != 0 || r.Reason != "" }

// Executor runs jobs of one kind.
type Executor interface {
	// Name is the executor's name as job specs give it.
	Name() string
	// Run runs the job until it exits, ctx is done (cancel or
	// max_duration) or a limit kills it, and cleans up after it. A job that
	// ran and failed is a Result with a Reason, not an error; an error
	// means the job could not be run at all (bad spec, missing image).
	Run(ctx context.Context, job *Job) (Result, error)
}

// Scratchless is implemented by an executor that never uses a job's Dir:
// the provider creates no scratch directory for its jobs (unless they have
// inputs), and leaves Dir empty.
type Scratchless interface {
	Executor
	Scratchless()
}

// Common reasons for a failed run.
const (
	ReasonTimeout   = "max_duration exceeded"
	ReasonCancelled = "cancelled"
	ReasonOOM       = "out of memory"
	ReasonDiskQuota = "disk quota exceeded"
)

// ErrNotAllowed is returned for an executor a provider does not allow or
// does not have.
var ErrNotAllowed = errors.New("executor not available on this node")

// ErrOverLimit is returned for a job that asks more memory or CPU than the
// provider allows a job.
var ErrOverLimit = errors.New("over this provider's limit")

// ErrImageNotAllowed is returned for a docker job whose image is not on
// the provider's allowlist.
var ErrImageNotAllowed = errors.New("image not allowed on this provider")

// ErrImageVolumes is returned for a docker job whose image declares
// volumes: the engine would give each a writable anonymous volume on the
// host, past the read-only root and the disk quota.
var ErrImageVolumes = errors.New("image declares volumes, which this provider does not run (they would escape the read-only root and the disk quota)")

// ErrNoMemory is returned for a job whose memory does not fit in what the
// host has free now.
var ErrNoMemory = errors.New("not enough free memory on this provider")

// Set is the executors a provider allows, by name.
type Set map[string]Executor

// Run runs job on the executor its spec names.
func (s Set) Run(ctx context.Context, job *Job) (Result, error) {
	e, ok := s[job.Spec.GetExecutor()]
	if !ok {
		return Result{ExitCode: -1}, fmt.Errorf("%w: %q", ErrNotAllowed, job.Spec.GetExecutor())
	}
	return e.Run(ctx, job)
}

// ctxReason maps a done context to a failure reason: a disk watcher's
// cause is its own, a StopError's its text, a deadline (or a cause of
// context.DeadlineExceeded: WithActiveTimeout's) is the job's
// max_duration, anything else a cancel.
func ctxReason(ctx context.Context) string {
	var stop *StopError
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errDiskQuota):
		return ReasonDiskQuota
	case errors.Is(cause, errScratchUnreadable), errors.Is(cause, errScratchUnmeasurable):
		return cause.Error()
	case errors.As(cause, &stop):
		return stop.Reason
	case errors.Is(cause, context.DeadlineExceeded), errors.Is(ctx.Err(), context.DeadlineExceeded):
		return ReasonTimeout
	}
	return ReasonCancelled
}

// diskReason is the reason of a run whose disk watch ended with reason
// (see diskWatch.done): it replaces any but a cancel's, since a job that
// broke its quota is stopped for it even if it was also near its end.
func diskReason(res Result, reason string) Result {
	if reason != "" && res.Reason != ReasonCancelled {
		res.Reason = reason
	}
	return res
}

// Noop sleeps for args[0] (a Go duration, default 0) and writes a fixed
// line: enough to run leases and benchmark the market without real work.
// A pause stops its sleep, a resume goes on with what is left.
type Noop struct{}

// Name implements Executor.
func (Noop) Name() string { return "noop" }

// Scratchless implements Scratchless: a noop run touches no files.
func (Noop) Scratchless() {}

// Run implements Executor.
func (Noop) Run(ctx context.Context, job *Job) (Result, error) {
	var d time.Duration
	if args := job.Spec.GetArgs(); len(args) > 0 {
		var err error
		if d, err = time.ParseDuration(args[0]); err != nil {
			return Result{ExitCode: -1}, fmt.Errorf("noop: args[0]: %w", err)
		}
	}
	start := time.Now()
	s := &noopSleep{t: time.NewTimer(d), left: d, since: start}
	defer s.t.Stop()
	if err := job.Control.bind(s); err != nil {
		return Result{ExitCode: -1}, err
	}
	select {
	case <-s.t.C:
		job.Control.End()
		_, err := io.WriteString(job.Stdout, "noop: done after "+d.String()+"\n")
		wall := job.Control.Active(start)
		return Result{Wall: wall, FirstOutput: wall}, err
	case <-ctx.Done():
		job.Control.End()
		return Result{ExitCode: -1, Reason: ctxReason(ctx), Wall: job.Control.Active(start)}, nil
	}
}

// noopSleep is a noop run's sleep, which a pause stops and a resume goes
// on with.
type noopSleep struct {
	t     *time.Timer
	left  time.Duration
	since time.Time
}

func (s *noopSleep) pause() error {
	if s.t.Stop() {
		s.left -= time.Since(s.since)
	}
	return nil
}

func (s *noopSleep) resume() error {
	s.since = time.Now()
	s.t.Reset(s.left)
	return nil
}
