package node_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

// anHour is what the patched provider's meter reports of every run: an
// hour of wall time and an hour of GPU time.
const anHour = int64(time.Hour / time.Millisecond)

// TestPatchedProviderBillingAnHourIsPaidWhatTheRequesterObserved: a
// provider whose meter lies (a test hook rewrites each run's usage to an
// hour of wall and GPU time) bills, records in its receipt and claims
// what the honest requester accepts for runs of a few milliseconds, each
// allowed an hour (max_duration: the hold covers the hour). Each claim,
// on every member, is at most what the requester can have observed (the
// test's own submit-to-succeeded time, which contains it) plus the
// tolerance (1 s + 5 %), times the GPUs the job was handed: one for a
// process job, none for noop and wasm (billed as wall time of one unit).
// The receipt of a wasm or noop job records no GPU-ms.
//
// Before (v2, 819f6d3): the requester paid what the provider's receipt
// said, up to the hold: the whole hour (issue 17: a provider that ran
// nothing and reported 7,200,000 GPU-ms was paid 14.4 credits for 6 ms
// the requester saw), and GPU-ms were billed for wasm jobs.
func TestPatchedProviderBillingAnHourIsPaidWhatTheRequesterObserved(t *testing.T) {
	tn := startTestnet(t, 3, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = []string{"noop", "process", "wasm"}
		if i == 1 {
			// The patched provider takes whatever it is accepted (an
			// honest one keeps the result for an acceptance this short).
			cfg.Market.BillTolerance = node.BillTolerance{Fixed: time.Hour, Percent: 100}
		}
	})
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	provider := tn.Node(1)
	provider.SetUsageHook(func(*pb.Usage) *pb.Usage { return &pb.Usage{WallMs: anHour, GpuMs: anHour} })
	c := clientFor(t, tn, 2)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{provider.ID().String()})

	for _, tc := range []struct {
		name string
		req  api.JobRequest
		gpus int64 // handed
	}{
		{"noop", noopJob("interactive", "6ms", "2m"), 0},
		{"process on a GPU", api.JobRequest{Executor: "process", Command: []string{"/bin/true"}, Tier: "interactive",
			MaxPrice: 0.01, Resources: api.Resources{GPUs: 1}, Deadline: "2m"}, 1},
		{"wasm", wasmJob("sample", "echo", "six", "ms"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.MaxDuration = "1h"
			start := time.Now()
			j, err := c.SubmitJob(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
			seen := time.Since(start)
			id, err := protocol.ParseJobID(j.ID)
			if err != nil {
				t.Fatal(err)
			}
			price := uint64(math.Round(done.Price * 1e6))
			units := max(tc.gpus, 1)
			bound := market.Cost(price, units*(seen+time.Second+seen*5/100).Milliseconds(), math.MaxUint64)
			hour := market.Cost(price, units*anHour, math.MaxUint64)
			claimed := paidEverywhere(t, tn, tn.Node(2).ID(), id, provider.ID())
			t.Logf("%s: seen %v, claimed %d µ, bound %d µ, the hour billed %d µ", tc.name, seen, claimed, bound, hour)
			if claimed == 0 || claimed > bound {
				t.Fatalf("claimed %d µ for a run the requester saw for %v (bound %d µ; the hour billed: %d µ)", claimed, seen, bound, hour)
			}
			receipt := receiptOf(t, provider, provider.ID(), id)
			if receipt.Usage.WallMS != uint64(anHour) || tc.gpus == 0 && receipt.Usage.GPUMS != 0 {
				t.Fatalf("receipt usage %+v: want the patched hour, and no GPU-ms for a job handed no GPU", receipt.Usage)
			}
		})
	}
}

// receiptOf is provider's receipt entry of job in n's ledger.
func receiptOf(t *testing.T, n *node.Node, provider peer.ID, job protocol.JobID) ledger.ReceiptBody {
	t.Helper()
	es, err := n.Ledger().Entries(provider, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if r, ok := e.Body.(ledger.ReceiptBody); ok && r.Job == ledger.Hash(job) {
			return r
		}
	}
	t.Fatalf("no receipt of job %s by %s", job, provider)
	return ledger.ReceiptBody{}
}
