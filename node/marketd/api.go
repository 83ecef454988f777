package marketd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The driver's calls for the node: jobs submitted, read, cancelled and
// watched, the market's statistics, and what the ledger, the disk watch
// and the blob and log services ask of the market. Each runs on the loop.

// ErrNoJob is returned for a job ID this node does not know.
var ErrNoJob = errors.New("no such job")

// Submit signs an offer for spec and hands it to the market: an
// interactive job also goes directly to the best fitting providers (the
// engine ranks those the capacity lookup found by price, then measured
// RTT). The caller has checked the spec and that the node may take jobs.
func (m *Driver) Submit(ctx context.Context, spec *pb.JobSpec, deadline time.Time) (market.Job, error) {
	now := m.clock.Now()
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
		if providers, err = m.capacity.Candidates(ctx, market.SpecRequirements(spec)); err != nil {
			return market.Job{}, fmt.Errorf("find providers: %w", err)
		}
	}
	rtts := make([]time.Duration, len(providers))
	for i, c := range providers {
		rtts[i] = m.host.Peerstore().LatencyEWMA(c.Provider)
	}
	nonce := make([]byte, 16)
	rand.Read(nonce)
	o := &pb.Offer{
		Requester: []byte(m.self), Network: m.network, Spec: spec,
		CreatedUnixMs: now.UnixMilli(), DeadlineUnixMs: deadline.UnixMilli(), Nonce: nonce,
	}
	msg := &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: o}}
	raw, err := protocol.SealMarket(m.key, m.network, deadline, msg)
	if err != nil {
		return market.Job{}, err
	}
	id, err := protocol.OfferJobID(o)
	if err != nil {
		return market.Job{}, err
	}
	// Our own, just signed: no need to verify it again.
	offer := &protocol.Signed{Signer: m.self, Msg: msg, Raw: raw, Job: id}
	var job market.Job
	err = m.do(ctx, func() {
		m.postingHolds[id] = spec
		// The engine ranks the providers by price, then RTT.
		for i, c := range providers {
			m.eng.SetRTT(c.Provider, rtts[i])
		}
		job = *m.eng.Submit(m.clock.Now(), offer, providers)
	})
	return job, err
}

// Jobs returns copies of this node's jobs as requester.
func (m *Driver) Jobs(ctx context.Context) ([]market.Job, error) {
	var out []market.Job
	err := m.do(ctx, func() {
		for _, j := range m.eng.Jobs() {
			out = append(out, j.Copy())
		}
	})
	return out, err
}

// Job returns a copy of one job.
func (m *Driver) Job(ctx context.Context, id protocol.JobID) (market.Job, error) {
	var (
		out market.Job
		ok  bool
	)
	err := m.do(ctx, func() {
		var j *market.Job
		if j, ok = m.eng.Job(id); ok {
			out = j.Copy()
		}
	})
	if err == nil && !ok {
		err = ErrNoJob
	}
	return out, err
}

// Lookup returns copies of those of the jobs ids that this node knows.
func (m *Driver) Lookup(ctx context.Context, ids []protocol.JobID) (map[protocol.JobID]*market.Job, error) {
	known := map[protocol.JobID]*market.Job{}
	err := m.do(ctx, func() {
		for _, id := range ids {
			if j, ok := m.eng.Job(id); ok {
				c := j.Copy()
				known[id] = &c
			}
		}
	})
	return known, err
}

// Cancel cancels a job; it reports false if the job had already ended.
func (m *Driver) Cancel(ctx context.Context, id protocol.JobID) (market.Job, bool, error) {
	var (
		out       market.Job
		found, ok bool
	)
	err := m.do(ctx, func() {
		var j *market.Job
		if j, found = m.eng.Job(id); found {
			ok = m.eng.Cancel(m.clock.Now(), id, "cancelled by requester")
			out = j.Copy()
		}
	})
	if err == nil && !found {
		err = ErrNoJob
	}
	return out, ok, err
}

// End cancels the jobs named, each with its reason, that have not ended;
// it returns how many it ended.
func (m *Driver) End(ctx context.Context, reasons map[protocol.JobID]string) (int, error) {
	ended := 0
	err := m.do(ctx, func() {
		now := m.clock.Now()
		for id, reason := range reasons {
			if j, ok := m.eng.Job(id); ok && !j.State.Terminal() {
				m.eng.Cancel(now, id, reason)
				ended++
			}
		}
	})
	return ended, err
}

// Pause stops the engine from taking new work, for reason (a low disk:
// market.ReasonLowDisk), or with "" lets it take work again and queues
// the release of every ended job's posting hold still open (one whose
// release failed, say, for want of disk space). A provider's claims that
// failed are written again as their bills are accepted again.
func (m *Driver) Pause(ctx context.Context, reason string) error {
	return m.do(ctx, func() {
		m.eng.Pause(reason)
		if reason == "" {
			m.ledger.ReleaseUnawarded(m.eng.Jobs())
		}
	})
}

// Watch returns a channel of a job's states, closed when the job ends or
// ctx does.
func (m *Driver) Watch(ctx context.Context, id protocol.JobID) (<-chan market.Job, error) {
	ch := make(chan market.Job, 16)
	found := false
	err := m.do(ctx, func() {
		j, ok := m.eng.Job(id)
		if !ok {
			return
		}
		found = true
		ch <- j.Copy()
		if j.State.Terminal() {
			close(ch)
			return
		}
		w := &watcher{ch: ch}
		m.watchers[id] = append(m.watchers[id], w)
		w.stop = context.AfterFunc(ctx, func() {
			m.do(m.ctx, func() { m.unwatch(id, w) })
		})
	})
	if err == nil && !found {
		err = ErrNoJob
	}
	return ch, err
}

// watcher is a Watch caller's channel, and how to stop waiting for the
// end of its context.
type watcher struct {
	ch   chan market.Job
	stop func() bool
}

// notify passes a job's new state to its watchers. Their channels drop
// (see the package doc on queues): a slow watcher misses intermediate
// states, never the last.
func (m *Driver) notify(j *market.Job) {
	for _, w := range m.watchers[j.ID] {
		select {
		case w.ch <- j.Copy():
		default:
			// The oldest queued state makes room for the last.
			if j.State.Terminal() {
				select {
				case <-w.ch:
				default:
				}
				w.ch <- j.Copy()
			}
		}
	}
	if j.State.Terminal() {
		for _, w := range m.watchers[j.ID] {
			w.stop()
			close(w.ch)
		}
		delete(m.watchers, j.ID)
	}
}

// unwatch drops a watcher whose context ended (a client that went away)
// and closes its channel.
func (m *Driver) unwatch(id protocol.JobID, w *watcher) {
	ws := m.watchers[id]
	i := slices.Index(ws, w)
	if i < 0 {
		return // the job ended first
	}
	close(w.ch)
	if ws = slices.Delete(ws, i, i+1); len(ws) == 0 {
		delete(m.watchers, id)
	} else {
		m.watchers[id] = ws
	}
}

// IsLeaseHolder reports whether p holds the lease of this node's job with
// the given attempt.
func (m *Driver) IsLeaseHolder(id protocol.JobID, attempt uint32, p peer.ID) bool {
	ok := false
	m.do(m.ctx, func() {
		j, found := m.eng.Job(id)
		ok = found && j.Provider == p && j.Attempt == attempt
	})
	return ok
}

// LeaseNeeds reports whether p holds the lease of one of this node's
// unfinished jobs whose module or inputs include the blob cid.
func (m *Driver) LeaseNeeds(ctx context.Context, p peer.ID, cid string) bool {
	needs := false
	m.do(ctx, func() {
		for _, j := range m.eng.Jobs() {
			if j.Provider != p || j.State.Terminal() {
				continue
			}
			spec := j.Spec()
			if spec.GetModule() == cid || slices.Contains(spec.GetInputs(), cid) {
				needs = true
				return
			}
		}
	})
	return needs
}

// OfferMemory returns how many offers this provider remembers and what
// they cost in bytes.
func (m *Driver) OfferMemory(ctx context.Context) (offers, bytes int, err error) {
	err = m.do(ctx, func() { offers, bytes = m.eng.OfferMemory() })
	return offers, bytes, err
}

// Refused counts a market-related message refused outside the driver (a
// log stream's request) under the reason its error names.
func (m *Driver) Refused(err error) { m.reject(err) }

// Stats returns how many market messages of each kind reached the
// engine, and how many were refused before it, by reason.
func (m *Driver) Stats() (stepped, rejected map[string]int) {
	return counts(m.stepped), counts(m.rejected)
}

// OutboxDropped is how many market messages the outbox dropped, by why.
func (m *Driver) OutboxDropped() map[string]int { return counts(m.outbox.dropped) }

// counts reads a counter vector with one label as a map by that label.
func counts(v *prometheus.CounterVec) map[string]int {
	out := map[string]int{}
	ch := make(chan prometheus.Metric, 64)
	go func() { v.Collect(ch); close(ch) }()
	for mt := range ch {
		var pm dto.Metric
		if mt.Write(&pm) == nil && len(pm.Label) == 1 {
			out[pm.Label[0].GetValue()] = int(pm.Counter.GetValue())
		}
	}
	return out
}
