package node_test

import (
	"bytes"
	"context"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/testnet"
)

func TestConfigMarketReputation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*node.Config)
		err    string // "" for valid
	}{
		{"defaults", func(*node.Config) {}, ""},
		{"off", func(c *node.Config) { c.Market.ReputationWeight, c.Market.NewcomerShare = 0, 0 }, ""},
		{"every job to newcomers", func(c *node.Config) { c.Market.NewcomerShare = 1 }, ""},
		{"negative weight", func(c *node.Config) { c.Market.ReputationWeight = -1 }, "market.reputation_weight"},
		{"NaN weight", func(c *node.Config) { c.Market.ReputationWeight = math.NaN() }, "market.reputation_weight"},
		{"infinite weight", func(c *node.Config) { c.Market.ReputationWeight = math.Inf(1) }, "market.reputation_weight"},
		{"share over 1", func(c *node.Config) { c.Market.NewcomerShare = 1.5 }, "market.newcomer_share"},
		{"negative share", func(c *node.Config) { c.Market.NewcomerShare = -0.1 }, "market.newcomer_share"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := node.DefaultConfig(t.TempDir())
			tc.change(&cfg)
			err := cfg.Validate()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Validate = %v, want an error naming %q", err, tc.err)
			}
		})
	}
}

// rawGet returns the body of an authenticated GET of the node's API, as
// sent.
func rawGet(t *testing.T, c *api.Client, path string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", path, resp.StatusCode, b, err)
	}
	return b
}

// Reputation is computed from ledger entries only: once the ledgers agree,
// every node serves the same bytes for GET /v1/reputation, and the figures
// are those of the jobs run.
func TestReputationIdenticalOnEveryNode(t *testing.T) {
	const jobs = 8
	tn := startTestnet(t, 5, testnet.WithProviders(2))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	requesters := []int{3, 4}
	var ids []string
	for i := range jobs {
		c := clientFor(t, tn, requesters[i%2])
		if i == 0 {
			queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String(), tn.Node(2).ID().String()})
		}
		j, err := c.SubmitJob(ctx, noopJob([]string{"batch", "interactive"}[i%2], "10ms", "2m"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	ran := map[string]uint64{} // jobs paid, by provider
	for k, r := range requesters {
		var mine []string
		for i := k; i < jobs; i += 2 {
			mine = append(mine, ids[i])
		}
		for _, j := range waitJobs(t, clientFor(t, tn, r), mine, "succeeded", time.Minute) {
			ran[j.Provider]++
		}
	}
	ledgersAgree(t, tn)

	var want []byte
	for i := range tn.Len() {
		got := rawGet(t, clientFor(t, tn, i), "/v1/reputation")
		if i == 0 {
			want = got
			continue
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("node %d's reputation body differs from node 0's:\n%s\n---\n%s", i, got, want)
		}
	}
	recs, err := clientFor(t, tn, 0).Reputations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byPeer := map[string]api.ReputationInfo{}
	for _, r := range recs {
		byPeer[r.PeerID] = r
	}
	for p, n := range ran {
		r := byPeer[p]
		if r.Provider.JobsPaid != n || r.Provider.Receipts < n || r.Derived.Standing != api.StandingProven || r.Derived.Losses != 0 {
			t.Errorf("provider %s ran %d jobs; its record %+v", p, n, r)
		}
	}
	for _, i := range requesters {
		r := byPeer[tn.Node(i).ID().String()]
		if r.Requester.PaidFor != jobs/2 || r.Requester.SpentMicro == 0 || r.Requester.LeftUnpaid != 0 {
			t.Errorf("requester %d paid for %d jobs; its record %+v", i, jobs/2, r.Requester)
		}
	}
	t.Logf("%d peers with records, jobs paid by provider %v", len(recs), ran)

	// Beside each provider in GET /v1/providers: its record.
	c := clientFor(t, tn, 4)
	for _, p := range queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String(), tn.Node(2).ID().String()}) {
		if p.Reputation.Provider.JobsPaid != ran[p.PeerID] {
			t.Errorf("provider %s listed with %d jobs paid, ran %d", p.PeerID, p.Reputation.Provider.JobsPaid, ran[p.PeerID])
		}
	}
	// One peer's record, and a bad peer ID.
	one, err := c.Reputation(ctx, tn.Node(4).ID().String())
	if err != nil || one.Requester.PaidFor != jobs/2 {
		t.Fatalf("GET /v1/reputation/{peer}: %+v %v", one, err)
	}
	if _, err := c.Reputation(ctx, "12D3KooWnotapeer"); statusCode(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "peer:") {
		t.Fatalf("a bad peer ID: %v", err)
	}
}
