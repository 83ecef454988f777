package node_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

// TestReputationIdenticalAfterRogueRun: on a 10-member testnet, honest
// requesters run jobs on three providers, one of them patched to report
// an hour of usage for every run (the only one that takes process jobs,
// so it gets some); beside them a rogue requester (its own entries and
// messages) has one job paid and leaves another billed and never
// accepted, after trying to release its hold. Once the ledgers agree,
// GET /v1/reputation is the same bytes on every member, and the records
// show what the rogues did: the rogue requester's two awards and one job
// paid for; a run of the provider it left unpaid (a receipt without a
// final claim); the hours the patched provider reported in its receipts
// beside the few credits it earned. TestReputationIdenticalOnEveryNode
// is the same check without rogues, on 5 members.
//
// Before (v2, 819f6d3): there was no reputation; the rogue's release
// would have been applied, and the patched provider paid its hours.
func TestReputationIdenticalAfterRogueRun(t *testing.T) {
	const patched = 3
	tn, r := trustNet(t, 10, 3, func(i int, cfg *node.Config) {
		if i == patched {
			cfg.Provider.Executors = []string{"noop", "wasm", "process"}
			// It takes whatever it is accepted (an honest provider keeps
			// the result for an acceptance this far below its bill).
			cfg.Market.BillTolerance = node.BillTolerance{Fixed: time.Hour, Percent: 100}
		}
	})
	ctx := context.Background()
	tn.Node(patched).SetUsageHook(func(*pb.Usage) *pb.Usage { return &pb.Usage{WallMs: anHour, GpuMs: anHour} })
	var want []string
	for i := 1; i <= 3; i++ {
		want = append(want, tn.Node(i).ID().String())
	}
	queryUntil(t, clientFor(t, tn, 4), api.ProviderQuery{GPU: "any"}, want)

	// The honest requesters, 4..7: noop jobs anywhere, process jobs on
	// the patched provider.
	submitted := map[int][]string{}
	for i := 4; i <= 7; i++ {
		c := clientFor(t, tn, i)
		for k := range 2 {
			req := noopJob([]string{"batch", "interactive"}[k], "10ms", "2m")
			if i == 7 {
				req = api.JobRequest{Executor: "process", Command: []string{"/bin/true"}, Tier: "interactive",
					MaxPrice: 0.01, Resources: api.Resources{GPUs: 1}, MaxDuration: "1h", Deadline: "2m"}
			}
			j, err := c.SubmitJob(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			submitted[i] = append(submitted[i], j.ID)
		}
	}
	// The rogue requester: one job paid, one left billed.
	paid, bill := r.awardJob(tn.Node(1))
	r.accept(paid, bill, bill.Amount)
	unpaid, _ := r.awardJob(tn.Node(2))
	r.refused(r.ledger.try(time.Now(), false, ledger.ReleaseBody{Job: ledger.Hash(unpaid.id), Provider: unpaid.provider}),
		ledger.ErrReleaseEarly, "the rogue's release of its unpaid job")
	for i, ids := range submitted {
		waitJobs(t, clientFor(t, tn, i), ids, "succeeded", time.Minute)
	}
	amount := paidEverywhere(t, tn, r.id(), paid.id, paid.provider)
	// The bill leaves as its receipt entry is queued: wait for that entry
	// to reach every member before the ledgers are compared.
	receipted := func() error {
		for i, n := range tn.Nodes() {
			if _, receipts, err := n.Ledger().Leases(unpaid.provider, ledger.Hash(unpaid.id)); err != nil || receipts == 0 {
				return fmt.Errorf("node %d holds no receipt of the unpaid job (%v)", i, err)
			}
		}
		return nil
	}
	if err := testnet.WaitFor(ctx, 30*time.Second, receipted); err != nil {
		t.Fatal(err)
	}
	ledgersAgree(t, tn)

	body := rawGet(t, clientFor(t, tn, 0), "/v1/reputation")
	for i := 1; i < tn.Len(); i++ {
		if got := rawGet(t, clientFor(t, tn, i), "/v1/reputation"); !bytes.Equal(got, body) {
			t.Fatalf("node %d's reputation body differs from node 0's:\n%s\n---\n%s", i, got, body)
		}
	}
	for i, n := range tn.Nodes() {
		rr, _ := n.Ledger().Reputation(r.id())
		if rr.Awards != 2 || rr.PaidFor != 1 || rr.Spent != amount || rr.LeftUnpaid != 0 {
			t.Errorf("node %d: the rogue requester's record %+v, want 2 awards, 1 paid for (%d µ)", i, rr, amount)
		}
		left, _ := n.Ledger().Reputation(unpaid.provider)
		if left.Receipts != left.JobsPaid+1 {
			t.Errorf("node %d: the provider the rogue left unpaid: %+v, want one receipt more than jobs paid", i, left)
		}
		pp, _ := n.Ledger().Reputation(tn.Node(patched).ID())
		// It reported an hour a run; it was paid for a few seconds at
		// most (max price 0.01 credits/s), and its record counts the time
		// paid for, not the time it reported.
		if pp.Receipts < 2 || pp.WallMS > pp.JobsPaid*10_000 || pp.Earned > pp.JobsPaid*10*10_000 {
			t.Errorf("node %d: the patched provider's record %+v", i, pp)
		}
	}
	t.Logf("the reputation body: %d bytes on %d members", len(body), tn.Len())
}
