package node

import (
	"context"
	"time"

	"github.com/mira-market/mira/node/ledgerd"
)

// SweepHolds runs one sweep of leftover holds as if the time were now.
func (n *Node) SweepHolds(now time.Time) (ledgerd.SweepReport, error) {
	return n.ledger.SweepHolds(context.Background(), now)
}

// SetOutboxPeers sets how many peers the market outbox keeps queues for.
func (n *Node) SetOutboxPeers(max int) {
	n.market.outbox.mu.Lock()
	defer n.market.outbox.mu.Unlock()
	n.market.outbox.maxPeers = max
}

// OutboxDropped is how many market messages the outbox dropped, by why.
func (n *Node) OutboxDropped() map[string]int { return counts(n.market.outbox.dropped) }
