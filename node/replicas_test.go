package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/testnet"
)

// rogueRunner runs the job, then returns random output in place of its
// result: a provider that does not compute what it is paid for.
type rogueRunner struct{ marketd.Runner }

func (r rogueRunner) Run(ctx context.Context, l *market.Lease) market.Outcome {
	o := r.Runner.Run(ctx, l)
	junk := make([]byte, 16)
	rand.Read(junk)
	out := []byte(hex.EncodeToString(junk))
	sum := sha256.Sum256(out)
	id, _ := protocol.BlobID(sum[:])
	o.Output, o.ResultID, o.ResultSize = out, id.String(), uint64(len(out))
	return o
}

// A rogue provider returning random output for deterministic wasm jobs
// with replicas: 3, among three honest providers, and bidding the lowest
// price so it is among every job's replicas: every job succeeds with the
// honest result, the rogue is never paid, and its reputation shows the
// verification losses identically on every node.
func TestRogueReplicaLosesEveryVote(t *testing.T) {
	const jobs = 4
	tn := startTestnet(t, 5, func(i int, cfg *node.Config) {
		testnet.WithProviders(4)(i, cfg)
		cfg.Provider.Executors = []string{"wasm"}
		if i == 1 {
			cfg.Provider.PriceInteractive /= 2 // the rogue: always among the cheapest three
		}
	})
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	rogue := tn.Node(1)
	if err := rogue.WrapRunner(func(r marketd.Runner) marketd.Runner { return rogueRunner{r} }); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 4; i++ {
		select {
		case <-tn.Node(i).Warm(): // the samples compiled
		case <-time.After(time.Minute):
			t.Fatalf("provider %d not warm", i)
		}
	}
	c := clientFor(t, tn, 0)
	var providers []string
	for i := 1; i <= 4; i++ {
		providers = append(providers, tn.Node(i).ID().String())
	}
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, providers)

	var ids []string
	for i := range jobs {
		req := wasmJob("sample", "echo", "replica", fmt.Sprint(i))
		req.Verify = &api.Verify{Replicas: 3}
		j, err := c.SubmitJob(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	start := time.Now()
	for i, id := range ids {
		if err := testnet.WaitFor(ctx, 45*time.Second, func() error {
			j, err := c.Job(ctx, id)
			if err == nil && j.State != "succeeded" {
				err = fmt.Errorf("job %s is %s (%s)", id[:8], j.State, j.Error)
			}
			return err
		}); err != nil {
			jid, _ := protocol.ParseJobID(id)
			mj, _ := tn.Node(0).MarketJob(jid)
			t.Fatalf("%v; awards %+v", err, mj.Awards)
		}
		j := waitJobs(t, c, []string{id}, "succeeded", 45*time.Second)[id]
		jid, _ := protocol.ParseJobID(id)
		mj, _ := tn.Node(0).MarketJob(jid)
		t.Logf("job %d succeeded after %v (created %v, ended %v)", i, time.Since(start), mj.Created.Format("05.000"), mj.Updated.Format("05.000"))
		for _, a := range mj.Awards {
			t.Logf("  award %d: leased %v, billed %v, %s", a.Attempt, a.Leased.Format("05.000"), a.BillAt.Format("05.000"), a.Verdict)
		}
		want := fmt.Sprintf("replica %d\n", i)
		if got := string(result(t, c, j)); got != want || j.Provider == rogue.ID().String() {
			t.Fatalf("job %d: result %q from %s, want %q from an honest provider", i, got, j.Provider, want)
		}
	}
	// The requester releases the rogue's holds once the receipts that
	// outvote it are in its ledger; each honest replica claims once its
	// ledger holds the majority.
	err := testnet.WaitFor(ctx, deadline, func() error {
		rec, err := c.Reputation(ctx, rogue.ID().String())
		if err != nil {
			return err
		}
		if p := rec.Provider; p.Receipts < 1 || p.VerificationLosses != p.Receipts {
			return fmt.Errorf("the rogue's record: %+v", p)
		}
		var paid uint64
		for i := 2; i <= 4; i++ {
			r, err := c.Reputation(ctx, tn.Node(i).ID().String())
			if err != nil {
				return err
			}
			paid += r.Provider.JobsPaid
		}
		if want := 3*jobs - rec.Provider.Receipts; paid != want {
			return fmt.Errorf("honest replicas paid %d times, want %d", paid, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ledgersAgree(t, tn)

	var first []byte
	for i := range tn.Len() {
		got := rawGet(t, clientFor(t, tn, i), "/v1/reputation/"+rogue.ID().String())
		if i == 0 {
			first = got
		} else if !bytes.Equal(got, first) {
			t.Fatalf("node %d's record of the rogue differs from node 0's:\n%s\n---\n%s", i, got, first)
		}
	}
	rec, err := c.Reputation(ctx, rogue.ID().String())
	if err != nil {
		t.Fatal(err)
	}
	p := rec.Provider
	if p.JobsPaid != 0 || p.EarnedMicro != 0 || p.VerificationLosses == 0 || p.VerificationLosses != p.Receipts {
		t.Fatalf("the rogue's record: %+v; want nothing paid and a verification loss for each receipt", p)
	}
	t.Logf("the rogue's record: %+v", p)
}
