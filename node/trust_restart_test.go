package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/testnet"
)

// TestRequesterDownWhileJobsEndPaysEachProviderOnce: a requester is
// stopped while its jobs run on three providers and started again after
// every run has ended (each provider has written its receipt, and bills a
// requester that is not there). Every job succeeds; on every member the
// provider that ran a job, and no other, holds the job's final claim; no
// second provider leased any job; the requester paid for each job once.
// TestJobsSurviveRequesterRestart restarts a requester with one job
// running and checks the job records; this one checks the ledger.
//
// Before (v2, 819f6d3, and the version before bills): the provider sent
// its result once; the requester down, the result was dropped, the job
// timed out and ran again elsewhere, and the first provider held a
// receipt but was never paid (issue 17: 10 of 25 jobs after a kill -9).
func TestRequesterDownWhileJobsEndPaysEachProviderOnce(t *testing.T) {
	const jobs, requester = 6, 4
	tn := startTestnet(t, 5, testnet.WithProviders(3))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	providers := []peer.ID{tn.Node(1).ID(), tn.Node(2).ID(), tn.Node(3).ID()}
	c := clientFor(t, tn, requester)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{providers[0].String(), providers[1].String(), providers[2].String()})
	var ids []string
	for range jobs {
		j, err := c.SubmitJob(ctx, noopJob("interactive", "1500ms", "2m"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	waitJobs(t, c, ids, "running", deadline)
	req := tn.Node(requester).ID()
	if err := tn.Stop(requester); err != nil {
		t.Fatal(err)
	}
	ran := ranBy(t, tn, ids, providers)
	if err := tn.Restart(ctx, requester); err != nil {
		t.Fatal(err)
	}
	c = clientFor(t, tn, requester)
	waitJobs(t, c, ids, "succeeded", time.Minute)
	ledgersAgree(t, tn)

	for i, n := range tn.Nodes() {
		for _, id := range ids {
			job := jobHash(t, id)
			var claims, leases uint64
			for _, p := range providers {
				_, ok, err := n.Ledger().FinalClaim(req, job, p)
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					claims++
					if p != ran[id] {
						t.Errorf("node %d: job %s paid to %s, run by %s", i, id[:8], p, ran[id])
					}
				}
				l, _, err := n.Ledger().Leases(p, job)
				if err != nil {
					t.Fatal(err)
				}
				leases += l
			}
			if claims != 1 || leases != 1 {
				t.Errorf("node %d: job %s has %d final claims and %d leases, want one of each", i, id[:8], claims, leases)
			}
		}
		// An award declined (a provider's slots full) is waived: no hold
		// is left open.
		r, err := n.Ledger().Reputation(req)
		b, berr := n.Ledger().Balance(req)
		if err != nil || berr != nil || r.PaidFor != jobs || r.Awards < jobs || b.Held != 0 {
			t.Errorf("node %d: the requester's record %+v, %d held (%v, %v), want %d jobs paid for once, nothing held", i, r, b.Held, err, berr, jobs)
		}
	}
}

// ranBy waits until, for each of ids, one of providers has written its
// receipt of the job, and returns who.
func ranBy(t *testing.T, tn *testnet.Testnet, ids []string, providers []peer.ID) map[string]peer.ID {
	t.Helper()
	ran := map[string]peer.ID{}
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		for _, id := range ids {
			for i, p := range providers {
				if _, receipts, err := tn.Node(i+1).Ledger().Leases(p, jobHash(t, id)); err == nil && receipts > 0 {
					ran[id] = p
				}
			}
			if ran[id] == "" {
				return fmt.Errorf("no receipt of job %s yet", id[:8])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ran
}

func jobHash(t *testing.T, id string) ledger.Hash {
	t.Helper()
	j, err := protocol.ParseJobID(id)
	if err != nil {
		t.Fatal(err)
	}
	return ledger.Hash(j)
}
