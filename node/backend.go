package node

import (
	"context"
	"sort"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol"
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
		PeerID:   n.host.ID().String(),
		Network:  n.cfg.Network,
		Addrs:    addrs,
		Version:  Version,
		Private:  n.cfg.Private,
		GPUs:     n.GPUs(),
		Provider: n.IsProvider(),
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

// Providers answers GET /v1/providers.
func (b apiBackend) Providers(ctx context.Context, q api.ProviderQuery) ([]api.ProviderInfo, error) {
	model := q.GPU
	if model != "" && model != market.AnyGPU {
		model = gpu.NormalizeModel(model)
	}
	recs, err := b.FindProviders(ctx, market.Requirements{GPUModel: model, GPUs: q.Count, MinVRAMMiB: q.VRAMMiB})
	if err != nil {
		return nil, err
	}
	out := make([]api.ProviderInfo, 0, len(recs))
	for _, r := range recs {
		info := api.ProviderInfo{
			PeerID: r.Provider.String(),
			Prices: map[string]float64{
				protocol.TierInteractive: float64(r.PriceInteractive) / 1e6,
				protocol.TierBatch:       float64(r.PriceBatch) / 1e6,
			},
			FreeSlots: r.FreeSlots,
			Executors: r.Executors,
			CPUCores:  r.CPUCores,
			MemoryMiB: r.MemoryMiB,
			ExpiresAt: r.Expires.UTC(),
			GPUs:      []api.ProviderGPU{},
		}
		for _, g := range r.GPUs {
			src := gpu.SourceDeclared
			if g.Detected {
				src = gpu.SourceDetected
			}
			info.GPUs = append(info.GPUs, api.ProviderGPU{Model: g.Model, VRAMMiB: g.VRAMMiB, Count: g.Count, Source: src})
		}
		out = append(out, info)
	}
	return out, nil
}
