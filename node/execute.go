package node

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// logGrace is how long a provider keeps trying to deliver a run's log
// after the lease's deadline.
const logGrace = time.Minute

// startExecutors builds the executors the provider's config allows. One
// that cannot start (no Docker engine) is left out with a warning, so the
// node does not bid for work it cannot run.
func (n *Node) startExecutors(ctx context.Context) (executor.Set, error) {
	n.sweepWork()
	set := executor.Set{}
	for _, name := range n.cfg.Provider.Executors {
		var (
			e   executor.Executor
			err error
		)
		switch name {
		case "noop":
			e = executor.Noop{}
		case "wasm":
			e, err = executor.NewWasm(executor.WasmOptions{
				MaxMemoryMib: n.jobLimits.MemoryMiB, CacheDir: n.wasmCacheDir(), Logger: n.log,
			})
		case "docker":
			var d *executor.Docker
			if d, err = executor.NewDocker(ctx, executor.DockerOptions{
				AllowNetwork: n.cfg.Provider.DockerNetwork, Owner: n.host.ID().String(), Logger: n.log,
				MaxMemoryMib: n.jobLimits.MemoryMiB, MaxCPUMillis: n.jobLimits.CPUMillis,
				User: n.cfg.Provider.DockerUser, Images: n.cfg.Provider.DockerImages,
			}); err == nil {
				// Containers a crash left behind.
				if removed, cerr := d.Cleanup(ctx); cerr != nil || removed > 0 {
					n.log.Info("removed leftover job containers", "count", removed, "err", cerr)
				}
			}
			e = d
		case "process":
			e = executor.NewProcess(executor.ProcessOptions{MaxMemoryMib: n.jobLimits.MemoryMiB, Logger: n.log})
		default:
			return nil, fmt.Errorf("config: provider.executors: unknown executor %q", name)
		}
		if err != nil {
			n.log.Warn("executor unavailable; not offered", "executor", name, "err", err)
			continue
		}
		set[name] = e
	}
	return set, nil
}

// workDirName is the data dir's folder of runs' scratch dirs.
const workDirName = "work"

// sweepWork removes what runs left in the data dir's work/: a node that
// stopped mid-run (a crash, a kill), or a removal that failed. No run is
// under way when it is called, at start-up.
func (n *Node) sweepWork() {
	dir := filepath.Join(n.cfg.DataDir, workDirName)
	des, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			n.log.Warn("work dir not swept", "dir", dir, "err", err)
		}
		return
	}
	for _, de := range des {
		n.removeWork(filepath.Join(dir, de.Name()))
	}
	if len(des) > 0 {
		n.log.Info("removed what earlier runs left in the work dir", "count", len(des))
	}
}

// removeWork removes a run's work dir, and logs when it cannot: what is
// left there is the provider's disk, and the next start sweeps it again.
func (n *Node) removeWork(dir string) {
	if err := removeTree(dir); err != nil {
		n.log.Warn("work dir not removed", "dir", dir, "err", err)
	}
}

// removeTree removes dir and everything under it, whatever modes a job
// left there. A directory the job made unwritable or unreadable (chmod
// 0500, 0000) cannot be emptied by a node that is not root, and
// os.RemoveAll fails on it: then every directory in the tree is first
// given u+rwx (openUp), and the removal tried again.
func removeTree(dir string) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	if err := openUp(dir); err != nil {
		return fmt.Errorf("open up %s: %w", dir, err)
	}
	return os.RemoveAll(dir)
}

// openUp gives dir and every directory under it u+rwx. dir is the node's
// own; below it the walk goes through an os.Root of each directory, one
// level at a time, so a symbolic link a job left (or swaps in meanwhile)
// is never followed out of the tree, and no path it uses grows past
// PATH_MAX however deep the tree is.
func openUp(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return err
	}
	if err := os.Chmod(dir, fi.Mode().Perm()|0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return openUpRoot(root)
}

// openUpRoot gives every directory in root u+rwx, before it reads it.
func openUpRoot(root *os.Root) error {
	f, err := root.Open(".")
	if err != nil {
		return err
	}
	des, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range des {
		if !de.IsDir() { // a link to a directory is not one
			continue
		}
		errs = append(errs, openUpEntry(root, de.Name()))
	}
	return errors.Join(errs...)
}

func openUpEntry(parent *os.Root, name string) error {
	fi, err := parent.Lstat(name)
	if err != nil || !fi.IsDir() {
		return err
	}
	// Root.Chmod follows a link swapped in since the Lstat, but only
	// within root: never out of the tree.
	if err := parent.Chmod(name, fi.Mode().Perm()|0o700); err != nil {
		return err
	}
	sub, err := parent.OpenRoot(name)
	if err != nil {
		return err
	}
	defer sub.Close()
	return openUpRoot(sub)
}

// wasmCacheDir is the wasm executor's compilation cache, created 0700:
// the machine code there is run as is, so no one else may write it. A dir
// that is not the node's own, or that others may write, is not used (the
// node compiles in memory only) and a warning says why.
func (n *Node) wasmCacheDir() string {
	dir := n.cfg.Provider.WasmCacheDir
	if dir == "" {
		dir = filepath.Join(n.cfg.DataDir, "wasm-cache")
	}
	if err := privateDir(dir); err != nil {
		n.log.Warn("wasm compilation cache not used", "dir", dir, "err", err)
		return ""
	}
	return dir
}

// privateDir creates dir (and its parents) with mode 0700 if it does not
// exist, and checks that it is a directory of this process's user that no
// one else may write or enter.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return errors.New("not a directory")
	case !ok || int(st.Uid) != os.Geteuid():
		return errors.New("not owned by the node's user")
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("mode %#o: others may use it (want 0700)", fi.Mode().Perm())
	}
	return nil
}

// closeExecutors releases what the executors hold (compiled modules, the
// Docker client).
func (n *Node) closeExecutors() {
	for _, e := range n.executors {
		switch c := e.(type) {
		case interface{ Close(context.Context) error }:
			c.Close(context.Background())
		case interface{ Close() error }:
			c.Close()
		}
	}
}

// execute runs a lease on its executor: it stages the module and inputs
// from the requester, gets the log to the requester (streamed while the
// job runs, or in the result when it ends short), keeps stdout as the
// result, and returns what the signed result (the receipt) says.
func (n *Node) execute(ctx context.Context, l *market.Lease) market.Outcome {
	start := time.Now()
	out := n.executeRun(ctx, l)
	if out.Usage == nil {
		out.Usage = &pb.Usage{WallMs: time.Since(start).Milliseconds()}
	}
	out.Error = n.requesterText(l, out.Error)
	return out
}

// providerFault is what a job's requester is told when the provider
// itself failed at what (a directory it could not make, a file it could
// not write): a fixed text. The cause, which names the provider's paths,
// goes to the provider's log.
func (n *Node) providerFault(l *market.Lease, what string, err error) error {
	n.log.Warn("job failed on the provider's side", "job", l.Job, "attempt", l.Attempt, "what", what, "err", err)
	return fmt.Errorf("%s: the provider failed (details in its log)", what)
}

// requesterText is text, a run's error or failure reason for its
// requester, unless it names the provider's data dir: then a fixed text,
// and text goes to the log. The errors the node makes itself say nothing
// of its paths (providerFault); this catches what an executor or a
// library let through.
func (n *Node) requesterText(l *market.Lease, text string) string {
	if text == "" || !n.namesDataDir(text) {
		return text
	}
	n.log.Warn("job failed; its error names the provider's paths, the requester is told less", "job", l.Job, "attempt", l.Attempt, "err", text)
	return "the provider failed to run the job (details in its log)"
}

// namesDataDir reports whether s holds the data dir's path, as
// configured, absolute or with its links resolved.
func (n *Node) namesDataDir(s string) bool {
	dirs := []string{filepath.Clean(n.cfg.DataDir)}
	if abs, err := filepath.Abs(n.cfg.DataDir); err == nil {
		dirs = append(dirs, abs)
	}
	if real, err := filepath.EvalSymlinks(n.cfg.DataDir); err == nil {
		dirs = append(dirs, real)
	}
	for _, d := range dirs {
		if d != "." && d != "/" && strings.Contains(s, d) {
			return true
		}
	}
	return false
}

func (n *Node) executeRun(ctx context.Context, l *market.Lease) market.Outcome {
	failed := func(err error) market.Outcome { return market.Outcome{ExitCode: -1, Error: err.Error()} }
	workDir := filepath.Join(n.cfg.DataDir, workDirName, fmt.Sprintf("%s.%d", l.Job, l.Attempt))
	defer n.removeWork(workDir)
	job := &executor.Job{ID: l.Job.String(), Spec: l.Spec, GPUs: n.assignGPUs(l.Spec)}
	// A scratch directory is two mkdirs and a removal: only for a job that
	// can see it.
	if _, scratchless := n.executors[l.Spec.Executor].(executor.Scratchless); !scratchless || len(l.Spec.Inputs) > 0 {
		job.Dir, job.DiskQuota = filepath.Join(workDir, "job"), n.jobLimits.DiskBytes
		if err := os.MkdirAll(filepath.Join(job.Dir, outputsDir), 0o700); err != nil {
			return failed(n.providerFault(l, "scratch dir", err))
		}
	}
	if l.Spec.Executor == "process" && len(job.GPUs) > 0 {
		// A host process sees every device; CUDA and ROCm honour these.
		job.Spec = proto.Clone(l.Spec).(*pb.JobSpec)
		devs := strings.Join(job.GPUs, ",")
		job.Spec.Env = append(job.Spec.Env, &pb.EnvVar{Name: "CUDA_VISIBLE_DEVICES", Value: devs}, &pb.EnvVar{Name: "ROCR_VISIBLE_DEVICES", Value: devs})
	}
	if err := n.stage(ctx, l, job); err != nil {
		return failed(err)
	}

	log, err := n.logs.get(l.Job, l.Attempt)
	if err != nil {
		return failed(n.providerFault(l, "log", err))
	}
	defer log.finish()
	logCtx, stopLog := context.WithDeadline(n.runCtx, l.Deadline.Add(logGrace))
	route := &logRoute{}
	n.wg.Add(1)
	go func() { defer stopLog(); n.streamLogs(logCtx, l.Requester, l.Job, l.Attempt, log, route) }()

	stdout := &spool{path: filepath.Join(workDir, "stdout"), limit: n.blobs.Store().MaxSize()}
	defer stdout.close()
	job.Stdout, job.Stderr = io.MultiWriter(stdout, log), log

	// max_duration counts from here: fetching and compiling are the
	// provider's overhead, not the job's time.
	runCtx, stop := context.WithTimeout(ctx, time.Duration(l.Spec.MaxDurationMs)*time.Millisecond)
	res, err := n.executors.Run(runCtx, job)
	stop()
	var inlineLog []byte
	log.finishUnless(func(mem []byte) bool {
		if len(mem) <= protocol.MaxResultLog && route.take(logInResult) {
			inlineLog = mem
			return true
		}
		return false
	})
	if err != nil {
		o := failed(err)
		o.Log = inlineLog
		return o
	}
	o := market.Outcome{ExitCode: res.ExitCode, Error: res.Reason, Usage: &pb.Usage{
		// The lease's GPUs, whether or not devices were handed over; a
		// job without GPUs is metered as one, as maxCost holds for it.
		WallMs: res.Wall.Milliseconds(), GpuMs: int64(max(l.Spec.GetResources().GetGpus(), 1)) * res.Wall.Milliseconds(),
		PeakMemoryBytes: res.PeakMemory, FirstOutputMs: res.FirstOutput.Milliseconds(),
	}}
	if stdout.over {
		o.ExitCode, o.Error = -1, fmt.Sprintf("result over the %d-byte blob limit", stdout.limit)
	}
	if err := n.storeResult(stdout, l.Requester, &o); err != nil {
		if errors.Is(err, blob.ErrFull) {
			err = errors.New("result: the provider's blob store is full")
		} else {
			err = n.providerFault(l, "result", err)
		}
		o = failed(err)
	}
	if job.Dir != "" && ctx.Err() == nil {
		// Whatever its exit code, a run's outputs come back: a failed
		// run's may tell why. (A cancelled run's result is never sent.)
		if err := n.storeOutputs(job.Dir, l.Requester, &o); err != nil && o.Error == "" {
			o.ExitCode, o.Error = -1, err.Error()
		}
	}
	o.Log = inlineLog
	return o
}

// storeResult names a run's stdout in o. A result small enough to travel
// inline in the signed result is only hashed: the requester keeps it from
// that message. A larger one goes into the blob store, for the requester
// (and only it) to fetch.
func (n *Node) storeResult(stdout *spool, requester peer.ID, o *market.Outcome) error {
	if stdout.err != nil {
		return fmt.Errorf("result file: %w", stdout.err)
	}
	if stdout.f == nil {
		sum := sha256.Sum256(stdout.mem)
		id, err := protocol.BlobID(sum[:])
		if err != nil {
			return err
		}
		o.ResultID, o.ResultSize, o.Output = id.String(), uint64(len(stdout.mem)), stdout.mem
		return nil
	}
	if _, err := stdout.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("result file: %w", err)
	}
	id, size, err := n.blobs.Store().PutFor(stdout.f, blob.Held, requester)
	if err != nil {
		return fmt.Errorf("store result: %w", err)
	}
	o.ResultID, o.ResultSize = id.String(), uint64(size)
	return n.db.PutResultReader(id.String(), []byte(requester))
}

// storeOutputs archives the files a run left in out/ in its scratch dir
// into the blob store, for the requester (and only it) to fetch, and
// names the archive in o. A run that left none has no outputs.
func (n *Node) storeOutputs(scratch string, requester peer.ID, o *market.Outcome) error {
	if outputsEmpty(scratch) {
		return nil
	}
	type archived struct {
		entries int
		err     error
	}
	pr, pw := io.Pipe()
	done := make(chan archived, 1)
	go func() {
		entries, err := archiveOutputs(scratch, pw, n.blobs.Store().MaxSize())
		pw.CloseWithError(err)
		done <- archived{entries, err}
	}()
	id, size, err := n.blobs.Store().PutFor(pr, blob.Held, requester)
	pr.CloseWithError(errors.New("archive not read")) // ends the writer if Put stopped early
	a := <-done
	switch {
	case errors.Is(a.err, fs.ErrNotExist):
		return nil // the job removed its out/
	case errors.Is(a.err, errOutputsTooLarge) || errors.Is(err, blob.ErrTooLarge):
		return fmt.Errorf("%w (%d bytes)", errOutputsTooLarge, n.blobs.Store().MaxSize())
	case a.err != nil && !errors.Is(a.err, errOutputsProvider):
		return a.err // the job's doing: the text names nothing of the provider's
	case err == nil && a.err == nil && a.entries == 0:
		return nil // only links and special files
	case err == nil && a.err == nil:
		err = n.db.PutResultReader(id.String(), []byte(requester))
	}
	if err := cmp.Or(err, a.err); err != nil {
		n.log.Warn("store outputs", "err", err)
		return errors.New("outputs: the provider could not store them")
	}
	o.OutputsID, o.OutputsSize = id.String(), uint64(size)
	return nil
}

// compiler is an executor that can prepare a module ahead of its run.
type compiler interface {
	Compile(ctx context.Context, module []byte) error
}

// precompile compiles the sample modules in the background, so the first
// job that uses one does not wait for it.
func (n *Node) precompile(ctx context.Context) {
	c, ok := n.executors["wasm"].(compiler)
	if !ok {
		close(n.warm)
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(n.warm)
		for _, name := range executor.SampleNames() {
			if mod, err := executor.SampleModule(name); err == nil {
				if err := c.Compile(ctx, mod); err != nil && ctx.Err() == nil {
					n.log.Warn("compile sample module", "module", name, "err", err)
				}
			}
		}
	}()
}

// stage fetches what the job needs from its requester: the wasm module (a
// content ID, or the name of a sample module this binary ships) and the
// inputs, which land in the scratch dir under inputs/. A blob the
// provider holds already serves only a requester that delivered it (see
// stageBlob); the copies in the scratch dir go with it after the run,
// and the blobs stay as evictable cache.
func (n *Node) stage(ctx context.Context, l *market.Lease, job *executor.Job) error {
	if l.Spec.Executor == "wasm" {
		mod, err := n.module(ctx, l)
		if err != nil {
			return fmt.Errorf("module: %w", err)
		}
		if c, ok := n.executors[l.Spec.Executor].(compiler); ok {
			if err := c.Compile(ctx, mod); err != nil {
				return fmt.Errorf("module: %w", err)
			}
		}
		job.Module = mod
	}
	if len(l.Spec.Inputs) == 0 {
		return nil
	}
	dir := filepath.Join(job.Dir, "inputs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return n.providerFault(l, "inputs", err)
	}
	for _, in := range l.Spec.Inputs {
		id, _, err := protocol.ParseBlobID(in)
		if err != nil {
			return fmt.Errorf("input: %w", err)
		}
		release, err := n.stageBlob(ctx, id, l.Requester)
		if err != nil {
			return fmt.Errorf("input %s: %w", id, err)
		}
		// A copy, not a link: the job may write to its inputs.
		err = n.copyBlob(id, filepath.Join(dir, id.String()))
		release()
		if err != nil {
			return n.providerFault(l, "input "+id.String(), err)
		}
	}
	return nil
}

func (n *Node) module(ctx context.Context, l *market.Lease) ([]byte, error) {
	id, _, err := protocol.ParseBlobID(l.Spec.Module)
	if err != nil {
		return executor.SampleModule(l.Spec.Module)
	}
	release, err := n.stageBlob(ctx, id, l.Requester)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	defer release()
	mod, err := n.blobs.Store().ReadAll(id)
	if err != nil {
		return nil, n.providerFault(l, id.String(), err)
	}
	return mod, nil
}

func (n *Node) copyBlob(id cid.Cid, dst string) error {
	src, _, err := n.blobs.Store().Open(id)
	if err != nil {
		return err
	}
	defer src.Close()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, src.File)
	return errors.Join(err, f.Close())
}

// assignGPUs picks device indices for a job's GPUs, round-robin over the
// node's detected GPUs: with more slots than GPUs, leases share devices.
// Declared GPUs are sold but not handed to containers: without detection
// the node cannot tell that a container runtime could reach them.
func (n *Node) assignGPUs(spec *pb.JobSpec) []string {
	want := int(spec.GetResources().GetGpus())
	total := 0
	for _, g := range n.capacity.gpus {
		if g.Source == gpu.SourceDetected {
			total += g.Count
		}
	}
	if want == 0 || total == 0 {
		return nil
	}
	n.gpuMu.Lock()
	defer n.gpuMu.Unlock()
	out := make([]string, 0, want)
	for range min(want, total) {
		out = append(out, strconv.Itoa(n.nextGPU%total))
		n.nextGPU++
	}
	return out
}

// spool takes a run's stdout, at most limit bytes (noting when more came).
// It keeps up to protocol.MaxResultOutput bytes, what a result carries
// inline, in memory, and moves them to a file at path once the output
// grows beyond that: most results never touch the disk.
type spool struct {
	path  string
	limit int64

	mu   sync.Mutex
	mem  []byte
	f    *os.File // nil while the output fits in mem
	n    int64
	over bool
	err  error
}

func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := len(p)
	if room := s.limit - s.n; int64(size) > room {
		s.over = true
		p = p[:max(room, 0)]
	}
	if s.err != nil {
		return 0, s.err
	}
	if s.f == nil && len(s.mem)+len(p) <= protocol.MaxResultOutput {
		s.mem = append(s.mem, p...)
		s.n += int64(len(p))
		return size, nil
	}
	if s.f == nil {
		if s.err = s.spill(); s.err != nil {
			return 0, s.err
		}
	}
	n, err := s.f.Write(p)
	s.n += int64(n)
	if err != nil {
		s.err = err
		return n, err
	}
	return size, nil
}

// spill moves the output so far into the spool's file.
func (s *spool) spill() error {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	f, err := os.Create(s.path)
	if err != nil {
		return err
	}
	if _, err := f.Write(s.mem); err != nil {
		f.Close()
		return err
	}
	s.f, s.mem = f, nil
	return nil
}

func (s *spool) close() {
	if s.f != nil {
		s.f.Close()
	}
}
