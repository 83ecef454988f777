package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/node/ledgerd"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// SweepHolds runs one sweep of leftover holds as if the time were now.
func (n *Node) SweepHolds(now time.Time) (ledgerd.SweepReport, error) {
	return n.ledger.SweepHolds(context.Background(), now)
}

// SetOutboxPeers sets how many peers the market outbox keeps queues for.
func (n *Node) SetOutboxPeers(max int) { n.market.SetOutboxPeers(max) }

// OutboxDropped is how many market messages the outbox dropped, by why.
func (n *Node) OutboxDropped() map[string]int { return n.market.OutboxDropped() }

// JobWrites counts the market's writes of job records, and makes the
// next ones fail on demand (a full disk, say).
type JobWrites struct {
	mu                   sync.Mutex
	inner                marketd.JobStore
	fail, failed, stored int
}

// WatchJobWrites puts a JobWrites between the market and the node's DB.
func (n *Node) WatchJobWrites() *JobWrites {
	w := &JobWrites{}
	n.market.WrapJobStore(func(inner marketd.JobStore) marketd.JobStore {
		w.inner = inner
		return w
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

// Jobs reads the records.
func (w *JobWrites) Jobs(fn func(id string, rec []byte) error) error { return w.inner.Jobs(fn) }

// PutBills writes a provider's bill records (never failed on demand).
func (w *JobWrites) PutBills(records map[string][]byte, drop []string) error {
	return w.inner.PutBills(records, drop)
}

// Bills reads the bill records.
func (w *JobWrites) Bills(fn func(key string, rec []byte) error) error { return w.inner.Bills(fn) }

// OpenBills is how many runs this provider billed and has not settled.
func (n *Node) OpenBills() int { return n.market.OpenBills() }

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

// WithholdAcceptances makes this requester stop countersigning bills
// (on), or start again.
func (n *Node) WithholdAcceptances(on bool) { n.market.WithholdAcceptances(on) }

// Awards are a job's awards as this requester holds them.
func (n *Node) Awards(id protocol.JobID) ([]market.AwardRecord, error) {
	return n.market.Awards(context.Background(), id)
}

// PausedSpans are the spans this provider's run of a job's attempt was
// paused so far (runner.PausedSpans).
func (n *Node) PausedSpans(id protocol.JobID, attempt uint32) ([]executor.Span, error) {
	return n.runner.PausedSpans(id, attempt)
}

// RunUsage is this provider's run's usage so far (runner.Usage).
func (n *Node) RunUsage(id protocol.JobID, attempt uint32) (*pb.Usage, bool) {
	return n.runner.Usage(id, attempt)
}
