package node

import (
	"context"
	"errors"
	"sync"
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

// JobWrites counts the market's writes of job records, and makes the
// next ones fail on demand (a full disk, say).
type JobWrites struct {
	mu                   sync.Mutex
	inner                jobStore
	fail, failed, stored int
}

// WatchJobWrites puts a JobWrites between the market and the node's DB.
func (n *Node) WatchJobWrites() *JobWrites {
	w := &JobWrites{}
	n.market.do(n.runCtx, func() {
		w.inner = n.market.jobs
		n.market.jobs = w
	})
	return w
}

// PutJobs writes the records, or fails if a failure is due.
func (w *JobWrites) PutJobs(records map[string][]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail > 0 {
		w.fail--
		w.failed++
		return errors.New("injected: no space left on device")
	}
	if err := w.inner.PutJobs(records); err != nil {
		return err
	}
	w.stored++
	return nil
}

// FailNext makes the next k writes fail.
func (w *JobWrites) FailNext(k int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fail = k
}

// Counts are how many writes were stored and how many failed.
func (w *JobWrites) Counts() (stored, failed int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stored, w.failed
}
