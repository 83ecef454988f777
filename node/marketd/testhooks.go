package marketd

import "github.com/mira-market/mira/protocol/pb"

// Hooks for the node's tests, which drive a whole node and reach the
// driver through it (node/export_test.go).

// SetOutboxPeers sets how many peers the outbox keeps queues for
// (maxOutboxPeers), so that a test can fill it with a few.
func (m *Driver) SetOutboxPeers(max int) {
	m.outbox.mu.Lock()
	defer m.outbox.mu.Unlock()
	m.outbox.maxPeers = max
}

// WrapJobStore puts wrap's store between the loop and the job store, from
// the loop's next Ready on (a test's store that fails on demand).
func (m *Driver) WrapJobStore(wrap func(JobStore) JobStore) error {
	return m.do(m.ctx, func() { m.jobs = wrap(m.jobs) })
}

// OpenBills is how many runs this provider has billed and not settled.
func (m *Driver) OpenBills() (n int) {
	if m.do(m.ctx, func() { n = m.eng.Bills() }) != nil {
		return -1
	}
	return n
}

// SetUsageHook has each run from now on report the usage rewrite returns
// (given the usage metered): a patched provider whose meter lies, which
// bills, records in its receipt and claims what it reports.
func (m *Driver) SetUsageHook(rewrite func(*pb.Usage) *pb.Usage) { m.usageHook.Store(&rewrite) }
