package marketd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol/pb"
)

// A full outbox gives a new peer the place of its least recently used idle
// queue; with none idle, it admits only business, and that within a bound.
func TestOutboxAdmission(t *testing.T) {
	const places = 3
	o := &outbox{peers: map[peer.ID]*peerQueue{}, maxPeers: places}
	queues := map[peer.ID]*peerQueue{}
	for i, used := range []uint64{5, 2, 9} {
		p := peer.ID(fmt.Sprint("peer", i))
		q := o.admit(p, false)
		if q == nil {
			t.Fatalf("no place for peer %d of %d", i, places)
		}
		q.used = used
		queues[p] = q
	}
	// All idle: the least recently used (peer1) makes room.
	if o.admit("new", false) == nil {
		t.Fatal("a new peer found no place among idle queues")
	}
	if _, ok := o.peers["peer1"]; ok || len(o.peers) != places {
		t.Fatalf("peer1 kept its place; %d queues", len(o.peers))
	}
	select {
	case <-queues["peer1"].gone:
	default:
		t.Fatal("the evicted queue's goroutine was not told to end")
	}
	// None idle (one writing, the rest with messages waiting): a bid or a
	// decline to a new peer is refused, business is admitted past the
	// bound, up to maxBusinessPeers more.
	for _, q := range o.peers {
		q.msgs = [][]byte{{1}}
	}
	o.peers["new"].msgs, o.peers["new"].busy = nil, true
	if o.admit("stranger", false) != nil {
		t.Fatal("a peer with no business got a place with no queue idle")
	}
	for i := range maxBusinessPeers {
		q := o.admit(peer.ID(fmt.Sprint("lessee", i)), true)
		if q == nil {
			t.Fatalf("business with peer %d refused", i)
		}
		q.msgs = [][]byte{{1}} // as send queues it
	}
	if o.admit("one too many", true) != nil || len(o.peers) != places+maxBusinessPeers {
		t.Fatalf("%d queues, want at most %d", len(o.peers), places+maxBusinessPeers)
	}
}

func TestIsBusiness(t *testing.T) {
	for _, tc := range []struct {
		msg  *pb.MarketMessage
		want bool
	}{
		{&pb.MarketMessage{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{}}}, false},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{}}}, false},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Accept{Accept: &pb.Accept{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Heartbeat{Heartbeat: &pb.Heartbeat{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Result{Result: &pb.Result{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{}}}, true},
	} {
		if got := isBusiness(tc.msg); got != tc.want {
			t.Errorf("isBusiness(%T) = %v, want %v", tc.msg.Body, got, tc.want)
		}
	}
}

// fakeStream is a market stream that records what is written to it.
type fakeStream struct {
	mu     sync.Mutex
	writes int
	closed bool
}

func (s *fakeStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return len(p), nil
}
func (s *fakeStream) SetWriteDeadline(time.Time) error { return nil }
func (s *fakeStream) Reset() error                     { return s.Close() }
func (s *fakeStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *fakeStream) state() (writes int, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes, s.closed
}

// A peer's stream stays open while messages keep coming, however long
// that goes on, and is closed (its queue retired) once it has been idle
// for outboxIdle. In a synctest bubble: the outbox's clock is the
// bubble's, and time passes only when every goroutine waits.
func TestOutboxIdleClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		streams := map[peer.ID]*fakeStream{}
		dial := func(_ context.Context, to peer.ID) (peerStream, error) {
			s := &fakeStream{}
			streams[to] = s
			return s, nil
		}
		o := newOutbox(dial, clock.System, slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithCancel(t.Context())
		defer func() { cancel(); o.wg.Wait() }()
		queued := func(p peer.ID) bool {
			o.mu.Lock()
			defer o.mu.Unlock()
			_, ok := o.peers[p]
			return ok
		}

		// busy gets a message just before each idle period ends, idle
		// gets one at the start only.
		o.send(ctx, "busy", []byte("award"), true)
		o.send(ctx, "idle", []byte("award"), true)
		for range 3 {
			time.Sleep(outboxIdle - time.Second)
			o.send(ctx, "busy", []byte("heartbeat"), true)
			synctest.Wait()
		}
		if writes, closed := streams["busy"].state(); closed || writes != 4 || !queued("busy") {
			t.Fatalf("a stream in use: %d writes, closed %v, queued %v; want 4 writes, open", writes, closed, queued("busy"))
		}
		if _, closed := streams["idle"].state(); !closed || queued("idle") {
			t.Fatalf("a stream idle for %v: closed %v, queued %v; want closed and retired", 3*(outboxIdle-time.Second), closed, queued("idle"))
		}

		// Idle from the last message on: open until outboxIdle has
		// passed, closed then.
		time.Sleep(outboxIdle - time.Second)
		synctest.Wait()
		if _, closed := streams["busy"].state(); closed {
			t.Fatal("stream closed before it was idle for outboxIdle")
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if _, closed := streams["busy"].state(); !closed || queued("busy") {
			t.Fatalf("a stream idle for outboxIdle: closed %v, queued %v; want closed and retired", closed, queued("busy"))
		}
	})
}

// A peer whose stream cannot be opened is given up at once: what was
// queued for it is dropped and counted.
func TestOutboxUnreachable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dial := func(context.Context, peer.ID) (peerStream, error) { return nil, errors.New("no route") }
		o := newOutbox(dial, clock.System, slog.New(slog.DiscardHandler))
		o.send(t.Context(), "gone", []byte("bid"), false)
		o.wg.Wait()
		if got := counts(o.dropped)["unreachable"]; got != 1 || len(o.peers) != 0 {
			t.Fatalf("dropped %d unreachable, %d queues left; want 1 and none", got, len(o.peers))
		}
	})
}

// stuckStream is a market stream to a peer that reads nothing: a write
// blocks until the stream's write deadline passes.
type stuckStream struct {
	mu       sync.Mutex
	deadline time.Time
	writing  *atomic.Int32 // writes in progress, on every stuckStream
}

func (s *stuckStream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	return nil
}

func (s *stuckStream) Write([]byte) (int, error) {
	s.writing.Add(1)
	defer s.writing.Add(-1)
	s.mu.Lock()
	d := time.Until(s.deadline)
	s.mu.Unlock()
	time.Sleep(d)
	return 0, os.ErrDeadlineExceeded
}
func (s *stuckStream) Reset() error { return nil }
func (s *stuckStream) Close() error { return nil }

// Close waits for the outbox's goroutines, as it says: none of them is
// left writing to a peer's stream (on a host the node closes next) once
// it has returned.
func TestCloseWaitsForOutbox(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := peer.IDFromPrivateKey(key)
	synctest.Test(t, func(t *testing.T) {
		d := loopDriver(t, self, noJobs{})
		var writing atomic.Int32
		d.outbox.dial = func(ctx context.Context, _ peer.ID) (peerStream, error) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return &stuckStream{writing: &writing}, nil
		}
		d.outbox.send(d.ctx, "slow reader", []byte("heartbeat"), true)
		synctest.Wait()
		if writing.Load() != 1 {
			t.Fatal("the outbox is not writing to the peer")
		}
		d.Close()
		if n := writing.Load(); n != 0 {
			t.Fatalf("Close returned with %d outbox writes still in progress", n)
		}
	})
}

// noJobs is a job store that holds no jobs and takes every write.
type noJobs struct{}

func (noJobs) PutJobs(map[string][]byte) error                { return nil }
func (noJobs) Jobs(func(id string, rec []byte) error) error   { return nil }
func (noJobs) PutBills(map[string][]byte, []string) error     { return nil }
func (noJobs) Bills(func(key string, rec []byte) error) error { return nil }
