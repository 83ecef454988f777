package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mira-market/mira/node/peerlimit"
)

// maxLimitedPeers bounds the peers whose send rates a node tracks, per
// limiter: well above the connections the connection manager keeps.
const maxLimitedPeers = 4096

// peerLimits are a node's per-peer limits ([limits]): rates of market
// messages, direct and gossiped, and open streams of the blob, log and
// sync protocols.
type peerLimits struct {
	market, gossip *peerlimit.Rate
	streams        map[string]*peerlimit.Streams
	// limited counts what the limits refused, by what: signed market
	// messages ("market", and "gossip" for those in refused gossip
	// messages) and streams ("blob", "logs", "sync").
	limited *prometheus.CounterVec
}

func newPeerLimits(cfg LimitsConfig, reg prometheus.Registerer) *peerLimits {
	l := &peerLimits{
		market: peerlimit.NewRate(cfg.MarketMessagesPerSecond, cfg.MarketMessageBurst, maxLimitedPeers),
		gossip: peerlimit.NewRate(cfg.GossipMessagesPerSecond, cfg.GossipMessageBurst, maxLimitedPeers),
		streams: map[string]*peerlimit.Streams{
			"blob": peerlimit.NewStreams(cfg.BlobStreamsPerPeer),
			"logs": peerlimit.NewStreams(cfg.LogStreamsPerPeer),
			"sync": peerlimit.NewStreams(cfg.SyncStreamsPerPeer),
		},
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mira_peer_limited_total", Help: "Messages and streams refused because their peer was over its limit, by what.",
		}, []string{"what"}),
	}
	reg.MustRegister(l.limited)
	return l
}

// allowMarket reports whether p may send one more direct market message
// now; the caller drops one it may not, before verifying it.
func (l *peerLimits) allowMarket(p peer.ID) bool {
	if l.market.Allow(p, time.Now()) {
		return true
	}
	l.limited.WithLabelValues("market").Inc()
	return false
}

// allowGossip reports whether p may forward n more signed messages on the
// job topics now.
func (l *peerLimits) allowGossip(p peer.ID, n int) bool {
	if l.gossip.AllowN(p, time.Now(), n) {
		return true
	}
	l.limited.WithLabelValues("gossip").Add(float64(n))
	return false
}

// limitStreams wraps the handler of protocol what ("blob", "logs", "sync")
// so that a peer holding its limit of open streams has the next one reset.
func (l *peerLimits) limitStreams(what string, h network.StreamHandler) network.StreamHandler {
	s := l.streams[what]
	return func(st network.Stream) {
		release, ok := s.Acquire(st.Conn().RemotePeer())
		if !ok {
			l.limited.WithLabelValues(what).Inc()
			st.Reset()
			return
		}
		defer release()
		h(st)
	}
}

// PeerLimited returns what the per-peer limits refused, by what.
func (n *Node) PeerLimited() map[string]int {
	out := map[string]int{}
	ch := make(chan prometheus.Metric, 64)
	go func() { n.limits.limited.Collect(ch); close(ch) }()
	for m := range ch {
		var pm dto.Metric
		if m.Write(&pm) == nil && len(pm.Label) == 1 {
			out[pm.Label[0].GetValue()] = int(pm.Counter.GetValue())
		}
	}
	return out
}
