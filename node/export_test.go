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
