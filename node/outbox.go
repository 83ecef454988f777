package node

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"

	"github.com/mira-market/mira/protocol"
)

// outboxIdle is how long an unused market stream to a peer stays open.
const outboxIdle = time.Minute

// outbox sends market messages to peers over one long-lived stream per
// peer, each message framed with a varint length. A stream per message
// would cost a stream open and close (three yamux frames) on every hop;
// one stream also keeps a peer's messages in order.
type outbox struct {
	n     *Node
	proto libp2pproto.ID
	mu    sync.Mutex
	peers map[peer.ID]chan []byte
}

func newOutbox(n *Node) *outbox {
	return &outbox{n: n, proto: libp2pproto.ID(protocol.MarketProtocol(n.cfg.Network)), peers: map[peer.ID]chan []byte{}}
}

// send queues raw for to; a full queue drops it (the market's timeouts
// recover from lost messages).
func (o *outbox) send(ctx context.Context, to peer.ID, raw []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ch, ok := o.peers[to]
	if !ok {
		ch = make(chan []byte, 4096)
		o.peers[to] = ch
		o.n.wg.Add(1)
		go o.run(ctx, to, ch)
	}
	// Queued under the lock: the peer's goroutine retires only while
	// holding it with an empty queue, so nothing lands in a queue that
	// nobody reads any more.
	select {
	case ch <- raw:
	default:
		o.n.log.Warn("market outbox full; message dropped", "to", to)
	}
}

func (o *outbox) run(ctx context.Context, to peer.ID, ch chan []byte) {
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
		case <-idle.C:
			o.mu.Lock()
			if len(ch) == 0 {
				delete(o.peers, to)
				o.mu.Unlock()
				return
			}
			o.mu.Unlock()
		case raw := <-ch:
			st = o.write(ctx, to, st, frames(raw, ch))
		}
		idle.Reset(outboxIdle)
	}
}

// maxCoalesced bounds the bytes of queued messages written together.
const maxCoalesced = 256 << 10

// frames frames first, and the messages queued behind it up to
// maxCoalesced bytes, each with its varint length, into one buffer: under
// load one stream write (one yamux frame, one encrypted record) carries
// many messages instead of one each.
func frames(first []byte, ch chan []byte) []byte {
	buf := protocol.AppendFrame(make([]byte, 0, len(first)+binary.MaxVarintLen64), first)
	for len(buf) < maxCoalesced {
		select {
		case raw := <-ch:
			buf = protocol.AppendFrame(buf, raw)
		default:
			return buf
		}
	}
	return buf
}

// write sends framed messages, opening the stream if needed and retrying once
// on a fresh stream if the old one broke. It returns the stream to reuse.
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
