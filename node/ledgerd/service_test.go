package ledgerd

import (
	"context"
	"testing"
	"time"
)

// A request to run's goroutine that is queued as the service stops is
// served: a call gets its answer (or hears that the loop has ended), and
// never waits for ever (a run's CheckHold asks for a chain lock so, and
// the market's Close waits for the run); a write is written. Run's select
// picks at random between the stop and a queued request, so the race is
// tried many times.
func TestRequestQueuedAtStop(t *testing.T) {
	for _, tc := range []struct {
		name string
		// request queues a request and returns a channel closed once it
		// has been served.
		request func(s *Service, p *writeProbe) <-chan struct{}
	}{
		{"a call returns", func(s *Service, _ *writeProbe) <-chan struct{} {
			served := make(chan struct{})
			go func() { s.call(func() {}); close(served) }()
			return served
		}},
		{"a write is written", func(s *Service, p *writeProbe) <-chan struct{} {
			s.enqueue(p.write("settle", 1, false, false))
			served := make(chan struct{})
			go func() {
				defer close(served)
				for b, _ := p.result("settle"); b < 0; b, _ = p.result("settle") {
					time.Sleep(time.Millisecond)
				}
			}()
			return served
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 40 {
				ctx, cancel := context.WithCancel(context.Background())
				s := newTestService(t, ctx)
				s.head.open("test", 0)
				hold := make(chan struct{})
				s.call(func() {})
				s.post(func() { <-hold }) // run is busy with this
				for len(s.ops) > 0 {
					time.Sleep(time.Millisecond) // until run has taken it
				}
				cancel()
				served := tc.request(s, newWriteProbe())
				for len(s.ops) == 0 {
					time.Sleep(time.Millisecond) // until the request is queued
				}
				close(hold)
				select {
				case <-served:
				case <-time.After(5 * time.Second):
					t.Fatal("a request queued as the service stopped was not served")
				}
				s.Close()
			}
		})
	}
}
