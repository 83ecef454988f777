package ledgerd

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
)

// writeProbe makes writes that write nothing and record what became of
// them: the batch that computed each, and when each was done or failed.
type writeProbe struct {
	start time.Time

	mu      sync.Mutex
	batches []*batch
	batchOf map[string]int // write → index in batches
	doneAt  map[string]time.Duration
	failed  map[string]error
}

func newWriteProbe() *writeProbe {
	return &writeProbe{start: time.Now(), batchOf: map[string]int{}, doneAt: map[string]time.Duration{}, failed: map[string]error{}}
}

// write returns a write named name about job.
func (p *writeProbe) write(name string, job byte, urgent, sends bool) *ledgerWrite {
	return &ledgerWrite{
		jobs: []protocol.JobID{{job}}, urgent: urgent, sends: sends,
		bodies: func(b *batch) []ledger.Body {
			p.mu.Lock()
			defer p.mu.Unlock()
			i := slices.Index(p.batches, b)
			if i < 0 {
				i = len(p.batches)
				p.batches = append(p.batches, b)
			}
			p.batchOf[name] = i
			return nil
		},
		done: func([]*ledger.Entry, []error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.doneAt[name] = time.Since(p.start)
		},
		fail: func(err error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.failed[name] = err
		},
	}
}

// result returns each write's batch index and when it was done (-1 and
// -1 if it was not written).
func (p *writeProbe) result(name string) (int, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.batchOf[name]
	at, done := p.doneAt[name]
	if !ok || !done {
		return -1, -1
	}
	return b, at
}

// sending reports whether a write that sends is pending.
func sending(s *Service) bool {
	pending := false
	s.call(func() { pending = s.st.writer.sends > 0 })
	return pending
}

// newTestService returns a running service over an in-memory ledger,
// without a host: its writer and its loop, no gossip, no peers.
func newTestService(t *testing.T, ctx context.Context) *Service {
	t.Helper()
	db, err := storage.Open("", storage.Options{Network: "net", InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s := newService(ctx, Config{Network: "net", Genesis: &ledger.Genesis{Network: "net"}, ReconcileSymbols: 256},
		Deps{DB: db, Log: slog.New(slog.DiscardHandler)}, "self")
	if err := s.open(); err != nil {
		t.Fatal(err)
	}
	s.start()
	return s
}

// TestWriterBatches: writes that send nothing wait lazyWrite for company
// and go together; an urgent one (or one that sends) goes at once and
// takes the waiting ones along; a write about a job already in the batch
// goes in the next; and nothing goes before the head is confirmed.
func TestWriterBatches(t *testing.T) {
	type queued struct {
		after         time.Duration // since the previous
		name          string
		job           byte
		urgent, sends bool
	}
	type outcome struct {
		batch int
		at    time.Duration
	}
	for _, tc := range []struct {
		name     string
		openAt   time.Duration // when the head opens
		writes   []queued
		outcomes map[string]outcome
	}{
		{"lazy writes share a sync", 0,
			[]queued{{0, "a", 1, false, false}, {50 * time.Millisecond, "b", 2, false, false}},
			map[string]outcome{"a": {0, lazyWrite}, "b": {0, lazyWrite}}},
		{"an urgent write takes the lazy ones along", 0,
			[]queued{{0, "a", 1, false, false}, {10 * time.Millisecond, "b", 2, true, false}},
			map[string]outcome{"a": {0, 10 * time.Millisecond}, "b": {0, 10 * time.Millisecond}}},
		{"a write that sends goes at once", 0,
			[]queued{{0, "award", 1, false, true}},
			map[string]outcome{"award": {0, 0}}},
		{"the same job in the next batch", 0,
			[]queued{{0, "a", 1, true, false}, {0, "b", 1, true, false}, {0, "c", 2, true, false}},
			map[string]outcome{"a": {0, 0}, "b": {1, 0}, "c": {1, 0}}},
		{"nothing before the head is confirmed", time.Second,
			[]queued{{0, "a", 1, false, false}, {0, "b", 2, true, false}},
			map[string]outcome{"a": {0, time.Second}, "b": {0, time.Second}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				s := newTestService(t, ctx)
				p := newWriteProbe()
				if tc.openAt == 0 {
					s.head.open("test", 0)
				} else {
					time.AfterFunc(tc.openAt, func() { s.head.open("test", 0) })
				}
				for _, q := range tc.writes {
					time.Sleep(q.after)
					s.enqueue(p.write(q.name, q.job, q.urgent, q.sends))
				}
				time.Sleep(2 * time.Second)
				for name, want := range tc.outcomes {
					if b, at := p.result(name); b != want.batch || at != want.at {
						t.Errorf("%s: batch %d after %v, want batch %d after %v", name, b, at, want.batch, want.at)
					}
				}
				if sending(s) {
					t.Error("a write that sends is still pending")
				}
			})
		})
	}
}

// TestWriterHeadStalled: once confirming the head has outlasted
// head_wait, writes that send fail with the reason, while the others wait
// for the head; when the service stops, what it has not confirmed is not
// written.
func TestWriterHeadStalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		s := newTestService(t, ctx)
		p := newWriteProbe()
		s.enqueue(p.write("settle", 1, false, false))
		s.enqueue(p.write("award", 2, false, true))
		synctest.Wait()
		if !sending(s) {
			t.Fatal("the award is not pending")
		}
		s.head.stall()
		synctest.Wait()
		p.mu.Lock()
		err := p.failed["award"]
		p.mu.Unlock()
		if !errors.Is(err, errHeadUnconfirmed) {
			t.Fatalf("award failed with %v, want the head's error", err)
		}
		if sending(s) {
			t.Fatal("the failed award is still pending")
		}
		cancel()
		s.Close()
		if b, _ := p.result("settle"); b >= 0 {
			t.Fatal("a write was signed before the head was confirmed")
		}
	})
}

// TestWriterStopping: a service that stops writes the records it has
// queued at once, but not the writes that would send messages.
func TestWriterStopping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		s := newTestService(t, ctx)
		s.head.open("test", 0)
		p := newWriteProbe()
		slow := p.write("slow", 1, true, false)
		release := make(chan struct{})
		done := slow.done
		slow.done = func(es []*ledger.Entry, errs []error) { <-release; done(es, errs) }
		s.enqueue(slow)
		synctest.Wait() // slow is being written
		s.enqueue(p.write("award", 2, false, true))
		s.enqueue(p.write("settle", 3, false, false))
		synctest.Wait() // both queued behind it
		cancel()
		synctest.Wait() // the loop knows it stops
		close(release)
		s.Close()
		if b, at := p.result("settle"); b != 1 || at != 0 {
			t.Errorf("the settlement: batch %d after %v, want batch 1 at once", b, at)
		}
		if b, _ := p.result("award"); b >= 0 {
			t.Error("the award's hold was written after the stop")
		}
	})
}
