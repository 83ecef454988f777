// Package runner is a provider's job runtime: it runs leases on the
// executors the provider's config allows, stages their module and inputs
// from the requester into a scratch dir, spools stdout, delivers the log,
// and keeps the result and outputs in the blob store for the requester.
package runner

import (
	"context"
	"log/slog"
	"sync"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/node/joblogs"
	"github.com/mira-market/mira/protocol"
)

// ResultReaders records who may fetch the results a provider stored: a
// job's requester, its job's result and outputs.
type ResultReaders interface {
	// AllowReader lets reader fetch blob id.
	AllowReader(id string, reader peer.ID) error
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

	gpuMu   sync.Mutex
	nextGPU int
}

// New sweeps what earlier runs left in the work dir, starts the executors
// the config allows (one that cannot start is left out with a warning)
// and compiles the sample wasm modules in the background. ctx is the
// runner's lifetime; Close waits for what it started.
func New(ctx context.Context, cfg Config) (*Runner, error) {
	r := &Runner{ctx: ctx, cfg: cfg, log: cfg.Log, warm: make(chan struct{})}
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
