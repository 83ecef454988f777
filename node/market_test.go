package node_test

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/testnet"
)

func noopJob(tier, sleep, deadline string) api.JobRequest {
	return api.JobRequest{
		Executor: "noop", Args: []string{sleep}, Tier: tier, MaxPrice: 0.01,
		Resources:   api.Resources{GPUs: 1},
		MaxDuration: "30s", Deadline: deadline,
	}
}

// waitJobs polls until every job is in state want, and its hold (if it
// has one) settled once it has ended.
func waitJobs(t *testing.T, c *api.Client, ids []string, want string, timeout time.Duration) map[string]api.JobInfo {
	t.Helper()
	final := map[string]api.JobInfo{}
	err := testnet.WaitFor(context.Background(), timeout, func() error {
		for _, id := range ids {
			if _, done := final[id]; done {
				continue
			}
			j, err := c.Job(context.Background(), id)
			if err != nil {
				return err
			}
			if j.State != want {
				return fmt.Errorf("job %s is %s (declines %v, error %q)", id[:8], j.State, j.Declines, j.Error)
			}
			// Its hold is settled right after it ends, off the market loop.
			if market.State(want).Terminal() && j.Payment != nil && j.Payment.State == "held" {
				return fmt.Errorf("job %s is %s, its hold not settled yet", id[:8], j.State)
			}
			final[id] = j
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return final
}

func TestJobsOfBothTiersSucceedOnce(t *testing.T) {
	const perTier = 50
	tn := startTestnet(t, 10, testnet.WithProviders(3))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClientFromDataDir(tn.Dir(9))
	if err != nil {
		t.Fatal(err)
	}
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String(), tn.Node(2).ID().String(), tn.Node(3).ID().String()})

	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
	)
	for _, tier := range []string{"interactive", "batch"} {
		for range perTier {
			wg.Add(1)
			go func() {
				defer wg.Done()
				j, err := c.SubmitJob(ctx, noopJob(tier, "10ms", "2m"))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ids = append(ids, j.ID)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	final := waitJobs(t, c, ids, "succeeded", 2*time.Minute)
	providers := map[string]bool{}
	for id, j := range final {
		// Awards a full provider turned down are not leases, and a batch
		// lease given up for interactive work ended before the next began:
		// exactly one lease ran to its result. (A provider whose
		// acceptance came after the accept timeout may still have run the
		// job; its result is refused and counted, not accepted.)
		if j.Leases-j.Preemptions != 1 || j.Provider == "" || j.Output == "" {
			t.Errorf("job %s: leases %d, preemptions %d, provider %q, output %q, refused results %d",
				id[:8], j.Leases, j.Preemptions, j.Provider, j.Output, j.RefusedResults)
		}
		providers[j.Provider] = true
	}
	if len(final) != 2*perTier {
		t.Fatalf("%d jobs ended, want %d", len(final), 2*perTier)
	}
	preempted := 0
	for _, j := range final {
		preempted += j.Preemptions
	}
	t.Logf("%d jobs over %d providers, %d batch leases preempted", len(final), len(providers), preempted)

	// Settlement: each succeeded job is paid exactly once, by the final
	// claim of the provider whose result was accepted, and every ledger
	// ends with the same entries and the genesis total.
	paid := 0
	for id, j := range final {
		if j.Payment == nil || j.Payment.State != "paid" || j.Payment.To != j.Provider || j.Cost <= 0 {
			t.Errorf("job %s: payment %+v, cost %v", id[:8], j.Payment, j.Cost)
			continue
		}
		paid++
	}
	ledgersAgree(t, tn)
	requester := tn.Node(9).ID()
	settled := settlements(t, tn.Node(9), requester)
	for id, j := range final {
		// The posting hold was replaced by the award's hold, naming the
		// provider, in one entry: the requester released nothing and paid
		// nothing itself; the provider's final claim drew on the hold.
		provider, _ := peer.Decode(j.Provider)
		s := settled[mustHash(t, id)]
		if !s.paidOnceTo(provider) || s.Posted != 1 || s.Named < 1 || s.ReleasedPosted+s.ReleasedNamed != 0 {
			t.Errorf("job %s: settlement %+v, want one final claim by %s, one posting hold replaced by named holds, no release",
				id[:8], s, provider)
		}
		// The provider's records of its run: the ledger took a lease
		// (backed by a hold) and its receipt, and keeps nothing waiting.
		job, _ := hex.DecodeString(id)
		leases, receipts, err := tn.Node(9).Ledger().Leases(provider, ledger.Hash(job))
		if err != nil || leases < 1 || receipts < 1 || receipts > leases {
			t.Errorf("job %s: the provider's chain has %d leases and %d receipts (%v)", id[:8], leases, receipts, err)
		}
	}
	for i, n := range tn.Nodes() {
		if p := n.Ledger().PendingLen(); p > 0 {
			t.Errorf("node %d keeps %d ledger entries waiting", i, p)
		}
	}
	t.Logf("%d jobs paid", paid)
}

func TestProviderStoppedMidLeaseJobMovesOn(t *testing.T) {
	tn := startTestnet(t, 5, testnet.WithProviders(2))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClientFromDataDir(tn.Dir(4))
	if err != nil {
		t.Fatal(err)
	}
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String(), tn.Node(2).ID().String()})
	j, err := c.SubmitJob(ctx, noopJob("interactive", "20s", "2m"))
	if err != nil {
		t.Fatal(err)
	}
	running := waitJobs(t, c, []string{j.ID}, "running", deadline)[j.ID]
	victim := 1
	if running.Provider == tn.Node(2).ID().String() {
		victim = 2
	}
	if err := tn.Stop(victim); err != nil {
		t.Fatal(err)
	}
	// Heartbeats stop; the job returns to the market and the other
	// provider runs it to the end (20 s of noop).
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if done.Provider == running.Provider || done.Attempt < 2 || done.Leases != 2 {
		t.Fatalf("after the stop: provider %s (was %s), attempt %d, leases %d", done.Provider, running.Provider, done.Attempt, done.Leases)
	}
	// The posting's hold, naming no provider, was replaced by the first
	// award's hold naming the victim; the second award held again, naming
	// its provider, whose final claim paid the job. The victim's hold
	// stays open until it expires (and the victim's chain shows that
	// time): only the victim could close it before.
	survivor := tn.Node(3 - victim).ID()
	victimID, err := peer.Decode(running.Provider) // its node is stopped
	if err != nil {
		t.Fatal(err)
	}
	var kinds []ledger.Kind
	var named []peer.ID
	chain := allEntries(t, tn.Node(4))
	slices.SortFunc(chain, func(a, b ledger.Entry) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, e := range chain {
		if e.Account == tn.Node(4).ID() && e.Kind() != ledger.KindGrant {
			kinds = append(kinds, e.Kind())
			if h, ok := e.Body.(ledger.HoldBody); ok {
				named = append(named, h.Provider)
			}
		}
	}
	want := []ledger.Kind{ledger.KindHold, ledger.KindHold, ledger.KindHold}
	if !slices.Equal(kinds, want) || !slices.Equal(named, []peer.ID{"", victimID, survivor}) {
		t.Fatalf("requester's entries %v (want %v), holds naming %v", kinds, want, named)
	}
	s := settlements(t, tn.Node(4), tn.Node(4).ID())[mustHash(t, j.ID)]
	if !s.paidOnceTo(survivor) || done.Payment == nil || done.Payment.State != "paid" || done.Payment.To != survivor.String() {
		t.Fatalf("settlement %+v, payment %+v; want one final claim by %s", s, done.Payment, survivor)
	}
	left, ok, err := tn.Node(4).Ledger().HoldOf(tn.Node(4).ID(), mustHash(t, j.ID), victimID)
	if err != nil || !ok || done.Payment.Held != float64(left.Amount)/1e6 {
		t.Fatalf("the victim's hold %+v (open %v, %v); the job's payment says %v held", left, ok, err, done.Payment.Held)
	}
}

func TestUnservableJobExpiresWithDeclines(t *testing.T) {
	tn := startTestnet(t, 3, testnet.WithProviders(1)) // one H100 provider
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClientFromDataDir(tn.Dir(2))
	if err != nil {
		t.Fatal(err)
	}
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	req := noopJob("batch", "0s", "3s")
	req.Resources.GPUs = 8 // more than anyone has
	j, err := c.SubmitJob(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	final := waitJobs(t, c, []string{j.ID}, "expired", deadline)[j.ID]
	if len(final.Declines) == 0 || final.Declines[0].Reason != "no fitting GPU" {
		t.Fatalf("declines = %+v", final.Declines)
	}
}

func TestJobAPIErrors(t *testing.T) {
	tn := startTestnet(t, 1, nil)
	c, err := api.NewClientFromDataDir(tn.Dir(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		req   api.JobRequest
		field string
	}{
		{"no executor", api.JobRequest{Tier: "batch", MaxDuration: "1s", Deadline: "1m"}, "executor"},
		{"bad tier", api.JobRequest{Executor: "noop", Tier: "urgent", MaxDuration: "1s", Deadline: "1m"}, "tier"},
		{"bad duration", api.JobRequest{Executor: "noop", Tier: "batch", MaxDuration: "soon", Deadline: "1m"}, "max_duration"},
		{"bad deadline", api.JobRequest{Executor: "noop", Tier: "batch", MaxDuration: "1s", Deadline: "tomorrow"}, "deadline"},
		{"past deadline", api.JobRequest{Executor: "noop", Tier: "batch", MaxDuration: "1s", Deadline: "2020-01-01T00:00:00Z"}, "deadline"},
		{"deadline past the longest job life", api.JobRequest{Executor: "noop", Tier: "batch", MaxDuration: "1s", Deadline: "24h1m"}, "deadline"},
		{"negative gpus", api.JobRequest{Executor: "noop", Tier: "batch", MaxDuration: "1s", Deadline: "1m", Resources: api.Resources{GPUs: -1}}, "resources"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.SubmitJob(ctx, tc.req)
			se, ok := err.(*api.StatusError)
			if !ok || se.Code != 400 || !strings.Contains(se.Message, tc.field) {
				t.Fatalf("err = %v, want a 400 naming %q", err, tc.field)
			}
		})
	}
	if _, err := c.Job(ctx, "nope"); err == nil || err.(*api.StatusError).Code != 404 {
		t.Fatalf("unknown job: %v", err)
	}
	j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	// Not finished yet: no result.
	if _, _, err := c.JobResult(ctx, j.ID); statusCode(err) != 409 {
		t.Fatalf("result of a pending job: %v, want 409", err)
	}
	// The 16 digits `mira job ls` shows name the job; 7 are too few.
	if got, err := c.Job(ctx, strings.ToUpper(j.ID[:16])); err != nil || got.ID != j.ID {
		t.Fatalf("job by its prefix: %+v, %v", got, err)
	}
	for _, bad := range []string{j.ID[:7], j.ID[:15] + "x"} {
		if _, err := c.Job(ctx, bad); statusCode(err) != 404 {
			t.Fatalf("job %q: %v, want 404", bad, err)
		}
	}
	cancelled, err := c.CancelJob(ctx, j.ID[:16])
	if err != nil || cancelled.State != "cancelled" || cancelled.ID != j.ID {
		t.Fatalf("cancel: %+v, %v", cancelled, err)
	}
	// Cancelled before any run: no result, an empty log.
	if _, _, err := c.JobResult(ctx, j.ID); statusCode(err) != 404 {
		t.Fatalf("result of a cancelled job: %v, want 404", err)
	}
	for _, tc := range []struct {
		name string
		do   func() error
		code int
	}{
		{"logs of an unknown job", func() error { _, err := c.JobLogs(ctx, "00", false); return err }, 404},
		{"bad follow", func() error { return c.Do(ctx, "GET", "/v1/jobs/"+j.ID+"/logs?follow=maybe", nil, nil) }, 400},
		{"unknown blob", func() error {
			_, err := c.Blob(ctx, "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
			return err
		}, 404},
		{"not a content ID", func() error { _, err := c.Blob(ctx, "nonsense"); return err }, 404},
		{"balance of a bad account", func() error { _, err := c.Balance(ctx, "nobody"); return err }, 400},
		{"entries after -1", func() error { return c.Do(ctx, "GET", "/v1/ledger/entries?after=-1", nil, nil) }, 400},
		{"entries limit 0", func() error { return c.Do(ctx, "GET", "/v1/ledger/entries?limit=0", nil, nil) }, 400},
		{"job with a bad input", func() error {
			req := noopJob("batch", "0s", "1m")
			req.Inputs = []string{"nonsense"}
			_, err := c.SubmitJob(ctx, req)
			return err
		}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code := statusCode(tc.do()); code != tc.code {
				t.Fatalf("status %d, want %d", code, tc.code)
			}
		})
	}
	// A blob round trip, and the ledger of a fresh node.
	info, err := c.PutBlob(ctx, strings.NewReader("some input"))
	if err != nil || info.Size != 10 {
		t.Fatalf("put blob: %+v, %v", info, err)
	}
	if b, err := c.Balance(ctx, ""); err != nil || b.Balance != float64(testnet.DefaultCredits)/1e6 {
		t.Fatalf("balance %+v, %v; want the genesis grant", b, err)
	}
	if v, err := c.VerifyLedger(ctx); err != nil || !v.OK || v.Entries < 1 {
		t.Fatalf("verify: %+v, %v", v, err)
	}
}

// statusCode is the HTTP status of an API error (0 for none or another
// kind of error).
func statusCode(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func clientFor(t *testing.T, tn *testnet.Testnet, i int) *api.Client {
	t.Helper()
	c, err := api.NewClientFromDataDir(tn.Dir(i))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestJobsSurviveRequesterRestart(t *testing.T) {
	tn := startTestnet(t, 3, testnet.WithProviders(1))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 2)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	done, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	before := waitJobs(t, c, []string{done.ID}, "succeeded", deadline)[done.ID]
	long, err := c.SubmitJob(ctx, noopJob("interactive", "3s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{long.ID}, "running", deadline)

	if err := tn.Stop(2); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(ctx, 2); err != nil {
		t.Fatal(err)
	}
	c = clientFor(t, tn, 2) // new token and port
	after, err := c.Job(ctx, done.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.State != "succeeded" || after.Provider != before.Provider || after.Output != before.Output || len(after.Bids) != len(before.Bids) {
		t.Fatalf("finished job after restart: %+v, before %+v", after, before)
	}
	// The running job carries on: its provider's result (or, if that was
	// lost while the requester was down, a re-run) completes it.
	waitJobs(t, c, []string{long.ID}, "succeeded", time.Minute)

	// A result that came inline is kept in the job record: it is served
	// with its provider gone.
	if err := tn.Stop(1); err != nil {
		t.Fatal(err)
	}
	if got := string(result(t, c, after)); got == "" || got != before.Output {
		t.Fatalf("result after restart, provider stopped: %q, want %q", got, before.Output)
	}
	// It is a blob on the requester too (say, an input of a later job).
	if err := testnet.WaitFor(ctx, deadline, func() error {
		rc, err := c.Blob(ctx, after.ResultID)
		if err != nil {
			return err
		}
		defer rc.Close()
		if b, err := io.ReadAll(rc); err != nil || string(b) != before.Output {
			return fmt.Errorf("result blob %q (%v), want %q", b, err, before.Output)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A job's change whose write fails is not lost: the market keeps it and
// tries again, and it reaches the disk. The change here, a cancel, is the
// job's last: no later change of the job would write it.
func TestFailedJobWriteIsRetried(t *testing.T) {
	tn := startTestnet(t, 2, nil) // no provider: the job waits for bids
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const req = 1
	writes := tn.Node(req).WatchJobWrites()
	c := clientFor(t, tn, req)
	j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitWrites := func(what string, stored, failed int) {
		t.Helper()
		if err := testnet.WaitFor(ctx, deadline, func() error {
			if s, f := writes.Counts(); s < stored || f < failed {
				return fmt.Errorf("%s: %d writes stored, %d failed", what, s, f)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitWrites("the posted job", 1, 0)
	stored, _ := writes.Counts()
	writes.FailNext(1)
	if _, err := c.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	waitWrites("the cancel, tried again", stored+1, 1)
	if err := tn.Stop(req); err != nil {
		t.Fatal(err)
	}
	var rec market.Job
	if err := json.Unmarshal(jobRecords(t, tn.Dir(req), []string{j.ID})[j.ID], &rec); err != nil {
		t.Fatal(err)
	}
	if rec.State != market.Cancelled {
		t.Fatalf("the job's record on disk is %s, want %s", rec.State, market.Cancelled)
	}
}

// A watcher that goes away (an events client that disconnects) is dropped
// at once, not kept until its job ends.
func TestWatchEndsWithItsContext(t *testing.T) {
	tn := startTestnet(t, 2, testnet.WithProviders(1))
	ctx := context.Background()
	c := clientFor(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	j, err := c.SubmitJob(ctx, noopJob("interactive", "20s", "2m"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := protocol.ParseJobID(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	states, err := tn.Node(0).WatchJob(wctx, id)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	timeout := time.After(deadline)
	for {
		select {
		case s, ok := <-states:
			if !ok {
				return
			}
			if s.State.Terminal() {
				t.Fatalf("job ended (%s) before the watch was dropped", s.State)
			}
		case <-timeout:
			t.Fatal("the watch's channel stayed open after its context ended")
		}
	}
}

// A job stored with an offer that today's checks refuse is ended with a
// reason when the node restarts, not offered again: every peer would
// refuse the offer, and (on gossip) score the requester down for it.
// One was stored before the 24 h lifetime bound (its deadline 24.5 h
// after its creation); one by a clock since set back two hours (created
// in the future, its deadline too far ahead of every peer's clock).
func TestRestoredJobWithAnOfferNowInvalidIsEnded(t *testing.T) {
	tn := startTestnet(t, 3, testnet.WithProviders(1)) // 0 bootstrap, 1 provider, 2 requester
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const req = 2
	key, err := node.LoadIdentity(tn.Dir(req))
	if err != nil {
		t.Fatal(err)
	}
	requester := tn.Node(req).ID()
	now := time.Now()
	stored := map[string][]byte{}
	var ids []protocol.JobID
	for _, created := range []time.Time{now.Add(-time.Hour), now.Add(2 * time.Hour)} {
		dl := created.Add(protocol.MaxJobLifetime + 30*time.Minute)
		if created.After(now) {
			dl = created.Add(protocol.MaxJobLifetime - 30*time.Minute)
		}
		m := offerFrom(requester, dl)
		m.GetOffer().CreatedUnixMs = created.UnixMilli()
		raw, err := protocol.SealMarket(key, "testnet", dl, m)
		if err != nil {
			t.Fatal(err)
		}
		id, err := protocol.OfferJobID(m.GetOffer())
		if err != nil {
			t.Fatal(err)
		}
		// A batch job whose window ended: restored, it is offered again
		// (the next round) at once.
		rec, err := json.Marshal(market.Job{Offer: raw, Round: 1, Tier: protocol.TierBatch, MaxPrice: 1e6, Deadline: dl,
			State: market.Bidding, Created: created, Updated: created, Bids: []market.Bid{}, Declines: []market.Decline{},
			WindowEnds: now.Add(-time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		stored[id.String()] = rec
		ids = append(ids, id)
	}
	if err := tn.Stop(req); err != nil {
		t.Fatal(err)
	}
	db := dbOf(t, tn.Dir(req))
	if err := db.PutJobs(stored); err != nil {
		t.Fatal(err)
	}
	db.Close()
	provider := tn.Node(1)
	stepped0, _ := provider.MarketStats()
	rejected0 := rejectedTotal(provider)
	if err := tn.Restart(ctx, req); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		var j market.Job
		if err := testnet.WaitFor(ctx, deadline, func() error {
			if j, err = tn.Node(req).Job(ctx, id); err != nil {
				return err
			}
			if j.State != market.Failed {
				return fmt.Errorf("job %s is %s in round %d", id.String()[:8], j.State, j.Round)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if j.Round != 1 || !strings.Contains(j.Error, "offer") {
			t.Fatalf("job %s: round %d, error %q; want it ended in its stored round, the reason naming its offer", id.String()[:8], j.Round, j.Error)
		}
	}
	// Nothing went out: a later job's offers reach the provider, and the
	// provider refused none since the restart (it would have refused the
	// ended jobs' offers, as malformed or too far ahead).
	c := clientFor(t, tn, req)
	j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{j.ID}, "succeeded", deadline)
	stepped, _ := provider.MarketStats()
	_, rejected := provider.MarketStats()
	if n, r := stepped["offer"]-stepped0["offer"], rejectedTotal(provider)-rejected0; n < 1 || r != 0 {
		t.Fatalf("the provider took %d offers and refused %d since the restart (%v), want the later job's and none", n, r, rejected)
	}
}
