package node

import (
	"context"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The market's calls for the node's API and tools (see marketd.Driver).

// SubmitJob signs an offer for spec and hands it to the market, once the
// spec is valid, the disk has room and the node can sign for the credits
// it holds for the job.
func (n *Node) SubmitJob(ctx context.Context, spec *pb.JobSpec, deadline time.Time) (market.Job, error) {
	if err := protocol.CheckSpec(spec); err != nil {
		return market.Job{}, err
	}
	if err := n.diskLow(); err != nil {
		return market.Job{}, err
	}
	if err := n.ledger.CanTakeJobs(); err != nil {
		return market.Job{}, err
	}
	return n.market.Submit(ctx, spec, deadline)
}

// Jobs returns copies of this node's jobs as requester.
func (n *Node) Jobs(ctx context.Context) ([]market.Job, error) { return n.market.Jobs(ctx) }

// Job returns a copy of one job (marketd.ErrNoJob if there is none).
func (n *Node) Job(ctx context.Context, id protocol.JobID) (market.Job, error) {
	return n.market.Job(ctx, id)
}

// CancelJob cancels a job; it reports false if the job had already ended.
func (n *Node) CancelJob(ctx context.Context, id protocol.JobID) (market.Job, bool, error) {
	return n.market.Cancel(ctx, id)
}

// WatchJob returns a channel of a job's states, closed when the job ends
// or ctx does.
func (n *Node) WatchJob(ctx context.Context, id protocol.JobID) (<-chan market.Job, error) {
	return n.market.Watch(ctx, id)
}

// OfferMemory returns how many offers this provider remembers and what
// they cost in bytes.
func (n *Node) OfferMemory(ctx context.Context) (offers, bytes int, err error) {
	return n.market.OfferMemory(ctx)
}

// MarketStats returns how many market messages of each kind reached the
// engine, and how many were refused before it, by reason.
func (n *Node) MarketStats() (stepped, rejected map[string]int) { return n.market.Stats() }
