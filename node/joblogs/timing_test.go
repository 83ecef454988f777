package joblogs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
)

// These tests run in synctest bubbles: the delays are the bubble's fake
// time, so they take no wall time, and an offset checked is exact.

func newTestBook(t *testing.T) *Book {
	t.Helper()
	b, err := NewBook(Config{Dir: t.TempDir(), Store: &mapLogStore{logs: map[string][]byte{}}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unreachableHost is a host whose streams never open; it records when
// they were tried.
type unreachableHost struct {
	host.Host
	mu    sync.Mutex
	tries []time.Time
}

func (h *unreachableHost) NewStream(context.Context, peer.ID, ...libp2pproto.ID) (network.Stream, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tries = append(h.tries, time.Now())
	return nil, errors.New("no route to the requester")
}

// triedAt returns the stream attempts as offsets from start.
func (h *unreachableHost) triedAt(start time.Time) []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	var at []time.Duration
	for _, t := range h.tries {
		at = append(at, t.Sub(start))
	}
	return at
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A provider streams a run's log StreamDelay after its first output, or
// at once when it outgrows the result; a run that ends sooner with a
// small log sends none (it goes in the result). A stream that cannot
// open is tried again after 100 ms, doubling up to 5 s.
func TestLogStreamDelayAndBackoff(t *testing.T) {
	const ms = time.Millisecond
	backoff := []time.Duration{0, 100 * ms, 300 * ms, 700 * ms, 1500 * ms, 3100 * ms, 6300 * ms, 11300 * ms, 16300 * ms}
	after := func(first time.Duration) []time.Duration {
		var at []time.Duration
		for _, d := range backoff {
			at = append(at, first+d)
		}
		return at
	}
	for _, tc := range []struct {
		name      string
		output    int           // bytes written at the start
		finishAt  time.Duration // the run ends then; 0: it goes on
		wantTries []time.Duration
		wantRoute Way // what the result then finds taken (0: nothing)
	}{
		{"short run", 10, 50 * ms, nil, InResult},
		{"long run", 10, 0, after(StreamDelay), Streamed},
		{"ends just after the delay", 10, StreamDelay + ms, after(StreamDelay), Streamed},
		{"large output", protocol.MaxResultLog + 1, 0, after(0), Streamed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				h := &unreachableHost{}
				s := NewStreams(StreamsConfig{Host: h, Network: "logtest", Log: slog.New(slog.DiscardHandler)})
				var job protocol.JobID
				l, err := newTestBook(t).Get(job, 1)
				if err != nil {
					t.Fatal(err)
				}
				l.Write(bytes.Repeat([]byte("x"), tc.output))
				ctx, cancel := context.WithCancel(context.Background())
				var route Route
				sent := make(chan struct{})
				go func() {
					s.Send(ctx, "requester", job, 1, l, &route)
					close(sent)
				}()
				if tc.finishAt > 0 {
					time.Sleep(tc.finishAt)
					l.FinishUnless(func([]byte) bool { return route.Take(InResult) })
				}
				time.Sleep(20*time.Second - tc.finishAt)
				synctest.Wait()
				if got := h.triedAt(start); !equalDurations(got, tc.wantTries) {
					t.Errorf("streams tried at %v, want %v", got, tc.wantTries)
				}
				if route.Take(InResult) != (tc.wantRoute == InResult) {
					t.Errorf("route: want %v", tc.wantRoute)
				}
				cancel()
				<-sent
			})
		})
	}
}

// fakeJobs is a job in the market, running; closing ended is the market
// telling the follower the job has ended.
type fakeJobs struct {
	job   market.Job
	ended chan market.Job
}

func (j *fakeJobs) Job(context.Context, protocol.JobID) (market.Job, error) { return j.job, nil }

func (j *fakeJobs) WatchJob(context.Context, protocol.JobID) (<-chan market.Job, error) {
	return j.ended, nil
}

// A follower of a job's log reads as it grows and stops linger after the
// job ended, with the provider's last bytes, and not before.
func TestFollowLingersAfterTheJobEnded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBook(t)
		var job protocol.JobID
		jobs := &fakeJobs{job: market.Job{ID: job, State: market.Running, Attempt: 1}, ended: make(chan market.Job)}
		l, err := b.Get(job, 1)
		if err != nil {
			t.Fatal(err)
		}
		l.Write([]byte("started;"))
		var mu sync.Mutex
		var got []byte
		read := func() string {
			mu.Lock()
			defer mu.Unlock()
			return string(got)
		}
		done := make(chan error, 1)
		go func() {
			done <- b.Read(context.Background(), jobs, job, true, func(p []byte) error {
				mu.Lock()
				got = append(got, p...)
				mu.Unlock()
				return nil
			})
		}()
		synctest.Wait()
		if read() != "started;" {
			t.Fatalf("followed %q", read())
		}
		time.Sleep(time.Second)
		close(jobs.ended)
		time.Sleep(linger - time.Nanosecond)
		l.Write([]byte("last bytes"))
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("the follower stopped before the linger ended: %v", err)
		default:
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil || read() != "started;last bytes" {
				t.Fatalf("followed %q, %v; want every byte and no error", read(), err)
			}
		default:
			t.Fatal("the follower did not stop when the linger ended")
		}
	})
}
