package marketd

import (
	"context"
	"errors"
	"slices"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

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

// WrapRunner puts wrap's runner between the loop and the runner, for the
// runs started from the loop's next input on (a rogue provider's).
func (m *Driver) WrapRunner(wrap func(Runner) Runner) error {
	return m.do(m.ctx, func() { m.runner = wrap(m.runner) })
}

// OpenBills is how many runs this provider has billed and not settled.
func (m *Driver) OpenBills() (n int) {
	if m.do(m.ctx, func() { n = m.eng.Bills() }) != nil {
		return -1
	}
	return n
}

// WithholdAcceptances makes this requester stop countersigning bills
// (on) or start again (off): it stays online, its jobs' providers hear
// from it, but every acceptance it would sign is withheld, as a requester
// that wants the work without paying for it would.
func (m *Driver) WithholdAcceptances(on bool) { m.withhold.Store(on) }

// errWithheld is the refusal of an acceptance WithholdAcceptances holds
// back.
var errWithheld = errors.New("acceptances withheld (test hook)")

// signAcceptance signs a bill's acceptance, unless acceptances are
// withheld.
func (m *Driver) signAcceptance(a market.AcceptanceRequest) ([]byte, error) {
	if m.withhold.Load() {
		return nil, errWithheld
	}
	return m.ledger.SignAcceptance(a)
}

// Awards returns a copy of a job's awards as this requester holds them
// (what it accepted of each), read on the loop.
func (m *Driver) Awards(ctx context.Context, id protocol.JobID) ([]market.AwardRecord, error) {
	var out []market.AwardRecord
	err := m.do(ctx, func() {
		if j, ok := m.eng.Job(id); ok {
			out = slices.Clone(j.Awards)
		}
	})
	return out, err
}

// SetUsageHook has each run from now on report the usage rewrite returns
// (given the usage metered): a patched provider whose meter lies, which
// bills, records in its receipt and claims what it reports.
func (m *Driver) SetUsageHook(rewrite func(*pb.Usage) *pb.Usage) { m.usageHook.Store(&rewrite) }
