package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"github.com/prometheus/client_golang/prometheus"

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
	n     *Node
	proto libp2pproto.ID
	mu    sync.Mutex
	peers map[peer.ID]*peerQueue
	// maxPeers is maxOutboxPeers (tests lower it).
	maxPeers int
	// sends counts messages queued: the order of the queues' last use.
	sends uint64
	// dropped counts messages not sent, by why: "peers" (no place for a
	// new peer), "queue" (the peer's queue full).
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

func newOutbox(n *Node) *outbox {
	o := &outbox{n: n, proto: libp2pproto.ID(protocol.MarketProtocol(n.cfg.Network)), peers: map[peer.ID]*peerQueue{}, maxPeers: maxOutboxPeers,
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mira_market_outbox_dropped_total", Help: "Market messages this node dropped instead of sending, by why.",
		}, []string{"why"})}
	n.metrics.MustRegister(o.dropped)
	return o
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
			o.n.log.Warn("market outbox: too many peers with messages in flight; message dropped", "to", to)
			o.dropped.WithLabelValues("peers").Inc()
			return
		}
		o.n.wg.Add(1)
		go o.run(ctx, to, q)
	}
	// Queued under the lock: the peer's goroutine retires only while
	// holding it with an empty queue, so nothing lands in a queue that
	// nobody reads any more.
	if len(q.msgs) >= outboxQueue {
		o.n.log.Warn("market outbox full; message dropped", "to", to)
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

func (o *outbox) run(ctx context.Context, to peer.ID, q *peerQueue) {
	defer o.n.wg.Done()
	var st network.Stream
	defer func() {
		if st != nil {
			st.Close()
		}
	}()
	idle := time.NewTimer(outboxIdle)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.gone:
			return // evicted while idle
		case <-idle.C:
			if o.retire(to, q, false) {
				return
			}
		case <-q.wake:
			for framed := o.frames(q); framed != nil; framed = o.frames(q) {
				if st = o.write(ctx, to, st, framed); st == nil {
					// Unreachable: what is queued is dropped with it.
					o.retire(to, q, true)
					return
				}
			}
		}
		idle.Reset(outboxIdle)
	}
}

// retire removes q's peer from the outbox if its queue is empty, or
// regardless with drop (which empties it); it reports whether it did.
func (o *outbox) retire(to peer.ID, q *peerQueue, drop bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(q.msgs) > 0 && !drop {
		return false
	}
	if o.peers[to] == q {
		delete(o.peers, to)
	}
	return true
}

// maxCoalesced bounds the bytes of queued messages written together.
const maxCoalesced = 256 << 10

// frames takes the queued messages, up to maxCoalesced bytes (at least
// one), each with its varint length, into one buffer: under load one
// stream write (one yamux frame, one encrypted record) carries many
// messages instead of one each. nil when nothing is queued.
func (o *outbox) frames(q *peerQueue) []byte {
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
	return buf
}

// write sends framed messages, opening the stream if needed and retrying once
// on a fresh stream if the old one broke. It returns the stream to reuse,
// nil if none could be opened or written.
func (o *outbox) write(ctx context.Context, to peer.ID, st network.Stream, framed []byte) network.Stream {
	for attempt := 0; attempt < 2; attempt++ {
		if st == nil {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			s, err := o.n.host.NewStream(sctx, to, o.proto)
			cancel()
			if err != nil {
				o.n.log.Debug("market stream", "to", to, "err", err)
				return nil
			}
			st = s
		}
		st.SetWriteDeadline(time.Now().Add(10 * time.Second))
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

// handleStream reads framed market messages from a peer until it closes
// the stream; a frame over the size limit ends the stream, and one past the
// peer's rate limit is dropped unread.
func (d *marketDriver) handleStream(st network.Stream) {
	defer st.Close()
	r := msgio.NewVarintReaderSize(st, protocol.MaxMarketMessageSize)
	for {
		data, err := r.ReadMsg()
		if err != nil {
			if errors.Is(err, msgio.ErrMsgTooLarge) {
				d.reject(protocol.ErrTooLarge)
				st.Reset()
			}
			return
		}
		from := st.Conn().RemotePeer()
		if !d.n.limits.allowMarket(from) {
			continue // dropped (and counted) before its signature is checked
		}
		d.receive(from, data)
	}
}
