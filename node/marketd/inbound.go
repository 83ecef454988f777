package marketd

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
)

// The driver's inbound side: gossip validation, the verification cache,
// the market stream handler, and the messages fed to the engine.

// validateGossip runs before a gossip message is forwarded: it passes only
// if every signed message in it verifies, is an offer or a taken notice,
// and has the same signer (a requester gossips only its own messages);
// anything else is rejected (and the sender penalised by peer scoring),
// but for signed messages that fail only by this node's clock (expired,
// or expiring just past the limit: protocol.ErrTooFarAhead), which are
// dropped without blame, the whole message ignored when none is left.
// A peer past its rate of signed messages ([limits]) has its gossip
// ignored unchecked, without a penalty: it may be relaying others'.
// Repeats of a gossip message are dropped by the message-ID cache; one
// that only repacks signed messages already seen on gossip is ignored, so
// a peer cannot make the network carry them again. The node's own gossip,
// which it has just signed, is accepted unchecked.
func (m *Driver) validateGossip(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	raws, err := protocol.SplitMarketGossip(msg.Data)
	if err != nil {
		m.reject(err)
		m.log.Debug("gossip message rejected", "from", msg.ReceivedFrom, "err", err)
		return pubsub.ValidationReject
	}
	if msg.ReceivedFrom == m.self {
		// Our own, signed just now: not checked again, and of no use to
		// our engine; remembered, so that a peer's repack is ignored.
		m.gossipSeen.anyNew(raws)
		return pubsub.ValidationAccept
	}
	if !m.limits.AllowGossip(msg.ReceivedFrom, len(raws)) {
		// Past the peer's rate: not checked, not passed on, and not held
		// against it (it may only be relaying what others publish).
		return pubsub.ValidationIgnore
	}
	msgs := make([]*protocol.Signed, 0, len(raws))
	for _, raw := range raws {
		s, err := m.open(raw)
		if err == nil {
			switch s.Msg.Body.(type) {
			case *pb.MarketMessage_Offer, *pb.MarketMessage_Taken:
			default:
				err = fmt.Errorf("%w: %s", errNotForGossip, kindOf(s.Msg))
			}
		}
		if err == nil && len(msgs) > 0 && s.Signer != msgs[0].Signer {
			err = fmt.Errorf("%w: a gossip message of %s and %s", protocol.ErrSigner, msgs[0].Signer, s.Signer)
		}
		if err != nil {
			m.reject(err)
			m.log.Debug("gossip message rejected", "from", msg.ReceivedFrom, "err", err)
			// A message that expired on the way, or that runs past the
			// limit of how far ahead it may expire only by this node's
			// clock being behind the relay's, is no one's fault: it is
			// dropped, the rest of the gossip message kept, and the relay
			// not scored down.
			if errors.Is(err, protocol.ErrExpired) || errors.Is(err, protocol.ErrTooFarAhead) {
				continue
			}
			return pubsub.ValidationReject
		}
		msgs = append(msgs, s)
	}
	if len(msgs) == 0 {
		return pubsub.ValidationIgnore
	}
	if !m.gossipSeen.anyNew(raws) {
		m.rejected.WithLabelValues("repacked").Inc()
		return pubsub.ValidationIgnore
	}
	msg.ValidatorData = msgs
	return pubsub.ValidationAccept
}

// errNotForGossip is a signed market message of a kind that travels only
// directly.
var errNotForGossip = errors.New("not for gossip")

func (m *Driver) readTopic(sub *pubsub.Subscription) {
	defer sub.Cancel()
	for {
		msg, err := sub.Next(m.ctx)
		if err != nil {
			return
		}
		if msgs, ok := msg.ValidatorData.([]*protocol.Signed); ok {
			for _, s := range msgs {
				m.step(s)
			}
		}
	}
}

// open verifies a market message, or recalls that the same bytes passed
// before: an interactive offer reaches a provider both directly and by
// gossip, and a signature check is the dearest step on the hot path.
func (m *Driver) open(data []byte) (*protocol.Signed, error) {
	key := sha256.Sum256(data)
	if s, ok := m.verified.get(key); ok && time.UnixMilli(s.Msg.ExpiresUnixMs).After(m.clock.Now()) {
		return s, nil
	}
	s, err := protocol.OpenMarket(data, m.network, m.clock.Now())
	if err == nil {
		m.verified.put(key, s)
	}
	return s, err
}

// seenSet remembers which signed messages arrived on gossip, by content
// hash. It is bounded: when full it starts over.
type seenSet struct {
	mu sync.Mutex
	m  map[[32]byte]struct{}
}

const seenSetSize = 1 << 16

// anyNew records raws as seen and reports whether any was not seen before.
func (s *seenSet) anyNew(raws [][]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m)+len(raws) > seenSetSize {
		clear(s.m)
	}
	fresh := false
	for _, raw := range raws {
		k := sha256.Sum256(raw)
		if _, ok := s.m[k]; !ok {
			s.m[k] = struct{}{}
			fresh = true
		}
	}
	return fresh
}

// verifiedCache remembers recently verified messages by content hash. It
// is bounded, in messages and in their bytes: when full it starts over.
type verifiedCache struct {
	mu    sync.Mutex
	m     map[[32]byte]*protocol.Signed
	bytes int
}

// verifiedCacheSize and verifiedCacheBytes bound the cache. Each message
// is kept as received and decoded, about twice its bytes: 8 MiB of 64 KiB
// messages hold 16 MiB; a burst's small offers (a few hundred bytes) fill
// the count first.
const (
	verifiedCacheSize  = 4096
	verifiedCacheBytes = 8 << 20
)

func (c *verifiedCache) get(k [32]byte) (*protocol.Signed, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[k]
	return s, ok
}

func (c *verifiedCache) put(k [32]byte, s *protocol.Signed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= verifiedCacheSize || c.bytes+len(s.Raw) > verifiedCacheBytes {
		clear(c.m)
		c.bytes = 0
	}
	c.m[k] = s
	c.bytes += len(s.Raw)
}

// receive verifies one direct message; its signer must be the peer that
// sent it.
func (m *Driver) receive(from peer.ID, data []byte) {
	s, err := m.open(data)
	if err == nil && s.Signer != from {
		err = fmt.Errorf("%w: sent by %s, signed by %s", protocol.ErrSigner, from, s.Signer)
	}
	if err != nil {
		m.reject(err)
		m.log.Debug("market message rejected", "from", from, "err", err)
		return
	}
	m.step(s)
}

// reject counts a refused message under the reason its error names.
func (m *Driver) reject(err error) {
	reason := "malformed"
	for _, r := range []struct {
		err  error
		name string
	}{{protocol.ErrTooLarge, "oversized"}, {protocol.ErrSignature, "bad signature"}, {protocol.ErrSigner, "wrong signer"}, {protocol.ErrExpired, "expired"}, {protocol.ErrTooFarAhead, "too far ahead"}, {errNotForGossip, "not for gossip"}} {
		if errors.Is(err, r.err) {
			reason = r.name
			break
		}
	}
	m.rejected.WithLabelValues(reason).Inc()
}

func (m *Driver) step(s *protocol.Signed) {
	m.stepped.WithLabelValues(kindOf(s.Msg)).Inc()
	rtt := m.host.Peerstore().LatencyEWMA(s.Signer)
	head, isOffer := m.knownHead(s)
	if d := s.Msg.GetDecline(); d != nil && len(d.Waive) > 0 {
		// The waive closes the declined award's hold: in this ledger
		// before the job's next award is held, so the credits it frees
		// can back it. Read here, off the loop; only a waive of this job
		// by the decline's signer, so a decline cannot carry any other
		// entry into the ledger's ingest.
		if err := declineWaive(s, d.Waive); err != nil {
			m.rejected.WithLabelValues("bad waive").Inc()
			m.log.Debug("decline's waive ignored", "from", s.Signer, "err", err)
		} else if err := m.ledger.IngestWaive(d.Waive); err != nil {
			m.log.Debug("decline's waive not taken", "from", s.Signer, "err", err)
		}
	}
	// Block rather than drop (see the package doc on queues): a full
	// queue pushes back on the stream or topic reader, and so on the
	// sender, instead of losing a bid or an award that a timeout would
	// later blame on an honest peer.
	select {
	case m.in <- func() {
		m.eng.SetRTT(s.Signer, rtt)
		if isOffer {
			m.eng.SetKnownHead(s.Signer, head)
		}
		m.eng.Step(m.clock.Now(), s)
	}:
	case <-m.ctx.Done():
	}
}

// knownHead is, for an offer to this provider, the head of its
// requester's ledger chain that this node holds (0 if it cannot tell):
// the engine's bid names it, so that the award carries the requester's
// entries this node lacks. It is read here, on the reader's goroutine,
// not on the engine's.
func (m *Driver) knownHead(s *protocol.Signed) (seq uint64, isOffer bool) {
	if s.Msg.GetOffer() == nil || !m.provider {
		return 0, false
	}
	seq, err := m.ledger.RequesterHead(s.Signer)
	if err != nil {
		return 0, true
	}
	return seq, true
}

// kindOf names a market message's body for metrics.
func kindOf(m *pb.MarketMessage) string {
	switch m.Body.(type) {
	case *pb.MarketMessage_Offer:
		return "offer"
	case *pb.MarketMessage_Bid:
		return "bid"
	case *pb.MarketMessage_Decline:
		return "decline"
	case *pb.MarketMessage_Award:
		return "award"
	case *pb.MarketMessage_Accept:
		return "accept"
	case *pb.MarketMessage_Taken:
		return "taken"
	case *pb.MarketMessage_Cancel:
		return "cancel"
	case *pb.MarketMessage_Heartbeat:
		return "heartbeat"
	case *pb.MarketMessage_Result:
		return "result"
	}
	return "unknown"
}

// handleStream reads framed market messages from a peer until it closes
// the stream; a frame over the size limit ends the stream, and one past the
// peer's rate limit is dropped unread.
func (m *Driver) handleStream(st network.Stream) {
	defer st.Close()
	r := msgio.NewVarintReaderSize(st, protocol.MaxMarketMessageSize)
	for {
		data, err := r.ReadMsg()
		if err != nil {
			if errors.Is(err, msgio.ErrMsgTooLarge) {
				m.reject(protocol.ErrTooLarge)
				st.Reset()
			}
			return
		}
		from := st.Conn().RemotePeer()
		if !m.limits.AllowMarket(from) {
			continue // dropped (and counted) before its signature is checked
		}
		m.receive(from, data)
	}
}

// declineWaive checks the waive a decline s carries: an entry that decodes
// as a waive, in the chain of the decline's signer, of the decline's job.
func declineWaive(s *protocol.Signed, raw []byte) error {
	e, err := ledger.DecodeEntry(raw)
	if err != nil {
		return err
	}
	w, ok := e.Body.(ledger.WaiveBody)
	switch {
	case !ok:
		return fmt.Errorf("a %v entry, not a waive", e.Kind())
	case e.Account != s.Signer:
		return fmt.Errorf("a waive by %s, not by the decline's signer", e.Account)
	case w.Job != ledger.Hash(s.Job):
		return fmt.Errorf("a waive of job %x, not of job %s", w.Job, s.Job)
	}
	return nil
}
