package executor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/pb"
)

// bgJob is a job running on an executor in the background.
type bgJob struct {
	ctl    *Control
	dir    string
	stdout *syncBuffer
	cancel context.CancelCauseFunc
	start  time.Time
	done   chan struct{}
	end    time.Time // set once done is closed
	res    Result
	err    error
}

// startBgJob runs spec (args included) on e in the background with a
// Control; ctxFor, when set, wraps the run's context (a max_duration).
func startBgJob(t *testing.T, e Executor, spec *pb.JobSpec, module []byte, ctl *Control, ctxFor func(context.Context) context.Context) *bgJob {
	t.Helper()
	ctx, cancel := context.WithCancelCause(t.Context())
	if ctxFor != nil {
		ctx = ctxFor(ctx)
	}
	j := &bgJob{ctl: ctl, dir: t.TempDir(), stdout: &syncBuffer{}, cancel: cancel, start: time.Now(), done: make(chan struct{})}
	job := &Job{ID: "pause-" + randHex(t, 4), Spec: spec, Module: module, Dir: j.dir, Stdout: j.stdout, Stderr: &syncBuffer{}, Control: ctl}
	go func() {
		defer close(j.done)
		j.res, j.err = e.Run(ctx, job)
		j.end = time.Now()
	}()
	t.Cleanup(func() {
		cancel(nil)
		<-j.done
	})
	return j
}

// wait waits for the run to end (within 10s) and returns its result.
func (j *bgJob) wait(t *testing.T) Result {
	t.Helper()
	select {
	case <-j.done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not end")
	}
	if j.err != nil {
		t.Fatalf("Run: %v", j.err)
	}
	t.Logf("result %+v", j.res)
	return j.res
}

// counter is what `sample count c` wrote last in the job's dir; -1 while
// there is no complete count.
func (j *bgJob) counter() int {
	b, err := os.ReadFile(filepath.Join(j.dir, "c"))
	if err != nil || len(b) != 20 {
		return -1
	}
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return -1
	}
	return n
}

// waitCount polls until the counter passes from, and returns it.
func (j *bgJob) waitCount(t *testing.T, from int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if n := j.counter(); n > from {
			return n
		}
		select {
		case <-j.done:
			t.Fatalf("run ended before the counter passed %d: %+v %v", from, j.res, j.err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter still at %d after 5s", j.counter())
		}
	}
}

// holdsStill checks, for d (a window to observe, not a wait for
// something), that the counter does not move; it returns its value.
func (j *bgJob) holdsStill(t *testing.T, d time.Duration) int {
	t.Helper()
	first := j.counter()
	for end := time.Now().Add(d); time.Now().Before(end); {
		if n := j.counter(); n != first {
			t.Fatalf("counter moved from %d to %d while paused", first, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return first
}

// groupStates maps each process of process group pgid to its state
// letter (R, S, T, ...), from /proc.
func groupStates(t *testing.T, pgid int) map[int]byte {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	states := map[int]byte{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) STATE PPID PGRP ...; comm may hold spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			states[pid] = f[0][0]
		}
	}
	return states
}

// pauseExecutors are the executors that really pause: a counting job
// (`sample count c`) on each, and a check of its stopped state.
func pauseExecutors(t *testing.T) []struct {
	name    string
	exec    func(t *testing.T) Executor
	spec    func(t *testing.T) *pb.JobSpec
	stopped func(t *testing.T, j *bgJob) // checks the job is stopped, as far as the host can tell
} {
	bin := func(t *testing.T) string { return sampleBin(t) }
	process := func(t *testing.T) Executor { return NewProcess(ProcessOptions{}) }
	groupStopped := func(t *testing.T, j *bgJob) {
		t.Helper()
		pgid := firstPid(t, j.stdout.String())
		deadline := time.Now().Add(2 * time.Second)
		for {
			states := groupStates(t, pgid)
			stopped := len(states) >= 2
			for _, s := range states {
				stopped = stopped && s == 'T'
			}
			if stopped {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("process group %d not all stopped: %v", pgid, states)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return []struct {
		name    string
		exec    func(t *testing.T) Executor
		spec    func(t *testing.T) *pb.JobSpec
		stopped func(t *testing.T, j *bgJob)
	}{
		{
			name: "process",
			exec: process,
			spec: func(t *testing.T) *pb.JobSpec {
				return &pb.JobSpec{Executor: "process", Command: []string{bin(t)}, Args: []string{"count", "c"}}
			},
		},
		{
			// The counting is done by a child of the job's main process:
			// a pause of the main process alone would not stop it.
			name: "process, counted by a child",
			exec: process,
			spec: func(t *testing.T) *pb.JobSpec {
				return &pb.JobSpec{Executor: "process", Command: []string{"/bin/sh", "-c", `echo $$; "$0" count c & wait`, bin(t)}}
			},
			stopped: groupStopped,
		},
		{
			name: "docker",
			exec: func(t *testing.T) Executor { return newTestDocker(t, DockerOptions{}) },
			spec: func(*testing.T) *pb.JobSpec {
				return &pb.JobSpec{Executor: "docker", Image: testImage, Args: []string{"count", "c"}}
			},
		},
		{
			name: "noop", // no counter: a sleep that a pause lengthens
			exec: func(*testing.T) Executor { return Noop{} },
		},
	}
}

// A paused job makes no progress (its counter stands still, every process
// of it stopped) and goes on after a resume; the paused time is not in
// its Wall. Pause and Resume are idempotent, and refused once it ended.
func TestPauseResume(t *testing.T) {
	t.Parallel()
	for _, x := range pauseExecutors(t) {
		if x.spec == nil {
			continue
		}
		t.Run(x.name, func(t *testing.T) {
			t.Parallel()
			e := x.exec(t)
			ctl := NewControl()
			j := startBgJob(t, e, x.spec(t), nil, ctl, nil)
			n := j.waitCount(t, 1)

			if changed, err := ctl.Pause(); !changed || err != nil {
				t.Fatalf("Pause: changed %v, err %v", changed, err)
			}
			if changed, err := ctl.Pause(); changed || err != nil {
				t.Fatalf("second Pause: changed %v, err %v; want no change", changed, err)
			}
			if x.stopped != nil {
				x.stopped(t, j)
			}
			held := j.holdsStill(t, 300*time.Millisecond)
			if held < n {
				t.Fatalf("counter went back from %d to %d", n, held)
			}
			span, ok, err := ctl.Resume()
			if !ok || err != nil || span.End.Sub(span.Start) < 300*time.Millisecond {
				t.Fatalf("Resume: span %v, ok %v, err %v", span, ok, err)
			}
			if _, ok, err := ctl.Resume(); ok || err != nil {
				t.Fatalf("second Resume: ok %v, err %v; want no change", ok, err)
			}
			j.waitCount(t, held)
			j.cancel(nil)
			r := j.wait(t)
			wantExit(t, r, -1, ReasonCancelled)
			checkWall(t, j, r, span)
			if _, err := ctl.Pause(); !errors.Is(err, ErrEnded) {
				t.Errorf("Pause after the end: %v, want ErrEnded", err)
			}
			if _, _, err := ctl.Resume(); !errors.Is(err, ErrEnded) {
				t.Errorf("Resume after the end: %v, want ErrEnded", err)
			}
		})
	}
}

// checkWall checks that a run's Wall leaves out the paused span: at most
// the time the test saw it run less the span.
func checkWall(t *testing.T, j *bgJob, r Result, paused Span) {
	t.Helper()
	seen := j.end.Sub(j.start)
	pause := paused.End.Sub(paused.Start)
	if r.Wall <= 0 || r.Wall > seen-pause+20*time.Millisecond {
		t.Errorf("Wall %v: want at most %v (%v seen less %v paused)", r.Wall, seen-pause, seen, pause)
	}
}

// A pause asked before the job starts holds it from its start.
func TestPauseBeforeStart(t *testing.T) {
	t.Parallel()
	ctl := NewControl()
	ctl.Pause()
	spec := &pb.JobSpec{Executor: "process", Command: []string{sampleBin(t)}, Args: []string{"count", "c"}}
	j := startBgJob(t, NewProcess(ProcessOptions{}), spec, nil, ctl, nil)
	held := j.holdsStill(t, 300*time.Millisecond)
	if _, ok, err := ctl.Resume(); !ok || err != nil {
		t.Fatalf("Resume: ok %v, err %v", ok, err)
	}
	j.waitCount(t, held)
}

// max_duration counts the time a job runs, not the time it is paused: a
// job with 400 ms of it, paused 600 ms, ends at its 400 ms of running.
func TestMaxDurationExcludesPauses(t *testing.T) {
	t.Parallel()
	for _, x := range pauseExecutors(t) {
		if x.name == "docker" {
			continue // its create and start could take the budget: the clock is the same
		}
		t.Run(x.name, func(t *testing.T) {
			t.Parallel()
			const budget, pause = 400 * time.Millisecond, 600 * time.Millisecond
			spec := &pb.JobSpec{Executor: "noop", Args: []string{"1h"}}
			if x.spec != nil {
				spec = x.spec(t)
			}
			ctl := NewControl()
			j := startBgJob(t, x.exec(t), spec, nil, ctl, func(ctx context.Context) context.Context {
				ctx, cancel := ctl.WithActiveTimeout(ctx, budget)
				t.Cleanup(cancel)
				return ctx
			})
			if x.spec != nil {
				j.waitCount(t, 0)
			}
			ctl.Pause()
			time.Sleep(pause) // the pause under test
			span, _, err := ctl.Resume()
			if err != nil {
				t.Fatalf("Resume: %v (the run ended during its pause? %+v)", err, j.res)
			}
			r := j.wait(t)
			wantExit(t, r, -1, ReasonTimeout)
			// The budget starts counting as the context is made, a
			// moment before j.start is read: allow that moment.
			if seen := j.end.Sub(j.start); seen < budget+pause-10*time.Millisecond {
				t.Errorf("ended after %v, before its %v of running and %v of pause", seen, budget, pause)
			}
			if r.Wall > budget+50*time.Millisecond {
				t.Errorf("Wall %v, want about %v", r.Wall, budget)
			}
			checkWall(t, j, r, span)
		})
	}
}

// A noop run's sleep stops while it is paused: it ends later, its Wall
// the sleep's.
func TestNoopPause(t *testing.T) {
	t.Parallel()
	ctl := NewControl()
	j := startBgJob(t, Noop{}, &pb.JobSpec{Executor: "noop", Args: []string{"300ms"}}, nil, ctl, nil)
	ctl.Pause()
	time.Sleep(400 * time.Millisecond) // the pause under test
	span, _, _ := ctl.Resume()
	r := j.wait(t)
	wantOK(t, r)
	if seen := j.end.Sub(j.start); seen < 700*time.Millisecond {
		t.Errorf("ended after %v: the pause did not hold its sleep", seen)
	}
	checkWall(t, j, r, span)
}

// A paused job that is stopped (a context cancelled with a StopError)
// ends at once with the stop's reason, and leaves nothing running.
func TestStopWhilePaused(t *testing.T) {
	t.Parallel()
	for _, x := range pauseExecutors(t) {
		if x.spec == nil {
			continue
		}
		t.Run(x.name, func(t *testing.T) {
			t.Parallel()
			e := x.exec(t)
			ctl := NewControl()
			spec := x.spec(t)
			j := startBgJob(t, e, spec, nil, ctl, nil)
			j.waitCount(t, 0)
			if _, err := ctl.Pause(); err != nil {
				t.Fatal(err)
			}
			const why = "stopped: usage receipts not countersigned within grace"
			j.cancel(&StopError{Reason: why})
			r := j.wait(t)
			wantExit(t, r, -1, why)
			spans := ctl.Spans()
			if len(spans) != 1 || spans[0].End.IsZero() {
				t.Fatalf("spans %v: want the one pause, ended with the run", spans)
			}
			checkWall(t, j, r, spans[0])
			j.holdsStill(t, 100*time.Millisecond)
			if x.stopped != nil { // the group is gone
				waitGone(t, firstPid(t, j.stdout.String()), 2*time.Second)
			}
		})
	}
}

// wazero cannot suspend a guest: a pause stops it, with a reason that
// says so, whether asked while it runs or before it starts.
func TestWasmPauseStopsAtInterval(t *testing.T) {
	t.Parallel()
	w, mod := sharedWasm(t)
	for _, before := range []bool{false, true} {
		t.Run("before start "+strconv.FormatBool(before), func(t *testing.T) {
			t.Parallel()
			ctl := NewControl()
			if before {
				ctl.Pause()
			}
			j := startBgJob(t, w, &pb.JobSpec{Executor: "wasm", Args: []string{"count", "c"}}, mod, ctl, nil)
			if !before {
				j.waitCount(t, 1)
				if _, err := ctl.Pause(); !errors.Is(err, ErrCannotPause) {
					t.Fatalf("Pause: %v, want ErrCannotPause", err)
				}
			}
			r := j.wait(t)
			wantExit(t, r, -1, ReasonStoppedAtInterval)
			if _, err := ctl.Pause(); !errors.Is(err, ErrEnded) {
				t.Errorf("Pause after the stop: %v, want ErrEnded", err)
			}
			if spans := ctl.Spans(); len(spans) > 0 && spans[len(spans)-1].End.IsZero() {
				t.Errorf("spans %v: a pause still open after the run", spans)
			}
		})
	}
}
