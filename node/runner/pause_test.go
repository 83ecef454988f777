package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/node/joblogs"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sampleDir != "" {
		os.RemoveAll(sampleDir)
	}
	os.Exit(code)
}

// sampleDir holds the sample program built for the host, for TestMain to
// remove.
var sampleDir string

// sampleBin builds the executor's sample program for this host, once.
var sampleBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "mira-runner-sample")
	if err != nil {
		return "", err
	}
	sampleDir = dir
	bin := filepath.Join(dir, "job")
	cmd := exec.Command("go", "build", "-tags", "mirasample", "-o", bin, "../executor/sample")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build sample: %v\n%s", err, out)
	}
	return bin, nil
})

// readers lets every requester read what it was allowed, in memory.
type readers struct {
	mu sync.Mutex
	m  map[string]peer.ID
}

func (r *readers) AllowReader(id string, p peer.ID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[id] = p
	return nil
}

func (r *readers) MayRead(id cid.Cid, p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[id.String()] == p
}

// logStore is the database's part of a log book, in memory.
type logStore struct {
	mu   sync.Mutex
	logs map[string][]byte
}

func (s *logStore) PutJobLog(name string, log []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs[name] = bytes.Clone(log)
	return nil
}

func (s *logStore) JobLog(name string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.logs[name]
	return b, ok, nil
}

// spanLog records what Config.OnPause heard.
type spanLog struct {
	mu    sync.Mutex
	spans []PausedSpan
}

func (l *spanLog) add(s PausedSpan) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spans = append(l.spans, s)
}

func (l *spanLog) get() []PausedSpan {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]PausedSpan(nil), l.spans...)
}

// newTestRunner is a runner of process, noop and wasm jobs on a real
// libp2p host, blob store and log book, with the given grace period.
func newTestRunner(t *testing.T, grace time.Duration, heard *spanLog) *Runner {
	t.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	dir := t.TempDir()
	store, err := blob.NewStore(filepath.Join(dir, "blobs"), blob.Options{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	book, err := joblogs.NewBook(joblogs.Config{Dir: filepath.Join(dir, "logs"), Store: &logStore{logs: map[string][]byte{}}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := New(ctx, Config{
		DataDir: dir, Executors: []string{"process", "noop", "wasm"},
		Blobs: blob.NewService(h, "test", store, log), Results: &readers{m: map[string]peer.ID{}}, Logs: book,
		LogStreams:  joblogs.NewStreams(joblogs.StreamsConfig{Host: h, Network: "test", Book: book, Log: log}),
		MaxBlobSize: 1 << 20, Log: log, PauseGrace: grace, OnPause: heard.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		r.Close()
	})
	return r
}

// bgRun is a lease running on a runner in the background.
type bgRun struct {
	l     *market.Lease
	dir   string // the job's scratch dir
	start time.Time
	done  chan struct{}
	end   time.Time
	out   market.Outcome
}

// startRun runs a lease of spec on r in the background.
func startRun(t *testing.T, r *Runner, spec *pb.JobSpec) *bgRun {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	requester, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	var job protocol.JobID
	rand.Read(job[:])
	l := &market.Lease{Job: job, Requester: requester, Spec: spec, Attempt: 1, Deadline: time.Now().Add(time.Minute)}
	b := &bgRun{l: l, dir: filepath.Join(r.cfg.DataDir, workDirName, fmt.Sprintf("%s.%d", job, 1), "job"), start: time.Now(), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		defer close(b.done)
		b.out = r.Run(ctx, l)
		b.end = time.Now()
	}()
	t.Cleanup(func() {
		cancel()
		<-b.done
	})
	return b
}

func (b *bgRun) wait(t *testing.T) market.Outcome {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not end")
	}
	t.Logf("outcome: exit %d, error %q, usage %v", b.out.ExitCode, b.out.Error, b.out.Usage)
	return b.out
}

// counter is what `sample count c` last wrote; -1 while none.
func (b *bgRun) counter() int {
	data, err := os.ReadFile(filepath.Join(b.dir, "c"))
	if err != nil || len(data) != 20 {
		return -1
	}
	n, err := strconv.Atoi(string(data))
	if err != nil {
		return -1
	}
	return n
}

// waitCount polls until the counter passes from.
func (b *bgRun) waitCount(t *testing.T, from int) int {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if n := b.counter(); n > from {
			return n
		}
		select {
		case <-b.done:
			t.Fatalf("run ended before the counter passed %d: exit %d error %q log %.300q", from, b.out.ExitCode, b.out.Error, b.out.Log)
		default:
		}
	}
	t.Fatalf("counter still at %d after 5s", b.counter())
	return 0
}

// holdsStill checks, for d (a window to observe), that the counter stands.
func (b *bgRun) holdsStill(t *testing.T, d time.Duration) int {
	t.Helper()
	first := b.counter()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if n := b.counter(); n != first {
			t.Fatalf("counter moved from %d to %d while paused", first, n)
		}
	}
	return first
}

func countSpec(t *testing.T) *pb.JobSpec {
	bin, err := sampleBin()
	if err != nil {
		t.Fatal(err)
	}
	return &pb.JobSpec{Executor: "process", Command: []string{bin}, Args: []string{"count", "c"}, MaxDurationMs: 60_000}
}

// wantHeard checks what OnPause heard of run b: an open then a closed
// span for each pause, in order, and returns the closed ones.
func wantHeard(t *testing.T, heard *spanLog, b *bgRun, pauses int) []executor.Span {
	t.Helper()
	var closed []executor.Span
	got := heard.get()
	if len(got) != 2*pauses {
		t.Fatalf("heard %d spans, want %d: %+v", len(got), 2*pauses, got)
	}
	for i, s := range got {
		if s.Job != b.l.Job || s.Attempt != b.l.Attempt || s.End.IsZero() != (i%2 == 0) {
			t.Fatalf("span %d: %+v (want it open: %v)", i, s, i%2 == 0)
		}
		if i%2 == 1 {
			if !s.Start.Equal(got[i-1].Start) || s.End.Before(s.Start) {
				t.Fatalf("span %d %+v does not close %+v", i, s, got[i-1])
			}
			closed = append(closed, s.Span)
		}
	}
	return closed
}

// wantUsage checks that the outcome's wall and GPU time leave out the
// paused spans: at most what the test saw, less them.
func wantUsage(t *testing.T, b *bgRun, spans []executor.Span) {
	t.Helper()
	seen := b.end.Sub(b.start)
	for _, s := range spans {
		seen -= s.End.Sub(s.Start)
	}
	u := b.out.Usage
	if u.GetWallMs() > seen.Milliseconds()+20 || u.GetGpuMs() != u.GetWallMs() {
		t.Errorf("usage %v: want wall (= GPU ms, one unit) at most %d ms, the run less its pauses", u, seen.Milliseconds())
	}
}

// A run paused and resumed through the runner: its counter stands while
// paused and goes on after; the calls are idempotent; the observer hears
// the span; Stop ends it with the given reason; its usage leaves the
// pause out; afterwards every call says it ended.
func TestRunnerPauseResumeStop(t *testing.T) {
	t.Parallel()
	heard := &spanLog{}
	r := newTestRunner(t, time.Minute, heard)
	b := startRun(t, r, countSpec(t))
	job, attempt := b.l.Job, b.l.Attempt
	b.waitCount(t, 1)
	for range 2 {
		if err := r.Pause(job, attempt); err != nil {
			t.Fatalf("Pause: %v", err)
		}
	}
	held := b.holdsStill(t, 300*time.Millisecond)
	if spans, err := r.PausedSpans(job, attempt); err != nil || len(spans) != 1 || !spans[0].End.IsZero() {
		t.Fatalf("PausedSpans: %v, %v; want one, open", spans, err)
	}
	for range 2 {
		if err := r.Resume(job, attempt); err != nil {
			t.Fatalf("Resume: %v", err)
		}
	}
	b.waitCount(t, held)
	for range 2 {
		if err := r.Stop(job, attempt, "stopped: test"); err != nil {
			t.Fatalf("Stop: %v", err)
		}
	}
	out := b.wait(t)
	if out.ExitCode != -1 || out.Error != "stopped: test" {
		t.Fatalf("outcome exit %d error %q, want the stop's reason", out.ExitCode, out.Error)
	}
	wantUsage(t, b, wantHeard(t, heard, b, 1))
	if err := r.Pause(job, attempt); !errors.Is(err, ErrRunEnded) {
		t.Errorf("Pause after the end: %v, want ErrRunEnded", err)
	}
	if err := r.Resume(job, attempt); !errors.Is(err, ErrRunEnded) {
		t.Errorf("Resume after the end: %v, want ErrRunEnded", err)
	}
	if err := r.Stop(job, attempt, ""); !errors.Is(err, ErrRunEnded) {
		t.Errorf("Stop after the end: %v, want ErrRunEnded", err)
	}
	if err := r.Pause(job, attempt+1); !errors.Is(err, ErrUnknownRun) {
		t.Errorf("Pause of another attempt: %v, want ErrUnknownRun", err)
	}
}

// A run left paused past the grace period is stopped, with a reason the
// requester sees; the paused span ends with it and is not usage.
func TestRunnerPauseGraceStops(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	heard := &spanLog{}
	r := newTestRunner(t, grace, heard)
	b := startRun(t, r, countSpec(t))
	b.waitCount(t, 0)
	if err := r.Pause(b.l.Job, b.l.Attempt); err != nil {
		t.Fatal(err)
	}
	out := b.wait(t)
	if out.ExitCode != -1 || out.Error != ReasonGraceExpired {
		t.Fatalf("outcome exit %d error %q, want %q", out.ExitCode, out.Error, ReasonGraceExpired)
	}
	spans := wantHeard(t, heard, b, 1)
	if d := spans[0].End.Sub(spans[0].Start); d < grace {
		t.Errorf("paused %v, stopped before the grace period of %v", d, grace)
	}
	wantUsage(t, b, spans)
	if err := r.Resume(b.l.Job, b.l.Attempt); !errors.Is(err, ErrRunEnded) {
		t.Errorf("Resume after the grace stop: %v, want ErrRunEnded", err)
	}
}

// Pause and Resume from many goroutines at once leave the run consistent:
// the observer hears open and closed spans alternate, and the run goes on
// once the last call is a Resume.
func TestRunnerPauseConcurrent(t *testing.T) {
	t.Parallel()
	heard := &spanLog{}
	r := newTestRunner(t, time.Minute, heard)
	b := startRun(t, r, countSpec(t))
	b.waitCount(t, 0)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 20 {
				call := r.Pause
				if i%2 == 1 {
					call = r.Resume
				}
				if err := call(b.l.Job, b.l.Attempt); err != nil {
					t.Errorf("call: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if err := r.Resume(b.l.Job, b.l.Attempt); err != nil {
		t.Fatal(err)
	}
	b.waitCount(t, b.counter())
	if err := r.Stop(b.l.Job, b.l.Attempt, ""); err != nil {
		t.Fatal(err)
	}
	if out := b.wait(t); out.Error != ReasonStopped {
		t.Errorf("error %q, want %q", out.Error, ReasonStopped)
	}
	got := heard.get()
	wantHeard(t, heard, b, len(got)/2)
}

// A wasm job cannot be paused: Pause says so and the run ends with the
// reason "cannot pause: stopped at interval".
func TestRunnerPauseWasmStops(t *testing.T) {
	t.Parallel()
	heard := &spanLog{}
	r := newTestRunner(t, time.Minute, heard)
	<-r.Warm()
	b := startRun(t, r, &pb.JobSpec{Executor: "wasm", Module: "sample", Args: []string{"count", "c"}, MaxDurationMs: 60_000})
	b.waitCount(t, 0)
	if err := r.Pause(b.l.Job, b.l.Attempt); !errors.Is(err, executor.ErrCannotPause) {
		t.Fatalf("Pause: %v, want ErrCannotPause", err)
	}
	if out := b.wait(t); out.ExitCode != -1 || out.Error != executor.ReasonStoppedAtInterval {
		t.Fatalf("outcome exit %d error %q, want %q", out.ExitCode, out.Error, executor.ReasonStoppedAtInterval)
	}
	if got := heard.get(); len(got) != 0 {
		t.Errorf("heard spans %+v of a job never paused", got)
	}
}

// max_duration does not run while a run is paused: a noop run of 300 ms
// of it, paused 400 ms, ends at its max_duration after 700 ms.
func TestRunnerMaxDurationExcludesPauses(t *testing.T) {
	t.Parallel()
	heard := &spanLog{}
	r := newTestRunner(t, time.Minute, heard)
	b := startRun(t, r, &pb.JobSpec{Executor: "noop", Args: []string{"1h"}, MaxDurationMs: 300})
	// Run has started once the run is known.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		err := r.Pause(b.l.Job, b.l.Attempt)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnknownRun) || time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	time.Sleep(400 * time.Millisecond) // the pause under test
	if err := r.Resume(b.l.Job, b.l.Attempt); err != nil {
		t.Fatalf("Resume: %v (ended while paused?)", err)
	}
	out := b.wait(t)
	if out.Error != executor.ReasonTimeout {
		t.Fatalf("error %q, want %q", out.Error, executor.ReasonTimeout)
	}
	if seen := b.end.Sub(b.start); seen < 700*time.Millisecond {
		t.Errorf("ended after %v: the pause counted against max_duration", seen)
	}
	wantUsage(t, b, wantHeard(t, heard, b, 1))
}
