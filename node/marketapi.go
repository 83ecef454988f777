package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The market's calls for the node's API: jobs submitted, read, cancelled
// and watched, and the market's statistics.

// watcher is a WatchJob caller's channel, and how to stop waiting for the
// end of its context.
type watcher struct {
	ch   chan market.Job
	stop func() bool
}

// notify passes a job's new state to its watchers.
func (d *marketDriver) notify(j *market.Job) {
	for _, w := range d.watchers[j.ID] {
		select {
		case w.ch <- *j:
		default:
			// A slow watcher misses intermediate states, not the last:
			// the oldest queued state makes room for it.
			if j.State.Terminal() {
				select {
				case <-w.ch:
				default:
				}
				w.ch <- *j
			}
		}
	}
	if j.State.Terminal() {
		for _, w := range d.watchers[j.ID] {
			w.stop()
			close(w.ch)
		}
		delete(d.watchers, j.ID)
	}
}

// unwatch drops a watcher whose context ended (a client that went away)
// and closes its channel.
func (d *marketDriver) unwatch(id protocol.JobID, w *watcher) {
	ws := d.watchers[id]
	i := slices.Index(ws, w)
	if i < 0 {
		return // the job ended first
	}
	close(w.ch)
	if ws = slices.Delete(ws, i, i+1); len(ws) == 0 {
		delete(d.watchers, id)
	} else {
		d.watchers[id] = ws
	}
}

// SubmitJob signs an offer for spec and hands it to the market: an
// interactive job also goes directly to the best fitting providers (the
// engine ranks those the DHT lookup found by price, then measured RTT).
func (n *Node) SubmitJob(ctx context.Context, spec *pb.JobSpec, deadline time.Time) (market.Job, error) {
	if err := protocol.CheckSpec(spec); err != nil {
		return market.Job{}, err
	}
	if err := n.diskLow(); err != nil {
		return market.Job{}, err
	}
	// A node that cannot sign cannot hold credits for the job.
	if err := n.canTakeJobs(); err != nil {
		return market.Job{}, err
	}
	now := time.Now()
	if !deadline.After(now) {
		return market.Job{}, errors.New("deadline: already passed")
	}
	if deadline.Sub(now) > protocol.MaxJobLifetime {
		// Providers refuse an offer that lives longer.
		return market.Job{}, fmt.Errorf("deadline: at most %v from now", protocol.MaxJobLifetime)
	}
	var providers []*protocol.Capacity
	if spec.Tier == protocol.TierInteractive {
		var err error
		if providers, err = n.capacity.Candidates(ctx, requirements(spec)); err != nil {
			return market.Job{}, fmt.Errorf("find providers: %w", err)
		}
	}
	rtts := make([]time.Duration, len(providers))
	for i, c := range providers {
		rtts[i] = n.host.Peerstore().LatencyEWMA(c.Provider)
	}
	nonce := make([]byte, 16)
	rand.Read(nonce)
	o := &pb.Offer{
		Requester: []byte(n.host.ID()), Network: n.cfg.Network, Spec: spec,
		CreatedUnixMs: now.UnixMilli(), DeadlineUnixMs: deadline.UnixMilli(), Nonce: nonce,
	}
	msg := &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: o}}
	raw, err := protocol.SealMarket(n.priv, n.cfg.Network, deadline, msg)
	if err != nil {
		return market.Job{}, err
	}
	id, err := protocol.OfferJobID(o)
	if err != nil {
		return market.Job{}, err
	}
	// Our own, just signed: no need to verify it again.
	offer := &protocol.Signed{Signer: n.host.ID(), Msg: msg, Raw: raw, Job: id}
	var job market.Job
	hold := n.offerHoldWrite(id, spec)
	err = n.market.do(ctx, func() {
		if hold != nil {
			n.market.postingHolds[id] = hold
		}
		// The engine ranks the providers by price, then RTT.
		for i, c := range providers {
			n.market.eng.SetRTT(c.Provider, rtts[i])
		}
		job = *n.market.eng.Submit(n.market.clock.Now(), offer, providers)
	})
	return job, err
}

// requirements are what a job of spec needs of one provider.
func requirements(spec *pb.JobSpec) market.Requirements {
	var r market.Requirements
	if res := spec.Resources; res != nil {
		r = market.Requirements{GPUModel: res.GpuModel, GPUs: int(res.Gpus), MinVRAMMiB: int(res.VramMib)}
	}
	return r
}

// Jobs returns copies of this node's jobs as requester.
func (n *Node) Jobs(ctx context.Context) ([]market.Job, error) {
	var out []market.Job
	err := n.market.do(ctx, func() {
		for _, j := range n.market.eng.Jobs() {
			out = append(out, *j)
		}
	})
	return out, err
}

// ErrNoJob is returned for a job ID this node does not know.
var ErrNoJob = errors.New("no such job")

// Job returns a copy of one job.
func (n *Node) Job(ctx context.Context, id protocol.JobID) (market.Job, error) {
	var (
		out market.Job
		ok  bool
	)
	err := n.market.do(ctx, func() {
		var j *market.Job
		if j, ok = n.market.eng.Job(id); ok {
			out = *j
		}
	})
	if err == nil && !ok {
		err = ErrNoJob
	}
	return out, err
}

// CancelJob cancels a job; it reports false if the job had already ended.
func (n *Node) CancelJob(ctx context.Context, id protocol.JobID) (market.Job, bool, error) {
	var (
		out       market.Job
		found, ok bool
	)
	err := n.market.do(ctx, func() {
		var j *market.Job
		if j, found = n.market.eng.Job(id); found {
			ok = n.market.eng.Cancel(n.market.clock.Now(), id, "cancelled by requester")
			out = *j
		}
	})
	if err == nil && !found {
		err = ErrNoJob
	}
	return out, ok, err
}

// WatchJob returns a channel of a job's states, closed when the job ends
// or ctx does.
func (n *Node) WatchJob(ctx context.Context, id protocol.JobID) (<-chan market.Job, error) {
	ch := make(chan market.Job, 16)
	found := false
	err := n.market.do(ctx, func() {
		j, ok := n.market.eng.Job(id)
		if !ok {
			return
		}
		found = true
		ch <- *j
		if j.State.Terminal() {
			close(ch)
			return
		}
		w := &watcher{ch: ch}
		n.market.watchers[id] = append(n.market.watchers[id], w)
		w.stop = context.AfterFunc(ctx, func() {
			n.market.do(n.runCtx, func() { n.market.unwatch(id, w) })
		})
	})
	if err == nil && !found {
		err = ErrNoJob
	}
	return ch, err
}

// OfferMemory returns how many offers this provider remembers and what
// they cost in bytes.
func (n *Node) OfferMemory(ctx context.Context) (offers, bytes int, err error) {
	err = n.market.do(ctx, func() { offers, bytes = n.market.eng.OfferMemory() })
	return offers, bytes, err
}

// MarketStats returns how many market messages of each kind reached the
// engine, and how many were refused before it, by reason.
func (n *Node) MarketStats() (stepped, rejected map[string]int) {
	return counts(n.market.stepped), counts(n.market.rejected)
}

func counts(v *prometheus.CounterVec) map[string]int {
	out := map[string]int{}
	ch := make(chan prometheus.Metric, 64)
	go func() { v.Collect(ch); close(ch) }()
	for m := range ch {
		var pm dto.Metric
		if m.Write(&pm) == nil && len(pm.Label) == 1 {
			out[pm.Label[0].GetValue()] = int(pm.Counter.GetValue())
		}
	}
	return out
}
