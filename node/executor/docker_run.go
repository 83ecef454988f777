package executor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/mira-market/mira/market"
)

// errEnded means the job's context ended before its container was
// made: the run's result says why, no error.
var errEnded = errors.New("run ended")

// Run implements Executor: prepare the container's config and the scratch
// dir, then run the container (start, wait, collect) under the disk watch.
func (d *Docker) Run(ctx context.Context, job *Job) (Result, error) {
	fail := Result{ExitCode: -1}
	rc, err := d.prepare(ctx, job)
	if errors.Is(err, errEnded) {
		return Result{ExitCode: -1, Reason: ctxReason(ctx)}, nil
	}
	if err != nil {
		return fail, err
	}
	// The disk watch stops the run through ctx, with its cause.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	disk, err := watchDisk(rc.dir, job.DiskQuota, stop, d.log.With("job", job.ID))
	if err != nil {
		return fail, fmt.Errorf("docker: %w", err)
	}
	defer disk.done()
	return d.runContainer(ctx, job, rc, disk)
}

// prepare checks the job against the provider's rules (an allowed image
// the name really names, without volumes; limits within the maximum) and
// hands the scratch dir to the container's user.
func (d *Docker) prepare(ctx context.Context, job *Job) (runConfig, error) {
	spec := job.Spec
	if spec.GetImage() == "" {
		return runConfig{}, errors.New("docker: job has no image")
	}
	if job.Dir == "" {
		return runConfig{}, errors.New("docker: job has no directory")
	}
	dir, err := filepath.Abs(job.Dir)
	if err != nil {
		return runConfig{}, fmt.Errorf("docker: job directory: %w", err)
	}
	if !market.ImageAllowed(d.opts.Images, spec.GetImage()) {
		return runConfig{}, fmt.Errorf("docker: %q: %w", spec.GetImage(), ErrImageNotAllowed)
	}
	mem, nanoCPUs, err := d.limits(spec)
	if err != nil {
		return runConfig{}, err
	}
	img, err := d.image(ctx, spec.GetImage())
	if err != nil {
		return runConfig{}, err
	}
	if err := d.handOver(dir); err != nil {
		return runConfig{}, err
	}
	return runConfig{dir: dir, image: img, memory: mem, nanoCPUs: nanoCPUs}, nil
}

// image returns the ID of the image name names; errEnded if ctx ended
// while the engine was asked.
func (d *Docker) image(ctx context.Context, name string) (string, error) {
	img, err := d.c.ImageInspect(ctx, name)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return "", fmt.Errorf("docker: %q: %w", name, ErrNoImage)
		}
		if ctx.Err() != nil {
			return "", errEnded
		}
		return "", fmt.Errorf("docker: inspect image %q: %w", name, err)
	}
	// The engine finds an image by a prefix of its ID too, when no image
	// has the name asked for: run only one that the name really names,
	// and by its ID, so that a tag moved since cannot swap it.
	if !namesImage(name, img.RepoTags, img.RepoDigests) {
		return "", fmt.Errorf("docker: %q: %w", name, ErrNoImage)
	}
	if vols := imageVolumes(img); len(vols) > 0 {
		return "", fmt.Errorf("docker: %q: %w: %s", name, ErrImageVolumes, strings.Join(vols, ", "))
	}
	return img.ID, nil
}

// runContainer creates, starts and waits for the job's container, and
// collects how it ended; a run that got to its end or was stopped takes
// the disk watch's reason.
func (d *Docker) runContainer(ctx context.Context, job *Job, rc runConfig, disk *diskWatch) (Result, error) {
	start := time.Now()
	clock := newOutputClock(start)
	id, err := d.create(ctx, job, rc)
	if err != nil {
		return d.failed(ctx, job, start, err)
	}
	// However the run ends, the container goes: with a context of its own,
	// since ctx may be what ended it.
	defer d.remove(id)

	copied, detach, err := d.attach(ctx, id, job, clock)
	if err != nil {
		return d.failed(ctx, job, start, err)
	}
	// No write to the job's writers after Run returns.
	defer detach()
	// Wait is registered before the start so that a fast exit is not missed.
	wait := d.c.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := d.c.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return d.failed(ctx, job, start, fmt.Errorf("docker: start: %w", err))
	}
	if err := job.Control.bind(containerPauser{d, id}); err != nil {
		d.log.Warn("docker: pause asked before the start not applied", "job", job.ID, "err", err)
	}

	peak := d.watchMemory(id)
	defer peak() // if the run ends before its exit

	var status int64
	select {
	case w := <-wait.Result:
		if w.Error != nil && w.Error.Message != "" {
			return d.failed(ctx, job, start, fmt.Errorf("docker: wait: %s", w.Error.Message))
		}
		status = w.StatusCode
	case err := <-wait.Error:
		return d.failed(ctx, job, start, fmt.Errorf("docker: wait: %w", err))
	case <-ctx.Done():
		// Killed at max_duration, for its disk or cancelled: often the
		// heaviest runs. A paused container is removed as it is.
		res, err := d.failed(ctx, job, start, ctx.Err())
		res.PeakMemory = peak()
		return diskReason(res, disk.done()), err
	}
	job.Control.End()
	res := Result{ExitCode: int32(status), Wall: job.Control.Active(start), PeakMemory: peak()}
	return diskReason(d.collect(job, id, res, copied, clock), disk.done()), nil
}

// attach streams the container's output to the job's writers until the
// container's output ends. detach closes the stream and waits for the
// copy to end; copied is closed when it has.
func (d *Docker) attach(ctx context.Context, id string, job *Job, clock *outputClock) (copied <-chan struct{}, detach func(), err error) {
	att, err := d.c.ContainerAttach(ctx, id, client.ContainerAttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		return nil, nil, fmt.Errorf("docker: attach: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := stdcopy.StdCopy(clock.wrap(job.Stdout), clock.wrap(job.Stderr), att.Reader); err != nil {
			d.log.Debug("docker: output stream", "job", job.ID, "err", err)
		}
	}()
	return done, func() {
		att.Close()
		<-done
	}, nil
}

// collect completes the result of a container that exited: when it first
// wrote, and whether the kernel's OOM killer ended it.
func (d *Docker) collect(job *Job, id string, res Result, copied <-chan struct{}, clock *outputClock) Result {
	// The output stream ends when the container has exited; give it a
	// moment to drain.
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
		d.log.Warn("docker: output did not end after exit", "job", job.ID)
	}
	// Output can reach us after the exit is reported; it was written before.
	res.FirstOutput = min(clock.firstOutput(), res.Wall)

	// The engine's OOMKilled flag is not reliable (it misses kills under
	// load, moby#38352, kubernetes#19825), so a SIGKILL that the executor
	// did not send (status 137) counts as the kernel's OOM killer too:
	// nothing inside a container can SIGKILL its init process.
	oom := res.ExitCode == 128+9
	if !oom {
		ictx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		in, err := d.c.ContainerInspect(ictx, id, client.ContainerInspectOptions{})
		oom = err == nil && in.Container.State != nil && in.Container.State.OOMKilled
	}
	if oom {
		res.ExitCode, res.Reason = -1, ReasonOOM
	}
	return res
}

// containerPauser pauses and resumes a job's container through the
// engine (the cgroup freezer: every process in it).
type containerPauser struct {
	d  *Docker
	id string
}

// pauseTimeout bounds one pause or unpause call to the engine.
const pauseTimeout = 10 * time.Second

func (p containerPauser) pause() error {
	ctx, cancel := context.WithTimeout(context.Background(), pauseTimeout)
	defer cancel()
	if _, err := p.d.c.ContainerPause(ctx, p.id, client.ContainerPauseOptions{}); err != nil {
		return p.ended(fmt.Errorf("docker: pause: %w", err))
	}
	return nil
}

func (p containerPauser) resume() error {
	ctx, cancel := context.WithTimeout(context.Background(), pauseTimeout)
	defer cancel()
	if _, err := p.d.c.ContainerUnpause(ctx, p.id, client.ContainerUnpauseOptions{}); err != nil {
		return p.ended(fmt.Errorf("docker: unpause: %w", err))
	}
	return nil
}

// ended is ErrEnded for a call that failed because the container exited
// (or is gone) meanwhile, else err.
func (p containerPauser) ended(err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), pauseTimeout)
	defer cancel()
	in, ierr := p.d.c.ContainerInspect(ctx, p.id, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(ierr) || ierr == nil && in.Container.State != nil && !in.Container.State.Running {
		return ErrEnded
	}
	return err
}
