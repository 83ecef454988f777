package marketd

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// outboxIdle is how long an unused market stream to a peer stays open.
const outboxIdle = time.Minute

// Bounds of the outbox: the messages queued for one peer, and the peers
// with a queue at once. A queue costs what it holds, not its bound, so
// replies to offers from thousands of throwaway identities do not cost a
// preallocated queue each; and a peer that cannot be reached is given up
// at once, its queue dropped, instead of idling for outboxIdle. Past
// maxOutboxPeers a new peer takes the place of the least recently used
// idle queue; with none idle, only messages of current business (see
// isBusiness) open a queue, up to maxBusinessPeers more.
const (
	outboxQueue      = 4096
	maxOutboxPeers   = 1024
	maxBusinessPeers = 1024
)

// outbox sends market messages to peers over one long-lived stream per
// peer, each message framed with a varint length. A stream per message
// would cost a stream open and close (three yamux frames) on every hop;
// one stream also keeps a peer's messages in order.
type outbox struct {
	dial  dialer
	clock clock.Clock
	log   *slog.Logger
	// wg counts the peers' goroutines.
	wg sync.WaitGroup

	mu    sync.Mutex
	peers map[peer.ID]*peerQueue
	// maxPeers is maxOutboxPeers (tests lower it).
	maxPeers int
	// sends counts messages queued: the order of the queues' last use.
	sends uint64
	// dropped counts messages not sent, by why: "peers" (no place for a
	// new peer), "queue" (the peer's queue full), "unreachable" (its
	// stream could not be opened or written).
	dropped *prometheus.CounterVec
}

// peerQueue is what waits to be sent to one peer; wake tells its goroutine
// that there is some, gone that the queue was evicted and it is to end.
type peerQueue struct {
	msgs [][]byte
	wake chan struct{}
	gone chan struct{}
	// busy is set while the goroutine writes what it took from msgs.
	busy bool
	// used is the outbox's sends when a message was last queued here.
	used uint64
}

func newOutbox(dial dialer, clk clock.Clock, log *slog.Logger) *outbox {
	return &outbox{dial: dial, clock: clk, log: log, peers: map[peer.ID]*peerQueue{}, maxPeers: maxOutboxPeers,
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mira_market_outbox_dropped_total", Help: "Market messages this node dropped instead of sending, by why.",
		}, []string{"why"})}
}

// peerStream is the outbox's end of a market stream to a peer (a libp2p
// stream; a test's fake).
type peerStream interface {
	Write(p []byte) (int, error)
	SetWriteDeadline(t time.Time) error
	Reset() error
	Close() error
}

// dialer opens a market stream to a peer.
type dialer func(ctx context.Context, to peer.ID) (peerStream, error)

// hostDialer opens market streams on h (none without a host).
func hostDialer(h host.Host, proto libp2pproto.ID) dialer {
	return func(ctx context.Context, to peer.ID) (peerStream, error) {
		if h == nil {
			return nil, errors.New("no host")
		}
		return h.NewStream(ctx, to, proto)
	}
}

// isBusiness reports whether m is about a job or lease this node has with
// its recipient: an award, acceptance, heartbeat, result or cancel, each
// bounded by the node's own jobs and leases. Bids and declines answer
// whatever anyone offers or awards, so any number of identities can draw
// them.
func isBusiness(m *pb.MarketMessage) bool {
	return m.GetBid() == nil && m.GetDecline() == nil
}

// send queues raw for to; a full queue, or a new peer that admit finds no
// place for, drops it (the market's timeouts recover from lost messages).
func (o *outbox) send(ctx context.Context, to peer.ID, raw []byte, business bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	q, ok := o.peers[to]
	if !ok {
		if q = o.admit(to, business); q == nil {
			o.log.Warn("market outbox: too many peers with messages in flight; message dropped", "to", to)
			o.dropped.WithLabelValues("peers").Inc()
			return
		}
		o.wg.Go(func() { o.run(ctx, to, q) })
	}
	// Queued under the lock: the peer's goroutine retires only while
	// holding it with an empty queue, so nothing lands in a queue that
	// nobody reads any more.
	if len(q.msgs) >= outboxQueue {
		o.log.Warn("market outbox full; message dropped", "to", to)
		o.dropped.WithLabelValues("queue").Inc()
		return
	}
	o.sends++
	q.used = o.sends
	q.msgs = append(q.msgs, raw)
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// admit makes a queue for a peer that has none, or returns nil. With
// maxPeers queues, the least recently used idle one (nothing queued,
// nothing being written) is evicted, its goroutine ended, to make room:
// identities that drew one reply each hold no place that a peer with
// something to send needs. With none idle, only business passes, up to
// maxBusinessPeers past maxPeers. Called with o.mu held.
func (o *outbox) admit(to peer.ID, business bool) *peerQueue {
	if len(o.peers) >= o.maxPeers {
		if id, q := o.idlest(); q != nil {
			delete(o.peers, id)
			close(q.gone)
		} else if !business || len(o.peers) >= o.maxPeers+maxBusinessPeers {
			return nil
		}
	}
	q := &peerQueue{wake: make(chan struct{}, 1), gone: make(chan struct{})}
	o.peers[to] = q
	return q
}

// idlest returns the least recently used idle queue, if any. Called with
// o.mu held, only when the outbox is full.
func (o *outbox) idlest() (peer.ID, *peerQueue) {
	var (
		id   peer.ID
		best *peerQueue
	)
	for p, q := range o.peers {
		if len(q.msgs) == 0 && !q.busy && (best == nil || q.used < best.used) {
			id, best = p, q
		}
	}
	return id, best
}

// run writes what is queued for one peer, on one stream, until the peer
// is retired: idle for outboxIdle (on the outbox's clock), unreachable,
// evicted, or the outbox closes.
func (o *outbox) run(ctx context.Context, to peer.ID, q *peerQueue) {
	var st peerStream
	defer func() {
		if st != nil {
			st.Close()
		}
	}()
	idle := o.clock.NewTimer(outboxIdle)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.gone:
			return // evicted while idle
		case <-idle.C():
			if o.retire(to, q) {
				return
			}
		case <-q.wake:
			for framed, k := o.frames(q); k > 0; framed, k = o.frames(q) {
				if st = o.write(ctx, to, st, framed); st == nil {
					o.giveUp(ctx, to, q, k)
					return
				}
			}
		}
		idle.Reset(outboxIdle)
	}
}

// retire removes q's peer from the outbox if its queue is empty; it
// reports whether it did.
func (o *outbox) retire(to peer.ID, q *peerQueue) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(q.msgs) > 0 {
		return false
	}
	if o.peers[to] == q {
		delete(o.peers, to)
	}
	return true
}

// giveUp removes an unreachable peer's queue: what waits in it is
// dropped, and counted with the unwritten messages of the failed write
// (unless the outbox is closing).
func (o *outbox) giveUp(ctx context.Context, to peer.ID, q *peerQueue, unwritten int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	dropped := unwritten + len(q.msgs)
	q.msgs = nil
	if o.peers[to] == q {
		delete(o.peers, to)
	}
	if ctx.Err() == nil {
		o.dropped.WithLabelValues("unreachable").Add(float64(dropped))
	}
}

// maxCoalesced bounds the bytes of queued messages written together.
const maxCoalesced = 256 << 10

// frames takes the queued messages, up to maxCoalesced bytes (at least
// one), each with its varint length, into one buffer: under load one
// stream write (one yamux frame, one encrypted record) carries many
// messages instead of one each. It returns the buffer and how many
// messages it holds (none: nothing is queued).
func (o *outbox) frames(q *peerQueue) ([]byte, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var buf []byte
	n := 0
	for n < len(q.msgs) && (n == 0 || len(buf) < maxCoalesced) {
		buf = protocol.AppendFrame(buf, q.msgs[n])
		q.msgs[n] = nil
		n++
	}
	q.msgs = q.msgs[n:]
	if len(q.msgs) == 0 {
		q.msgs = nil // let the backing array go
	}
	// Busy from taking messages until a call finds none: the peer is not
	// idle while they are written.
	q.busy = n > 0
	return buf, n
}

// write sends framed messages, opening the stream if needed and retrying once
// on a fresh stream if the old one broke. It returns the stream to reuse,
// nil if none could be opened or written.
func (o *outbox) write(ctx context.Context, to peer.ID, st peerStream, framed []byte) peerStream {
	for attempt := 0; attempt < 2; attempt++ {
		if st == nil {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			s, err := o.dial(sctx, to)
			cancel()
			if err != nil {
				o.log.Debug("market stream", "to", to, "err", err)
				return nil
			}
			st = s
		}
		st.SetWriteDeadline(time.Now().Add(10 * time.Second)) // the stream's own, wall-time deadline
		// A write that breaks may have delivered some of the messages;
		// the retry sends them all again, and the receiver drops repeats
		// (the engine ignores a message it has already acted on).
		if _, err := st.Write(framed); err == nil {
			return st
		}
		st.Reset()
		st = nil
	}
	return nil
}
