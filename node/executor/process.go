package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ProcessOptions configures the process executor. The zero value is
// usable.
type ProcessOptions struct {
	// MaxMemoryMib is the most memory (RLIMIT_AS) a job may ask for
	// (ErrOverLimit beyond), and what a job that asks none gets; the
	// host's total memory when zero.
	MaxMemoryMib uint32
	// OutputGrace is how long output from processes that escaped the job's
	// process group is still read after the job ended; 2s when zero.
	OutputGrace time.Duration
	// Logger receives debug logs; none when nil.
	Logger *slog.Logger
}

// Process runs jobs as host processes: spec.command[0] with the rest of
// spec.command and then spec.args as arguments, in job.Dir. It is no
// sandbox, only for operators who trust their requesters (a private
// network).
//
// The process's environment is the spec's env, but for the GPU device
// lists, which name the job's GPUs (host indices) or none (see
// processEnv): CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES. A command without a
// slash is looked up in the spec's PATH when it gives one, else in the
// node's. The job runs in a process group of its own; when its main process
// exits, or ctx is done, the whole group is killed (SIGKILL), so nothing it
// started outlives it. A job's memory is limited with RLIMIT_AS (address
// space, which is more than resident memory: some runtimes reserve a lot
// of it): resources.memory_mib, or the provider's maximum for a job that
// asks none (a GPU job that asks none has none: GPU runtimes reserve more
// address space than the host has memory), set right after the start, so inherited by every process it
// starts later; memory the first process allocated in the instant before
// is not undone. PeakMemory is the maximum resident set size (getrusage) of
// the main process or of the largest of the children it waited for; Linux
// counts the node's own RSS at fork in it (the high-water mark survives
// exec), so for small jobs it is the node's size, an upper bound.
//
// With a job.DiskQuota, RLIMIT_FSIZE (set like RLIMIT_AS) keeps any file
// the job writes, anywhere, below the quota, and a watcher measures
// job.Dir (see diskWatch) and kills the group once it holds more than the
// quota beyond its inputs: the run fails with ReasonDiskQuota; RLIMIT_NOFILE
// (jobNoFile) bounds the files unlinked while open that the walk cannot
// see. What the job writes outside its dir is not counted: a process is
// no sandbox.
type Process struct {
	opts ProcessOptions
	log  *slog.Logger
}

var _ Executor = (*Process)(nil)

// NewProcess returns a process executor.
func NewProcess(opts ProcessOptions) *Process {
	if opts.OutputGrace == 0 {
		opts.OutputGrace = 2 * time.Second
	}
	if opts.MaxMemoryMib == 0 {
		opts.MaxMemoryMib = hostMemoryMib()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Process{opts: opts, log: log}
}

// Name implements Executor.
func (*Process) Name() string { return "process" }

// Run implements Executor: prepare the command, start it under the disk
// watch, wait for it (its process group is killed when ctx ends) and
// collect its result.
func (p *Process) Run(ctx context.Context, job *Job) (Result, error) {
	fail := Result{ExitCode: -1}
	cmd, err := p.prepare(job)
	if err != nil {
		return fail, err
	}
	if ctx.Err() != nil {
		return Result{ExitCode: -1, Reason: ctxReason(ctx)}, nil
	}
	// The disk watch stops the run through ctx, with its cause.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	disk, err := watchDisk(job.Dir, job.DiskQuota, stop, p.log.With("job", job.ID))
	if err != nil {
		return fail, fmt.Errorf("process: %w", err)
	}
	defer disk.done()
	run, err := p.start(job, cmd)
	if err != nil {
		return fail, err
	}
	killed, werr := p.wait(ctx, run)
	res, err := p.collect(ctx, job, run, killed, werr)
	if err != nil {
		return res, err
	}
	return diskReason(res, disk.done()), nil
}

// prepare checks the job (a command, a scratch dir, memory within the
// maximum) and makes its command: only the spec's environment, the binary
// found on the spec's PATH, in its own process group.
func (p *Process) prepare(job *Job) (*exec.Cmd, error) {
	spec := job.Spec
	argv := append(append([]string(nil), spec.GetCommand()...), spec.GetArgs()...)
	if len(spec.GetCommand()) == 0 || argv[0] == "" {
		return nil, errors.New("process: job has no command")
	}
	if job.Dir == "" {
		return nil, errors.New("process: job has no directory")
	}
	// The device lists are the executor's, not the spec's: a host
	// process would otherwise see every GPU of the machine.
	env := processEnv(spec.GetEnv(), job.GPUs)
	pathEnv, hasPath := "", false
	for _, e := range spec.GetEnv() {
		if e.GetName() == "PATH" {
			pathEnv, hasPath = e.GetValue(), true
		}
	}
	if m := spec.GetResources().GetMemoryMib(); m > p.opts.MaxMemoryMib {
		return nil, fmt.Errorf("process: memory_mib %d: %w of %d", m, ErrOverLimit, p.opts.MaxMemoryMib)
	}
	bin, err := lookPath(argv[0], pathEnv, hasPath)
	if err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	return &exec.Cmd{Path: bin, Args: argv, Env: env, Dir: job.Dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}, nil
}

// processRun is a started job process and the copies of its output.
type processRun struct {
	cmd        *exec.Cmd
	pid        int
	start      time.Time
	wall       time.Duration // set by wait
	clock      *outputClock
	outR, errR *os.File
	copies     sync.WaitGroup
}

// start starts cmd with its output copied to the job's writers, and
// applies the job's limits to the process.
func (p *Process) start(job *Job, cmd *exec.Cmd) (*processRun, error) {
	// The job writes into pipes of our own rather than those of os/exec,
	// so that Wait returns when the main process exits even if something
	// it started holds the pipes open.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("process: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	run := &processRun{cmd: cmd, start: time.Now(), outR: outR, errR: errR}
	run.clock = newOutputClock(run.start)
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("process: start: %w", err)
	}
	run.pid = cmd.Process.Pid
	for _, c := range []struct {
		r *os.File
		w io.Writer
	}{{outR, job.Stdout}, {errR, job.Stderr}} {
		run.copies.Go(func() {
			io.Copy(run.clock.wrap(c.w), c.r)
		})
	}
	p.limit(job, run.pid)
	return run, nil
}

// limit applies the job's memory and disk limits to the process pid.
func (p *Process) limit(job *Job, pid int) {
	if as, ok := p.addressSpace(job); ok {
		lim := &unix.Rlimit{Cur: as, Max: as}
		if err := unix.Prlimit(pid, unix.RLIMIT_AS, lim, nil); err != nil {
			p.log.Warn("process: memory limit not applied", "job", job.ID, "err", err)
		}
	}
	if job.DiskQuota > 0 {
		// No file it writes, in its dir or elsewhere, may grow past the
		// quota; the watch counts the dir as a whole.
		lim := &unix.Rlimit{Cur: fsizeLimit(job.DiskQuota), Max: fsizeLimit(job.DiskQuota)}
		if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, lim, nil); err != nil {
			p.log.Warn("process: file size limit not applied", "job", job.ID, "err", err)
		}
		// Files unlinked while open escape the watch: bound how many.
		if err := setNoFile(pid); err != nil {
			p.log.Warn("process: open files limit not applied", "job", job.ID, "err", err)
		}
	}
}

// wait waits for the main process to exit, killing its group when ctx
// ends first, and then whatever it left running. It reports whether ctx
// killed it, and Wait's error.
func (p *Process) wait(ctx context.Context, run *processRun) (killed bool, err error) {
	// On ctx done, kill the group; Wait then returns.
	waited := make(chan struct{})
	killedByCtx := make(chan bool, 1)
	go func() {
		select {
		case <-ctx.Done():
			p.killGroup(run.pid)
			killedByCtx <- true
		case <-waited:
			killedByCtx <- false
		}
	}()
	werr := run.cmd.Wait()
	close(waited)
	run.wall = time.Since(run.start)
	// Whatever the main process left running goes with it.
	p.killGroup(run.pid)
	return <-killedByCtx, werr
}

// collect reads what is left of the output and makes the run's result.
func (p *Process) collect(ctx context.Context, job *Job, run *processRun, killed bool, werr error) (Result, error) {
	// Read what is left in the pipes. Processes that left the group could
	// hold them open: stop reading after a grace period.
	copied := make(chan struct{})
	go func() { run.copies.Wait(); close(copied) }()
	select {
	case <-copied:
	case <-time.After(p.opts.OutputGrace):
		p.log.Warn("process: output still open after the job ended", "job", job.ID)
		run.outR.Close()
		run.errR.Close()
		<-copied
	}
	run.outR.Close()
	run.errR.Close()

	// Output read after the exit was written before it.
	res := Result{Wall: run.wall, FirstOutput: min(run.clock.firstOutput(), run.wall)}
	if ps := run.cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok && ru != nil {
			res.PeakMemory = uint64(ru.Maxrss) * 1024
		}
		res.ExitCode = int32(ps.ExitCode()) // -1 when killed by a signal
	}
	var exitErr *exec.ExitError
	switch {
	case killed:
		res.ExitCode, res.Reason = -1, ctxReason(ctx)
	case werr != nil && !errors.As(werr, &exitErr):
		return Result{ExitCode: -1}, fmt.Errorf("process: wait: %w", werr)
	case res.ExitCode == -1:
		if ws, ok := run.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Reason = "killed by signal " + ws.Signal().String()
		}
	}
	return res, nil
}

// addressSpace is the RLIMIT_AS of job's processes in bytes: what it
// asks, else the provider's maximum; ok is false for none. GPU runtimes
// reserve far more address space than there is memory (CUDA's cuInit
// fails under a limit near the host's RAM): a GPU job that asks no memory
// gets no limit.
func (p *Process) addressSpace(job *Job) (limit uint64, ok bool) {
	if m := job.Spec.GetResources().GetMemoryMib(); m > 0 {
		return uint64(m) << 20, true
	}
	if len(job.GPUs) > 0 {
		return 0, false
	}
	return uint64(p.opts.MaxMemoryMib) << 20, true
}

// setNoFile lowers the RLIMIT_NOFILE of process pid to jobNoFile (or to
// its hard limit, if that is lower: only root may raise it).
func setNoFile(pid int) error {
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		return err
	}
	n := min(uint64(jobNoFile), old.Max)
	return unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}, nil)
}

// killGroup sends SIGKILL to the process group pgid.
func (p *Process) killGroup(pgid int) {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.log.Warn("process: kill group", "pgid", pgid, "err", err)
	}
}

// lookPath finds the executable name: as is when it has a slash (a
// relative one is relative to the job's directory), else in path when the
// job gave a PATH, else in the node's PATH.
func lookPath(name, path string, hasPath bool) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	if !hasPath {
		return exec.LookPath(name)
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue // a relative PATH entry would depend on the node's cwd
		}
		f := filepath.Join(dir, name)
		if fi, err := os.Stat(f); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return f, nil
		}
	}
	return "", fmt.Errorf("%q not found in the job's PATH", name)
}
