// Package runner is a provider's job runtime: it runs leases on the
// executors the provider's config allows, stages their module and inputs
// from the requester into a scratch dir, spools stdout, delivers the log,
// and keeps the result and outputs in the blob store for the requester.
//
// # Pausing runs (pay as you go)
//
// A long job is paid as it goes: when its requester stops countersigning
// usage receipts, the provider pauses the run, resumes it when they come
// back, and stops it after a grace period. The market drives this through
// four calls, each safe from any goroutine, on a run named by its lease's
// job and attempt (from Run's start to its return):
//
//   - Pause(job, attempt): the job stops where it is (a process group's
//     SIGSTOP, a container's pause; a run still staging starts paused).
//     Idempotent. A wasm job cannot be paused (wazero cannot suspend a
//     guest): it is stopped instead, Pause returns an error wrapping
//     executor.ErrCannotPause, and the run ends with
//     executor.ReasonStoppedAtInterval ("cannot pause: stopped at
//     interval"). A run not resumed within Config.PauseGrace is stopped
//     with ReasonGraceExpired ("stopped: usage receipts not countersigned
//     within grace"), which the requester sees as the run's error.
//   - Resume(job, attempt): the job goes on. Idempotent.
//   - Stop(job, attempt, reason): the run ends now, paused or not, with
//     reason as its error; its outputs are kept as after any failure.
//     Idempotent.
//   - Config.OnPause hears of each paused span, when it starts and when
//     it ends (Resume, or the run's end), in order; PausedSpans lists them
//     while the run lasts.
//
// Each returns ErrUnknownRun for a run the runner never had (Run has not
// started it yet, or it ended long ago: the runner remembers the last
// 1024 that ended) and ErrRunEnded for one that ended, or that is being
// stopped (Stop itself then does nothing). Paused time is not usage: the
// outcome's wall and GPU time leave the paused spans out, and
// max_duration does not run while the job is paused (the requester's
// silence, not the job's work, holds it up; max_duration bounds the work
// it pays for). The lease's deadline, the ctx given to Run, still bounds
// the whole run on the wall clock, pauses included, so pauses never keep
// a run past its hold's expiry.
package runner

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/node/joblogs"
	"github.com/mira-market/mira/protocol"
)

// ResultReaders says who may fetch the results a provider stored: a
// job's requester, its job's result and outputs, once the claim that pays
// for them is written (the market grants it then, not the runner). Such a
// requester may also use them as inputs of its next job here.
type ResultReaders interface {
	// MayRead reports whether reader may fetch blob id.
	MayRead(id cid.Cid, reader peer.ID) bool
}

// LogBook holds the logs of runs.
type LogBook interface {
	Get(job protocol.JobID, attempt uint32) (*joblogs.Log, error)
}

// LogSender delivers a run's log to its requester while the job runs.
type LogSender interface {
	Send(ctx context.Context, to peer.ID, job protocol.JobID, attempt uint32, l *joblogs.Log, route *joblogs.Route)
}

// Config is what a Runner needs.
type Config struct {
	DataDir       string // runs' scratch dirs go in its work/
	Executors     []string
	DockerNetwork bool
	DockerUser    string
	DockerImages  []string
	WasmCacheDir  string       // "" for the data dir's wasm-cache/
	Owner         string       // the node's peer ID, which labels its containers
	Limits        Limits       // what one job may use
	GPUs          []gpu.Device // the node's GPUs; detected ones are handed to jobs
	Blobs         *blob.Service
	Results       ResultReaders
	Logs          LogBook
	LogStreams    LogSender
	MaxBlobSize   int64
	Log           *slog.Logger
	// PauseGrace is how long a run may stay paused (Pause) before it is
	// stopped with ReasonGraceExpired; DefaultPauseGrace when zero.
	PauseGrace time.Duration
	// Clock times the grace period; the system clock when nil.
	Clock clock.Clock
	// OnPause, when set, hears of every span a run is paused: once when
	// it starts (End zero) and once when it ends (Resume, or the run's
	// end), in order for each run. It is called under the run's lock:
	// it must not block, nor call Pause, Resume or Stop.
	OnPause func(PausedSpan)
}

// Runner runs a provider's leases.
type Runner struct {
	// ctx is the node's lifetime: a run's log is delivered after the run
	// ends (even cancelled), until this ends.
	ctx       context.Context
	cfg       Config
	log       *slog.Logger
	executors executor.Set
	warm      chan struct{} // closed once precompile is done
	wg        sync.WaitGroup

	runs  runTable // runs in progress, for Pause, Resume and Stop
	grace time.Duration
	clock clock.Clock

	gpuMu   sync.Mutex
	nextGPU int
}

// New sweeps what earlier runs left in the work dir, starts the executors
// the config allows (one that cannot start is left out with a warning)
// and compiles the sample wasm modules in the background. ctx is the
// runner's lifetime; Close waits for what it started.
func New(ctx context.Context, cfg Config) (*Runner, error) {
	r := &Runner{ctx: ctx, cfg: cfg, log: cfg.Log, warm: make(chan struct{})}
	r.pauseDefaults()
	r.sweepWork()
	var err error
	if r.executors, err = r.startExecutors(ctx); err != nil {
		return nil, err
	}
	r.precompile(ctx)
	return r, nil
}

// Warm is closed once the sample wasm modules are compiled.
func (r *Runner) Warm() <-chan struct{} { return r.warm }

// Close waits for the runner's goroutines (log deliveries, the
// precompile), which end with its context, and releases what the
// executors hold.
func (r *Runner) Close() {
	r.wg.Wait()
	r.closeExecutors()
}

// compiler is an executor that can prepare a module ahead of its run.
type compiler interface {
	Compile(ctx context.Context, module []byte) error
}

// precompile compiles the sample modules in the background, so the first
// job that uses one does not wait for it.
func (r *Runner) precompile(ctx context.Context) {
	c, ok := r.executors["wasm"].(compiler)
	if !ok {
		close(r.warm)
		return
	}
	r.wg.Go(func() {
		defer close(r.warm)
		for _, name := range executor.SampleNames() {
			if mod, err := executor.SampleModule(name); err == nil {
				if err := c.Compile(ctx, mod); err != nil && ctx.Err() == nil {
					r.log.Warn("compile sample module", "module", name, "err", err)
				}
			}
		}
	})
}
