package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
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
		Disk:     n.diskInfo(),
		Ledger:   n.ledger.Status(),
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
	recs, err := b.FindProviders(ctx, market.Requirements{GPUModel: model, GPUs: q.Count, MinVRAMMiB: q.VRAMMiB, DetectedOnly: q.Source == gpu.SourceDetected})
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
		if info.Reputation, err = b.reputation(r.Provider); err != nil {
			return nil, err
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

func (b apiBackend) jobInfo(j market.Job) api.JobInfo {
	info := api.JobInfo{
		ID: j.ID.String(), State: string(j.State), Tier: j.Tier, Provider: peerString(j.Provider),
		Price: float64(j.Price) / 1e6, MaxPrice: float64(j.MaxPrice) / 1e6, Attempt: int(j.Attempt), Leases: j.Leases, Preemptions: j.Preemptions,
		Bids: []api.BidInfo{}, Declines: []api.DeclineInfo{}, ExitCode: int(j.ExitCode), Output: string(j.Output),
		Error: j.Error, RefusedResults: j.RefusedResults, Created: j.Created, Updated: j.Updated, Deadline: j.Deadline, Leased: j.Leased,
		ResultID: j.ResultID, ResultSize: j.ResultSize, OutputsID: j.OutputsID, OutputsSize: j.OutputsSize,
	}
	if u := j.Usage; u != nil {
		info.Usage = &api.UsageInfo{WallMS: u.WallMs, GPUMS: u.GpuMs, PeakMemoryBytes: u.PeakMemoryBytes, FirstOutputMS: u.FirstOutputMs}
	}
	info.Cost, info.Payment = b.ledger.Payment(j)
	for _, bid := range j.Bids {
		info.Bids = append(info.Bids, api.BidInfo{Provider: bid.Provider.String(), Price: float64(bid.Price) / 1e6, At: bid.At})
	}
	for _, d := range j.Declines {
		info.Declines = append(info.Declines, api.DeclineInfo{Provider: d.Provider.String(), Reason: d.Reason, At: d.At})
	}
	return info
}

func peerString(p peer.ID) string {
	if p == "" {
		return ""
	}
	return p.String()
}

// SubmitJob answers POST /v1/jobs.
func (b apiBackend) SubmitJob(ctx context.Context, p api.ParsedJob) (api.JobInfo, error) {
	spec := &pb.JobSpec{
		Executor: p.Executor, Image: p.Image, Module: p.Module, Command: p.Command, Args: p.Args, Inputs: p.Inputs,
		Tier: p.Tier, MaxPrice: capacity.MicroCredits(p.MaxPrice), MaxDurationMs: p.MaxDurationD.Milliseconds(), GpuSource: p.GPUSource,
		Resources: &pb.Resources{
			Gpus: uint32(p.Resources.GPUs), GpuModel: p.Resources.GPUModel, VramMib: uint32(p.Resources.VRAMMiB),
			CpuMillis: uint32(p.Resources.CPUMillis), MemoryMib: uint32(p.Resources.MemoryMiB),
		},
	}
	if p.Verify != nil && p.Verify.Replicas > 1 {
		spec.Verify = &pb.Verify{Replicas: uint32(p.Verify.Replicas)}
	}
	if m := spec.Resources.GpuModel; m != "" && m != market.AnyGPU {
		spec.Resources.GpuModel = gpu.NormalizeModel(m)
	}
	names := make([]string, 0, len(p.Env))
	for k := range p.Env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		spec.Env = append(spec.Env, &pb.EnvVar{Name: k, Value: p.Env[k]})
	}
	j, err := b.Node.SubmitJob(ctx, spec, p.DeadlineT)
	if err != nil {
		return api.JobInfo{}, err
	}
	return b.jobInfo(j), nil
}

// Jobs answers GET /v1/jobs.
func (b apiBackend) Jobs(ctx context.Context) ([]api.JobInfo, error) {
	jobs, err := b.Node.Jobs(ctx)
	out := make([]api.JobInfo, 0, len(jobs))
	for _, j := range jobs {
		out = append(out, b.jobInfo(j))
	}
	return out, err
}

// minJobIDPrefix is the shortest prefix of a job ID the API takes for the
// whole ID (`mira job ls` shows 16 hex digits).
const minJobIDPrefix = 8

// jobID resolves id: a job ID, or a prefix of at least minJobIDPrefix hex
// digits that names one of this node's jobs alone.
func (b apiBackend) jobID(ctx context.Context, id string) (protocol.JobID, error) {
	id = strings.ToLower(id)
	if len(id) == 2*len(protocol.JobID{}) || len(id) < minJobIDPrefix || strings.Trim(id, "0123456789abcdef") != "" {
		jid, err := protocol.ParseJobID(id)
		if err != nil {
			return jid, fmt.Errorf("%w: %v (or a prefix of at least %d)", api.ErrNotFound, err, minJobIDPrefix)
		}
		return jid, nil
	}
	jobs, err := b.Node.Jobs(ctx)
	if err != nil {
		return protocol.JobID{}, err
	}
	var found []protocol.JobID
	for _, j := range jobs {
		if strings.HasPrefix(j.ID.String(), id) {
			found = append(found, j.ID)
		}
	}
	switch len(found) {
	case 0:
		return protocol.JobID{}, fmt.Errorf("%w: no job %s…", api.ErrNotFound, id)
	case 1:
		return found[0], nil
	}
	return protocol.JobID{}, fmt.Errorf("job id %s… names %d jobs: give more digits", id, len(found))
}

func notFound(err error) error {
	if errors.Is(err, marketd.ErrNoJob) {
		return fmt.Errorf("%w: %v", api.ErrNotFound, err)
	}
	return err
}

// Job answers GET /v1/jobs/{id}.
func (b apiBackend) Job(ctx context.Context, id string) (api.JobInfo, error) {
	jid, err := b.jobID(ctx, id)
	if err != nil {
		return api.JobInfo{}, err
	}
	j, err := b.Node.Job(ctx, jid)
	return b.jobInfo(j), notFound(err)
}

// CancelJob answers DELETE /v1/jobs/{id}.
func (b apiBackend) CancelJob(ctx context.Context, id string) (api.JobInfo, error) {
	jid, err := b.jobID(ctx, id)
	if err != nil {
		return api.JobInfo{}, err
	}
	j, _, err := b.Node.CancelJob(ctx, jid)
	return b.jobInfo(j), notFound(err)
}

// WatchJob answers GET /v1/jobs/{id}/events.
func (b apiBackend) WatchJob(ctx context.Context, id string) (<-chan api.JobInfo, error) {
	jid, err := b.jobID(ctx, id)
	if err != nil {
		return nil, err
	}
	ch, err := b.Node.WatchJob(ctx, jid)
	if err != nil {
		return nil, notFound(err)
	}
	out := make(chan api.JobInfo)
	go func() {
		defer close(out)
		for j := range ch {
			select {
			case out <- b.jobInfo(j):
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
