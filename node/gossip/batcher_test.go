package gossip

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// published records what a Batcher publishes, and when.
type published struct {
	mu    sync.Mutex
	times []time.Time
	msgs  [][]byte
}

func (p *published) publish(_ context.Context, msg []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.times = append(p.times, time.Now())
	p.msgs = append(p.msgs, msg)
}

func (p *published) get() ([]time.Time, [][]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.times, p.msgs
}

// joined packs a batch into one message, its parts joined by commas.
func joined(batch [][]byte) [][]byte {
	if len(batch) == 0 {
		return nil
	}
	return [][]byte{bytes.Join(batch, []byte(","))}
}

// TestBatcher: messages queued within the delay of the first go out as
// one batch, the delay after the first; FlushAt cuts the wait short; no
// delay sends what is queued at once.
func TestBatcher(t *testing.T) {
	const delay = 100 * time.Millisecond
	type add struct {
		after time.Duration // since the previous add
		msg   string
	}
	for _, tc := range []struct {
		name    string
		delay   time.Duration
		flushAt int
		adds    []add
		want    []string
		wantAt  []time.Duration // since the start
	}{
		{"one batch within the delay", delay, 0, []add{{0, "a"}, {10 * time.Millisecond, "b"}, {80 * time.Millisecond, "c"}},
			[]string{"a,b,c"}, []time.Duration{delay}},
		{"a late one waits for the next", delay, 0, []add{{0, "a"}, {150 * time.Millisecond, "b"}},
			[]string{"a", "b"}, []time.Duration{delay, 150*time.Millisecond + delay}},
		{"full before the delay", delay, 2, []add{{0, "a"}, {10 * time.Millisecond, "b"}},
			[]string{"a,b"}, []time.Duration{10 * time.Millisecond}},
		{"no delay", 0, 0, []add{{0, "a"}, {10 * time.Millisecond, "b"}},
			[]string{"a", "b"}, []time.Duration{0, 10 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var p published
				b := NewBatcher(Config{Delay: tc.delay, FlushAt: tc.flushAt, Pack: joined, Publish: p.publish})
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan struct{})
				go func() { b.Run(ctx); close(done) }()
				start := time.Now()
				for _, a := range tc.adds {
					time.Sleep(a.after)
					b.Add(ctx, []byte(a.msg))
				}
				time.Sleep(time.Second)
				cancel()
				<-done
				times, msgs := p.get()
				if len(msgs) != len(tc.want) {
					t.Fatalf("published %q, want %q", msgs, tc.want)
				}
				for i := range msgs {
					if string(msgs[i]) != tc.want[i] || times[i].Sub(start) != tc.wantAt[i] {
						t.Errorf("message %d: %q after %v, want %q after %v", i, msgs[i], times[i].Sub(start), tc.want[i], tc.wantAt[i])
					}
				}
			})
		})
	}
}

// TestBatcherLimitBlocks: with a Limit, Add blocks while the queue is
// full, until the publisher takes it, or its context ends.
func TestBatcherLimitBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p published
		b := NewBatcher(Config{Limit: 2, Pack: joined, Publish: p.publish})
		b.Add(t.Context(), []byte("a"), []byte("b"))
		added := make(chan struct{})
		go func() { b.Add(t.Context(), []byte("c")); close(added) }()
		synctest.Wait()
		select {
		case <-added:
			t.Fatal("Add did not block on a full queue")
		default:
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go b.Run(ctx)
		<-added
		synctest.Wait()
		if _, msgs := p.get(); len(msgs) != 2 || string(msgs[0]) != "a,b" || string(msgs[1]) != "c" {
			t.Fatalf("published %q", msgs)
		}
		// A full queue that no one takes: Add gives up when ctx ends.
		b = NewBatcher(Config{Limit: 1, Pack: joined, Publish: p.publish})
		b.Add(t.Context(), []byte("d"))
		gone, give := context.WithCancel(t.Context())
		returned := make(chan struct{})
		go func() { b.Add(gone, []byte("e")); close(returned) }()
		synctest.Wait()
		give()
		<-returned
		if q := b.take(); len(q) != 1 {
			t.Fatalf("queued %q, want only d", q)
		}
	})
}
