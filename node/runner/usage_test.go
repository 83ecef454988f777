package runner

import (
	"testing"
	"time"
)

// A run's usage so far, as interim bills read it: it grows while the job
// runs, stands while it is paused, and the outcome's usage is never less
// than the last reading; a run the runner does not have has none.
func TestRunnerUsageSoFarLeavesPausesOut(t *testing.T) {
	t.Parallel()
	r := newTestRunner(t, time.Minute, &spanLog{})
	b := startRun(t, r, countSpec(t))
	job, attempt := b.l.Job, b.l.Attempt
	if _, ok := r.Usage(job, attempt+1); ok {
		t.Fatal("usage of a run the runner does not have")
	}
	b.waitCount(t, 1)
	first, ok := r.Usage(job, attempt)
	if !ok || first.WallMs <= 0 || first.GpuMs != first.WallMs {
		t.Fatalf("usage %v, %v: want some wall time, as many GPU-ms (one unit)", first, ok)
	}
	if err := r.Pause(job, attempt); err != nil {
		t.Fatal(err)
	}
	paused, _ := r.Usage(job, attempt)
	b.holdsStill(t, 200*time.Millisecond)
	if still, _ := r.Usage(job, attempt); still.WallMs != paused.WallMs {
		t.Fatalf("usage went from %d to %d ms while paused", paused.WallMs, still.WallMs)
	}
	if err := r.Resume(job, attempt); err != nil {
		t.Fatal(err)
	}
	last, _ := r.Usage(job, attempt)
	for deadline := time.Now().Add(5 * time.Second); last.WallMs <= paused.WallMs; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("usage %d ms 5 s after the resume, %d before", last.WallMs, paused.WallMs)
		}
		last, _ = r.Usage(job, attempt)
	}
	if err := r.Stop(job, attempt, "stopped: test"); err != nil {
		t.Fatal(err)
	}
	if out := b.wait(t); out.Usage.GetWallMs() < last.WallMs {
		t.Fatalf("outcome's usage %d ms, less than the %d ms read while it ran", out.Usage.GetWallMs(), last.WallMs)
	}
	if _, ok := r.Usage(job, attempt); ok {
		t.Fatal("usage of a run that ended")
	}
}
