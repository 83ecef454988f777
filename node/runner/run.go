package runner

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
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/node/joblogs"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// logGrace is how long a provider keeps trying to deliver a run's log
// after the lease's deadline.
const logGrace = time.Minute

// Run runs a lease on its executor: it stages the module and inputs from
// the requester, gets the log to the requester (streamed while the job
// runs, or in the result when it ends short), keeps stdout as the result,
// and returns what the signed result (the receipt) says. ctx bounds
// staging and the run; the lease's max_duration bounds the run alone.
//
// While it runs, Pause, Resume and Stop reach it by its job and attempt.
// Its usage leaves out the time it was paused.
func (r *Runner) Run(ctx context.Context, l *market.Lease) market.Outcome {
	start := time.Now()
	a, runCtx := r.track(ctx, l)
	defer r.untrack(a)
	out := r.run(ctx, runCtx, l, a.ctl)
	if out.Usage == nil {
		out.Usage = &pb.Usage{WallMs: a.ctl.Active(start).Milliseconds()}
	}
	out.Error = r.requesterText(l, out.Error)
	return out
}

// failed is the outcome of a run that failed before or instead of an exit.
func failed(err error) market.Outcome { return market.Outcome{ExitCode: -1, Error: err.Error()} }

// run stages and runs the job under stopCtx (ctx, also ended by Stop), and
// collects its outcome under ctx: a stopped run's outputs are kept.
func (r *Runner) run(ctx, stopCtx context.Context, l *market.Lease, ctl *executor.Control) market.Outcome {
	workDir := filepath.Join(r.cfg.DataDir, workDirName, fmt.Sprintf("%s.%d", l.Job, l.Attempt))
	defer r.removeWork(workDir)
	job, err := r.prepare(l, workDir)
	if err != nil {
		return failed(err)
	}
	job.Control = ctl
	if err := r.stage(stopCtx, l, job); err != nil {
		if reason := stopReason(stopCtx); reason != "" {
			return market.Outcome{ExitCode: -1, Error: reason}
		}
		return failed(err)
	}
	log, err := r.cfg.Logs.Get(l.Job, l.Attempt)
	if err != nil {
		return failed(r.providerFault(l, "log", err))
	}
	defer log.Finish()
	route := r.deliverLog(l, log)
	stdout := &spool{path: filepath.Join(workDir, "stdout"), limit: r.cfg.Blobs.Store().MaxSize()}
	defer stdout.close()
	job.Stdout, job.Stderr = io.MultiWriter(stdout, log), log

	// max_duration counts from here: fetching and compiling are the
	// provider's overhead, not the job's time. Nor does it count while the
	// job is paused (see executor.Control); ctx's deadline (the lease's)
	// does.
	runCtx, stop := ctl.WithActiveTimeout(stopCtx, time.Duration(l.Spec.MaxDurationMs)*time.Millisecond)
	res, err := r.executors.Run(runCtx, job)
	stop()
	inlineLog := logForResult(log, route)
	if err != nil {
		o := failed(err)
		o.Log = inlineLog
		return o
	}
	o := r.collect(ctx, l, job, res, stdout)
	o.Log = inlineLog
	return o
}

// prepare makes a run's job: its scratch dir (with an empty out/) when
// the job can see one, and its GPUs (the executor hands them over, and
// hides the others).
func (r *Runner) prepare(l *market.Lease, workDir string) (*executor.Job, error) {
	job := &executor.Job{ID: l.Job.String(), Spec: l.Spec, GPUs: r.assignGPUs(l.Spec)}
	// A scratch directory is two mkdirs and a removal: only for a job that
	// can see it.
	if _, scratchless := r.executors[l.Spec.Executor].(executor.Scratchless); !scratchless || len(l.Spec.Inputs) > 0 {
		job.Dir, job.DiskQuota = filepath.Join(workDir, "job"), r.cfg.Limits.DiskBytes
		if err := os.MkdirAll(filepath.Join(job.Dir, outputsDir), 0o700); err != nil {
			return nil, r.providerFault(l, "scratch dir", err)
		}
	}
	return job, nil
}

// deliverLog starts streaming a run's log to its requester, in the
// background until the log is delivered or logGrace after the lease's
// deadline, whether or not the run is cancelled meanwhile.
func (r *Runner) deliverLog(l *market.Lease, log *joblogs.Log) *joblogs.Route {
	logCtx, stopLog := context.WithDeadline(r.ctx, l.Deadline.Add(logGrace))
	route := &joblogs.Route{}
	r.wg.Go(func() {
		defer stopLog()
		r.cfg.LogStreams.Send(logCtx, l.Requester, l.Job, l.Attempt, log, route)
	})
	return route
}

// logForResult ends a run's log, and returns it when it goes in the
// run's result: small enough, and not being streamed.
func logForResult(log *joblogs.Log, route *joblogs.Route) []byte {
	var inline []byte
	log.FinishUnless(func(mem []byte) bool {
		if len(mem) <= protocol.MaxResultLog && route.Take(joblogs.InResult) {
			inline = mem
			return true
		}
		return false
	})
	return inline
}

// collect makes the outcome of a run that exited: its usage, its stdout
// as the result, and its outputs.
func (r *Runner) collect(ctx context.Context, l *market.Lease, job *executor.Job, res executor.Result, stdout *spool) market.Outcome {
	o := market.Outcome{ExitCode: res.ExitCode, Error: res.Reason, Usage: &pb.Usage{
		// The lease's GPUs, whether or not devices were handed over; a
		// job without GPUs is metered as one, as maxCost holds for it.
		WallMs: res.Wall.Milliseconds(), GpuMs: int64(max(l.Spec.GetResources().GetGpus(), 1)) * res.Wall.Milliseconds(),
		PeakMemoryBytes: res.PeakMemory, FirstOutputMs: res.FirstOutput.Milliseconds(),
	}}
	if stdout.over {
		o.ExitCode, o.Error = -1, fmt.Sprintf("result over the %d-byte blob limit", stdout.limit)
	}
	if err := r.storeResult(stdout, l.Requester, &o); err != nil {
		if errors.Is(err, blob.ErrFull) {
			err = errors.New("result: the provider's blob store is full")
		} else {
			err = r.providerFault(l, "result", err)
		}
		o = failed(err)
	}
	if job.Dir != "" && ctx.Err() == nil {
		// Whatever its exit code, a run's outputs come back: a failed
		// run's may tell why. (A cancelled run's result is never sent.)
		if err := r.storeOutputs(job.Dir, l.Requester, &o); err != nil && o.Error == "" {
			o.ExitCode, o.Error = -1, err.Error()
		}
	}
	return o
}

// providerFault is what a job's requester is told when the provider
// itself failed at what (a directory it could not make, a file it could
// not write): a fixed text. The cause, which names the provider's paths,
// goes to the provider's log.
func (r *Runner) providerFault(l *market.Lease, what string, err error) error {
	r.log.Warn("job failed on the provider's side", "job", l.Job, "attempt", l.Attempt, "what", what, "err", err)
	return fmt.Errorf("%s: the provider failed (details in its log)", what)
}

// requesterText is text, a run's error or failure reason for its
// requester, unless it names the provider's data dir: then a fixed text,
// and text goes to the log. The errors the runner makes itself say
// nothing of its paths (providerFault); this catches what an executor or
// a library let through.
func (r *Runner) requesterText(l *market.Lease, text string) string {
	if text == "" || !r.namesDataDir(text) {
		return text
	}
	r.log.Warn("job failed; its error names the provider's paths, the requester is told less", "job", l.Job, "attempt", l.Attempt, "err", text)
	return "the provider failed to run the job (details in its log)"
}

// namesDataDir reports whether s holds the data dir's path, as
// configured, absolute or with its links resolved.
func (r *Runner) namesDataDir(s string) bool {
	dirs := []string{filepath.Clean(r.cfg.DataDir)}
	if abs, err := filepath.Abs(r.cfg.DataDir); err == nil {
		dirs = append(dirs, abs)
	}
	if real, err := filepath.EvalSymlinks(r.cfg.DataDir); err == nil {
		dirs = append(dirs, real)
	}
	for _, d := range dirs {
		if d != "." && d != "/" && strings.Contains(s, d) {
			return true
		}
	}
	return false
}

// storeResult names a run's stdout in o. A result small enough to travel
// inline in the signed result is only hashed: the requester keeps it from
// that message. A larger one goes into the blob store, for the requester
// (and only it) to fetch once its claim is written: the market opens it
// then (market.Delivery), not here, or a requester could fetch what the
// bill names and never sign for it.
func (r *Runner) storeResult(stdout *spool, requester peer.ID, o *market.Outcome) error {
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
	id, size, err := r.cfg.Blobs.Store().PutFor(stdout.f, blob.Held, requester)
	if err != nil {
		return fmt.Errorf("store result: %w", err)
	}
	o.ResultID, o.ResultSize = id.String(), uint64(size)
	return nil
}

// storeOutputs archives the files a run left in out/ in its scratch dir
// into the blob store, for the requester (and only it) to fetch once its
// claim is written (as storeResult's), and names the archive in o. A run
// that left none has no outputs.
func (r *Runner) storeOutputs(scratch string, requester peer.ID, o *market.Outcome) error {
	if outputsEmpty(scratch) {
		return nil
	}
	type archived struct {
		entries int
		err     error
	}
	store := r.cfg.Blobs.Store()
	pr, pw := io.Pipe()
	done := make(chan archived, 1)
	go func() {
		entries, err := archiveOutputs(scratch, pw, store.MaxSize())
		pw.CloseWithError(err)
		done <- archived{entries, err}
	}()
	id, size, err := store.PutFor(pr, blob.Held, requester)
	pr.CloseWithError(errors.New("archive not read")) // ends the writer if Put stopped early
	a := <-done
	switch {
	case errors.Is(a.err, fs.ErrNotExist):
		return nil // the job removed its out/
	case errors.Is(a.err, errOutputsTooLarge) || errors.Is(err, blob.ErrTooLarge):
		return fmt.Errorf("%w (%d bytes)", errOutputsTooLarge, store.MaxSize())
	case a.err != nil && !errors.Is(a.err, errOutputsProvider):
		return a.err // the job's doing: the text names nothing of the provider's
	case err == nil && a.err == nil && a.entries == 0:
		return nil // only links and special files
	}
	if err := cmp.Or(err, a.err); err != nil {
		r.log.Warn("store outputs", "err", err)
		return errors.New("outputs: the provider could not store them")
	}
	o.OutputsID, o.OutputsSize = id.String(), uint64(size)
	return nil
}

// assignGPUs picks device indices for a job's GPUs, round-robin over the
// node's detected GPUs: with more slots than GPUs, leases share devices.
// Declared GPUs are sold but not handed to containers: without detection
// the node cannot tell that a container runtime could reach them.
func (r *Runner) assignGPUs(spec *pb.JobSpec) []string {
	want := int(spec.GetResources().GetGpus())
	total := 0
	for _, g := range r.cfg.GPUs {
		if g.Source == gpu.SourceDetected {
			total += g.Count
		}
	}
	if want == 0 || total == 0 {
		return nil
	}
	r.gpuMu.Lock()
	defer r.gpuMu.Unlock()
	out := make([]string, 0, want)
	for range min(want, total) {
		out = append(out, strconv.Itoa(r.nextGPU%total))
		r.nextGPU++
	}
	return out
}
