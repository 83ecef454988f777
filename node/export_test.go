package node

import (
	"context"
	"time"
)

// SweepReport is sweepReport, for the tests outside the package.
type SweepReport = sweepReport

// SweepHolds runs one sweep of leftover holds as if the time were now.
func (n *Node) SweepHolds(now time.Time) (SweepReport, error) {
	return n.sweepHolds(context.Background(), now)
}

// OrphanHoldAge is orphanHoldAge, for the tests outside the package.
const OrphanHoldAge = orphanHoldAge

// SetOutboxPeers sets how many peers the market outbox keeps queues for.
func (n *Node) SetOutboxPeers(max int) {
	n.market.outbox.mu.Lock()
	defer n.market.outbox.mu.Unlock()
	n.market.outbox.maxPeers = max
}

// OutboxDropped is how many market messages the outbox dropped, by why.
func (n *Node) OutboxDropped() map[string]int { return counts(n.market.outbox.dropped) }
