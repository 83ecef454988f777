package executor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
	"golang.org/x/sys/unix"
)

// wasmPageSize is the size of a WebAssembly memory page.
const wasmPageSize = 64 << 10

// WasmOptions configures the wasm executor. The zero value is usable.
type WasmOptions struct {
	// DefaultMemoryMib is the memory limit of a job whose spec gives no
	// resources.memory_mib; 256 when zero.
	DefaultMemoryMib uint32
	// MaxMemoryMib is the most memory any job may ask for, and the limit
	// the runtime itself enforces (WithMemoryLimitPages); 4096, the wasm32
	// maximum, when zero or larger.
	MaxMemoryMib uint32
	// CompiledModules bounds how many compiled modules are kept in memory
	// (least recently used are dropped); 8 when zero.
	CompiledModules int
	// CacheDir, if set, is a directory where compiled machine code is kept
	// across processes (wazero.NewCompilationCacheWithDir), so a restarted
	// node does not compile a module again.
	CacheDir string
	// MemAvailable returns the memory the host has free, in bytes; a run
	// is refused (ErrNoMemory) when its limit does not fit in it beside
	// what the runs in progress may still grow into. ReadHostMemory's
	// Available when nil.
	MemAvailable func() (uint64, error)
	// Logger receives debug logs; none when nil.
	Logger *slog.Logger
}

// Wasm runs WASI preview1 command modules (a Go GOOS=wasip1 program, for
// instance) with wazero, the sandboxed default executor.
//
// A guest sees no host file but job.Dir, mounted as its "/" and its working
// directory (PWD=/), and may not create symbolic links there (a relative
// link could lead out of the mount). It has no network: WASI preview1 has
// no way to open a socket and no other host functions are provided. Its
// environment is exactly the spec's env (plus PWD=/ unless the spec sets
// PWD), its arguments are "job" then the spec's args, its clocks and random
// source are the host's (a sleep ends early when ctx is done). Memory is capped at the spec's
// resources.memory_mib; a guest whose memory.grow is refused and that then
// fails is reported as ReasonOOM. A guest's memory is reserved when it
// starts and committed as it is touched, so a run whose limit does not fit
// in the host's free memory, beside what the runs in progress may still
// grow into, is refused (ErrNoMemory). With a job.DiskQuota, every call that
// can grow the dir is accounted exactly (see diskQuota) and one that
// would take it past the quota fails with EIO; the run then fails with
// ReasonDiskQuota, whatever the guest made of it. ctx stops a running
// guest. A guest cannot be paused (see Control): a pause stops it, and
// the run fails with ReasonStoppedAtInterval.
//
// Modules are compiled once per process: compiled modules are cached by the
// SHA-256 of their bytes.
type Wasm struct {
	opts    WasmOptions
	maxMem  uint64 // bytes
	rt      wazero.Runtime
	ccache  wazero.CompilationCache // nil without CacheDir
	log     *slog.Logger
	mu      sync.Mutex
	modules map[[sha256.Size]byte]*compiledModule
	tick    uint64                  // LRU clock, under mu
	closed  bool                    // under mu
	running map[*jobMemory]struct{} // the memories of runs in progress, under mu
	runs    sync.WaitGroup
	stop    context.Context // done when Close stops the runs
	stopAll context.CancelFunc
}

// compiledModule is an entry of the compiled-module cache.
type compiledModule struct {
	ready   chan struct{} // closed once cm or err is set
	cm      wazero.CompiledModule
	err     error
	refs    int    // runs using cm, under Wasm.mu
	used    uint64 // Wasm.tick at last use, under Wasm.mu
	evicted bool   // dropped from the cache; closed when refs drops to 0
}

var _ Executor = (*Wasm)(nil)

// NewWasm returns a wasm executor. Close it to release compiled code.
func NewWasm(opts WasmOptions) (*Wasm, error) {
	if opts.DefaultMemoryMib == 0 {
		opts.DefaultMemoryMib = 256
	}
	if opts.MaxMemoryMib == 0 || opts.MaxMemoryMib > 4096 {
		opts.MaxMemoryMib = 4096
	}
	if opts.DefaultMemoryMib > opts.MaxMemoryMib {
		opts.DefaultMemoryMib = opts.MaxMemoryMib
	}
	if opts.CompiledModules <= 0 {
		opts.CompiledModules = 8
	}
	if opts.MemAvailable == nil {
		opts.MemAvailable = func() (uint64, error) {
			m, err := ReadHostMemory()
			return m.Available, err
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxMem := uint64(opts.MaxMemoryMib) << 20
	cfg := wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(uint32(maxMem / wasmPageSize))
	var ccache wazero.CompilationCache
	if opts.CacheDir != "" {
		var err error
		if ccache, err = wazero.NewCompilationCacheWithDir(opts.CacheDir); err != nil {
			return nil, fmt.Errorf("wasm: compilation cache %s: %w", opts.CacheDir, err)
		}
		cfg = cfg.WithCompilationCache(ccache)
	}
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		rt.Close(ctx)
		return nil, fmt.Errorf("wasm: instantiate WASI: %w", err)
	}
	stop, stopAll := context.WithCancel(context.Background())
	return &Wasm{
		stop:    stop,
		stopAll: stopAll,
		opts:    opts,
		maxMem:  maxMem,
		rt:      rt,
		ccache:  ccache,
		log:     log,
		modules: make(map[[sha256.Size]byte]*compiledModule),
		running: make(map[*jobMemory]struct{}),
	}, nil
}

// Name implements Executor.
func (*Wasm) Name() string { return "wasm" }

// Close stops the runs in progress (they end as cancelled), waits for them
// and releases the runtime and every compiled module. Later runs fail.
func (w *Wasm) Close(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.stopAll()
	w.runs.Wait()
	err := w.rt.Close(ctx)
	if w.ccache != nil {
		err = errors.Join(err, w.ccache.Close(ctx))
	}
	return err
}

// Compile compiles module into the cache ahead of its first run, so that a
// run does not pay for it.
func (w *Wasm) Compile(ctx context.Context, module []byte) error {
	_, release, err := w.acquire(ctx, module)
	if err != nil {
		return err
	}
	release()
	return nil
}

// Run implements Executor: prepare the job's memory limit and compiled
// module, then run the module (start, wait for _start, collect).
func (w *Wasm) Run(ctx context.Context, job *Job) (Result, error) {
	fail := Result{ExitCode: -1}
	limit, err := w.prepare(job)
	if err != nil {
		return fail, err
	}
	// A guest's memory is unmapped when its module closes: the runtime
	// must not close under a running guest.
	if !w.enter() {
		return fail, errors.New("wasm: executor closed")
	}
	defer w.runs.Done()
	// A pause stops the guest through ctx, with its cause (wasmStopper).
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(w.stop, func() { cancel(nil) })()

	cm, release, err := w.acquire(ctx, job.Module)
	if err != nil {
		if ctx.Err() != nil {
			return Result{ExitCode: -1, Reason: ctxReason(ctx)}, nil
		}
		return fail, err
	}
	defer release()
	if need := minMemory(cm); need > limit {
		w.log.Debug("wasm: module's initial memory over the job's limit", "job", job.ID, "need", need, "limit", limit)
		return Result{ExitCode: -1, Reason: ReasonOOM}, nil
	}

	mem := &jobMemory{limit: limit}
	if err := w.admit(mem); err != nil {
		return fail, err
	}
	defer w.leave(mem)
	return w.runModule(ctx, cancel, job, cm, mem)
}

// prepare checks the job (a module, a scratch dir) and returns its memory
// limit in bytes: what it asks, else the default, within the maximum.
func (w *Wasm) prepare(job *Job) (uint64, error) {
	if len(job.Module) == 0 {
		return 0, errors.New("wasm: job has no module")
	}
	if job.Dir == "" {
		return 0, errors.New("wasm: job has no directory")
	}
	limit := uint64(w.opts.DefaultMemoryMib) << 20
	if m := job.Spec.GetResources().GetMemoryMib(); m > 0 {
		limit = uint64(m) << 20
	}
	if limit > w.maxMem {
		return 0, fmt.Errorf("wasm: memory_mib %d: %w of %d", limit>>20, ErrOverLimit, w.maxMem>>20)
	}
	return limit, nil
}

// enter counts a run in progress, unless the executor is closed.
func (w *Wasm) enter() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.runs.Add(1)
	return true
}

// runModule instantiates the compiled module over the job's scratch dir,
// calls its _start and collects how it ended; stop ends ctx (a pause).
func (w *Wasm) runModule(ctx context.Context, stop context.CancelCauseFunc, job *Job, cm wazero.CompiledModule, mem *jobMemory) (Result, error) {
	fail := Result{ExitCode: -1}
	start := time.Now()
	clock := newOutputClock(start)
	fsys := sandboxFS{FS: sysfs.DirFS(job.Dir)}
	if job.DiskQuota > 0 {
		base, err := measureScratch(job.Dir, w.log.With("job", job.ID))
		if err != nil {
			return fail, fmt.Errorf("wasm: %w", err)
		}
		fsys.quota = newDiskQuota(job.DiskQuota, base)
	}
	mod, err := w.rt.InstantiateModule(experimental.WithMemoryAllocator(ctx, mem), cm, moduleConfig(ctx, job, clock, fsys))
	if err != nil {
		if ctx.Err() != nil {
			return Result{ExitCode: -1, Reason: ctxReason(ctx), Wall: job.Control.Active(start)}, nil
		}
		return fail, fmt.Errorf("wasm: instantiate: %w", err)
	}
	defer mod.Close(context.Background())
	startFn := mod.ExportedFunction("_start")
	if startFn == nil {
		return fail, errors.New("wasm: module is not a WASI command (no _start export)")
	}
	if err := job.Control.bind(wasmStopper(stop)); err != nil {
		w.log.Debug("wasm: pause asked before the start", "job", job.ID, "err", err)
	}
	_, err = startFn.Call(ctx)
	job.Control.End()
	res := Result{Wall: job.Control.Active(start), FirstOutput: clock.firstOutput(), PeakMemory: mem.peak.Load()}
	return collectWasm(ctx, res, err, mem, fsys), nil
}

// moduleConfig is a guest's world: its args, output, scratch dir at /,
// clocks, sleep (ended by ctx), randomness and environment.
func moduleConfig(ctx context.Context, job *Job, clock *outputClock, fsys sandboxFS) wazero.ModuleConfig {
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions(). // _start is called below, to tell link errors from runs
		WithArgs(append([]string{"job"}, job.Spec.GetArgs()...)...).
		WithStdout(clock.wrap(job.Stdout)).
		WithStderr(clock.wrap(job.Stderr)).
		WithFSConfig(wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(fsys, "/")).
		WithSysWalltime().
		WithSysNanotime().
		WithNanosleep(func(ns int64) { sleepCtx(ctx, time.Duration(ns)) }).
		WithRandSource(rand.Reader)
	hasPWD := false
	for _, e := range job.Spec.GetEnv() {
		hasPWD = hasPWD || e.GetName() == "PWD"
		cfg = cfg.WithEnv(e.GetName(), e.GetValue())
	}
	if !hasPWD {
		cfg = cfg.WithEnv("PWD", "/")
	}
	return cfg
}

// collectWasm completes a run's result from how its _start returned (err):
// an exit code, a kill by ctx, a trap; memory refused and a broken disk
// quota name the reason.
func collectWasm(ctx context.Context, res Result, err error, mem *jobMemory, fsys sandboxFS) Result {
	var exit *sys.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.ExitCode() != sys.ExitCodeContextCanceled && exit.ExitCode() != sys.ExitCodeDeadlineExceeded:
		res.ExitCode = int32(exit.ExitCode())
	case ctx.Err() != nil:
		res.ExitCode, res.Reason = -1, ctxReason(ctx)
	default:
		res.ExitCode, res.Reason = -1, "wasm trap: "+firstLine(err.Error())
	}
	if res.Failed() && mem.refused.Load() && res.Reason != ReasonTimeout && res.Reason != ReasonCancelled {
		res.Reason = ReasonOOM
	}
	// A refused write fails the run, whatever the guest made of it.
	if fsys.quota != nil && fsys.quota.exceeded.Load() && res.Reason != ReasonCancelled {
		res.Reason = ReasonDiskQuota
	}
	return res
}

// admit counts mem among the runs in progress if its limit fits in the
// host's free memory beside what those runs may still grow into: a guest's
// memory is reserved, not committed, when it starts, so many runs could
// each be granted what only one of them can have. What a run has grown
// to counts as taken from the free memory already.
func (w *Wasm) admit(mem *jobMemory) error {
	free, err := w.opts.MemAvailable()
	if err != nil {
		return fmt.Errorf("wasm: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var promised uint64
	for m := range w.running {
		promised += m.limit - min(m.peak.Load(), m.limit)
	}
	// promised can pass free (another program took memory since): then
	// nothing fits, and free-promised, unsigned, must not wrap around.
	if promised >= free || mem.limit > free-promised {
		return fmt.Errorf("wasm: memory_mib %d: %w (%d MiB free, %d MiB of it promised to running jobs)",
			mem.limit>>20, ErrNoMemory, free>>20, min(promised, free)>>20)
	}
	w.running[mem] = struct{}{}
	return nil
}

// leave ends what admit began.
func (w *Wasm) leave(mem *jobMemory) {
	w.mu.Lock()
	delete(w.running, mem)
	w.mu.Unlock()
}

// acquire returns the compiled module for module, compiling it if it is not
// cached, and a func to call once the run no longer needs it.
func (w *Wasm) acquire(ctx context.Context, module []byte) (wazero.CompiledModule, func(), error) {
	key := sha256.Sum256(module)
	w.mu.Lock()
	e, ok := w.modules[key]
	if !ok {
		e = &compiledModule{ready: make(chan struct{})}
		w.modules[key] = e
	}
	e.refs++
	w.tick++
	e.used = w.tick
	w.mu.Unlock()
	release := func() { w.release(key, e) }

	if !ok {
		t := time.Now()
		// Compile with a context of its own: runs waiting for the same
		// module must not fail because the first one was cancelled.
		e.cm, e.err = w.rt.CompileModule(context.Background(), module)
		if e.err != nil {
			e.err = fmt.Errorf("wasm: compile: %w", e.err)
		}
		w.log.Debug("wasm: compiled module", "sha256", fmt.Sprintf("%x", key[:8]), "bytes", len(module), "took", time.Since(t), "err", e.err)
		close(e.ready)
		w.mu.Lock()
		if e.err != nil && w.modules[key] == e {
			delete(w.modules, key) // a later run tries again
		}
		w.evictLocked()
		w.mu.Unlock()
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		release()
		return nil, nil, ctx.Err()
	}
	if e.err != nil {
		release()
		return nil, nil, e.err
	}
	return e.cm, release, nil
}

// release drops one reference to e, closing it if it was evicted meanwhile.
func (w *Wasm) release(key [sha256.Size]byte, e *compiledModule) {
	w.mu.Lock()
	e.refs--
	closeIt := e.evicted && e.refs == 0 && e.cm != nil
	w.mu.Unlock()
	if closeIt {
		e.cm.Close(context.Background())
	}
}

// evictLocked drops the least recently used compiled modules over the
// bound; those in use are closed when their last run releases them.
func (w *Wasm) evictLocked() {
	for len(w.modules) > w.opts.CompiledModules {
		var oldKey [sha256.Size]byte
		var old *compiledModule
		for k, e := range w.modules {
			select {
			case <-e.ready:
			default:
				continue // still compiling
			}
			if old == nil || e.used < old.used {
				oldKey, old = k, e
			}
		}
		if old == nil {
			return
		}
		delete(w.modules, oldKey)
		old.evicted = true
		if old.refs == 0 && old.cm != nil {
			go old.cm.Close(context.Background())
		}
	}
}

// minMemory is the initial memory in bytes that a module declares.
func minMemory(cm wazero.CompiledModule) uint64 {
	for _, m := range cm.ExportedMemories() {
		return uint64(m.Min()) * wasmPageSize
	}
	for _, m := range cm.ImportedMemories() {
		return uint64(m.Min()) * wasmPageSize
	}
	return 0
}

// jobMemory allocates a guest's linear memory up to a limit, and records
// its peak size and whether a grow was refused.
type jobMemory struct {
	limit   uint64
	peak    atomic.Uint64
	refused atomic.Bool
}

// Allocate implements experimental.MemoryAllocator. The memory is an
// anonymous mapping of the job's whole limit, reserved but not committed:
// the guest's pages cost host memory only once touched, and growing never
// copies.
func (m *jobMemory) Allocate(_, _ uint64) experimental.LinearMemory {
	return &linearMemory{job: m}
}

// linearMemory is one guest memory; wazero calls it from the guest's
// goroutine only.
type linearMemory struct {
	job *jobMemory
	buf []byte // the mapping, len = limit
}

// Reallocate implements experimental.LinearMemory: nil refuses the grow,
// which the guest sees as memory.grow returning -1.
func (l *linearMemory) Reallocate(size uint64) []byte {
	if size > l.job.limit {
		l.job.refused.Store(true)
		return nil
	}
	if l.buf == nil {
		b, err := unix.Mmap(-1, 0, int(l.job.limit), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			l.job.refused.Store(true)
			return nil
		}
		l.buf = b
	}
	if size > l.job.peak.Load() {
		l.job.peak.Store(size)
	}
	return l.buf[:size:size]
}

// Free implements experimental.LinearMemory.
func (l *linearMemory) Free() {
	if l.buf != nil {
		unix.Munmap(l.buf)
		l.buf = nil
	}
}

// wasmStopper is a guest's pauser: wazero cannot suspend a guest, so a
// pause stops it (through its run's context, which closes the module at
// its next check) and the run ends with ReasonStoppedAtInterval.
type wasmStopper context.CancelCauseFunc

func (s wasmStopper) pause() error {
	s(&StopError{Reason: ReasonStoppedAtInterval})
	return ErrCannotPause
}

// resume is never called: a guest is never paused.
func (wasmStopper) resume() error { return nil }

// sleepCtx sleeps for d or until ctx is done; a guest's sleep must not
// outlive its job (the guest is closed at its next instruction check).
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
