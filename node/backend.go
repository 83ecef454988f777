package node

import (
	"context"
	"sort"

	"github.com/mira-market/mira/node/api"
)

// apiBackend adapts a Node to api.Backend, which speaks in strings.
type apiBackend struct{ *Node }

var _ api.Backend = apiBackend{}

// Ready reports whether Start has finished and Close has not begun.
func (n *Node) Ready() bool { return n.ready.Load() }

// NodeInfo describes the node for GET /v1/node.
func (n *Node) NodeInfo() api.NodeInfo {
	addrs := make([]string, 0)
	for _, a := range n.host.Addrs() {
		addrs = append(addrs, a.String())
	}
	return api.NodeInfo{
		PeerID:  n.host.ID().String(),
		Network: n.cfg.Network,
		Addrs:   addrs,
		Version: Version,
		Private: n.cfg.Private,
	}
}

// Peers lists connected peers with their addresses and measured latency.
func (n *Node) Peers() []api.PeerInfo {
	ids := n.host.Network().Peers()
	out := make([]api.PeerInfo, 0, len(ids))
	for _, p := range ids {
		info := api.PeerInfo{PeerID: p.String(), Addrs: []string{}}
		for _, c := range n.host.Network().ConnsToPeer(p) {
			info.Addrs = append(info.Addrs, c.RemoteMultiaddr().String())
		}
		info.LatencyMS = float64(n.host.Peerstore().LatencyEWMA(p).Microseconds()) / 1000
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PeerID < out[j].PeerID })
	return out
}

// Connect dials a peer for POST /v1/peers.
func (b apiBackend) Connect(ctx context.Context, addr string) (string, error) {
	id, err := b.Node.Connect(ctx, addr)
	return id.String(), err
}
