package node

import (
	"context"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/protocol"
)

// WrapRunner puts wrap's runner between the market and the node's runner
// (a rogue provider's).
func (n *Node) WrapRunner(wrap func(marketd.Runner) marketd.Runner) error {
	return n.market.WrapRunner(wrap)
}

// MarketJob is the market's record of one of this requester's jobs.
func (n *Node) MarketJob(id protocol.JobID) (market.Job, error) {
	return n.market.Job(context.Background(), id)
}
