package node_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

func TestConfigSettlementInterval(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		err      string // "" for valid
	}{
		{"default", market.DefaultSettlementInterval, ""},
		{"a testnet's", 2 * time.Second, ""},
		{"the shortest", node.MinSettlementInterval, ""},
		{"shorter", 500 * time.Millisecond, "market.settlement_interval"},
		{"zero", 0, "market.settlement_interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := node.DefaultConfig(t.TempDir())
			if cfg.Market.SettlementInterval != node.Duration(market.DefaultSettlementInterval) {
				t.Fatalf("default %v", time.Duration(cfg.Market.SettlementInterval))
			}
			cfg.Market.SettlementInterval = node.Duration(tc.interval)
			err := cfg.Validate()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Validate = %v, want an error naming %q", err, tc.err)
			}
		})
	}
}

// paygInterval is the settlement interval of the pay-as-you-go testnet:
// interim bills every 3 s, a pause after 1 s unanswered, a run stopped
// after 8 s paused.
const paygInterval = 4 * time.Second

// paygSlack is what the engine's timer and the messages may add to a
// bound (a tick late, a bill in flight).
const paygSlack = 500 * time.Millisecond

// longJob is a long noop job on requester rq, run by provider pv.
type longJob struct {
	tn     *testnet.Testnet
	rq, pv *node.Node
	c      *api.Client
	id     protocol.JobID
}

// startLongJob submits a noop job that sleeps for sleep on requester i
// and waits until it has countersigned its first interim bill.
func startLongJob(t *testing.T, tn *testnet.Testnet, i int, sleep string) *longJob {
	t.Helper()
	c := clientFor(t, tn, i)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	req := noopJob("interactive", sleep, "2m")
	req.MaxDuration = "60s"
	info, err := c.SubmitJob(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	id, err := protocol.ParseJobID(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	j := &longJob{tn: tn, rq: tn.Node(i), pv: tn.Node(1), c: c, id: id}
	j.waitFor(t, 20*time.Second, func(a market.AwardRecord) error {
		if a.Accepted == 0 {
			return errors.New("no interim bill countersigned yet")
		}
		return nil
	})
	return j
}

// award is the requester's record of the job's award to the provider.
func (j *longJob) award(t *testing.T) market.AwardRecord {
	t.Helper()
	awards, err := j.rq.Awards(j.id)
	if err != nil || len(awards) != 1 || awards[0].Provider != j.pv.ID() {
		t.Fatalf("awards %+v, %v: want one, to the provider", awards, err)
	}
	return awards[0]
}

func (j *longJob) waitFor(t *testing.T, timeout time.Duration, cond func(market.AwardRecord) error) {
	t.Helper()
	if err := testnet.WaitFor(context.Background(), timeout, func() error {
		awards, err := j.rq.Awards(j.id)
		if err != nil || len(awards) == 0 {
			return fmt.Errorf("awards %v, %v", awards, err)
		}
		return cond(awards[0])
	}); err != nil {
		t.Fatal(err)
	}
}

// waitPaused waits until the provider's run is paused (resumed: until
// the pause ended) and returns its usage then.
func (j *longJob) waitPaused(t *testing.T, paused bool) *pb.Usage {
	t.Helper()
	attempt := j.award(t).Attempt
	if err := testnet.WaitFor(context.Background(), 3*paygInterval, func() error {
		spans, err := j.pv.PausedSpans(j.id, attempt)
		switch {
		case err != nil:
			return err
		case len(spans) != 1:
			return fmt.Errorf("paused spans %+v, want one", spans)
		case spans[0].End.IsZero() != paused:
			return fmt.Errorf("paused span %+v, want it open: %v", spans[0], paused)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	u, _ := j.pv.RunUsage(j.id, attempt)
	return u
}

// cost is what ms of a noop job (billed as wall time of one unit) cost at
// price.
func cost(price uint64, ms int64) uint64 { return market.Cost(price, ms, math.MaxUint64) }

// A long job whose requester stops countersigning its interim bills is
// paused a quarter interval after the unanswered bill, and resumed when
// the requester answers again: it ends succeeded, paid its usage, which
// leaves the pause out. While it was paused, the provider had run at most
// one interval beyond what the requester had countersigned. A requester
// that never answers again: the run is stopped after the grace period,
// and the provider claims the last amount countersigned, on every node's
// ledger; it lost at most one interval, and the requester paid no more
// than it observed.
func TestLongJobPausedWhileRequesterWithholdsAcceptances(t *testing.T) {
	tn := startTestnet(t, 3, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Market.SettlementInterval = node.Duration(paygInterval)
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	t.Run("resumed", func(t *testing.T) {
		t.Parallel()
		j := startLongJob(t, tn, 0, "10s")
		paused := j.withhold(t)
		if info, err := j.c.Job(context.Background(), j.id.String()); err != nil || info.State != "running" {
			t.Fatalf("paused job: %+v, %v: want it running", info, err)
		}
		j.rq.WithholdAcceptances(false)
		j.waitPaused(t, false)
		done := waitJobs(t, j.c, []string{j.id.String()}, "succeeded", 30*time.Second)[j.id.String()]
		if done.Usage == nil || done.Usage.WallMS < paused.WallMs || done.Usage.WallMS > 10_000+paygSlack.Milliseconds() {
			t.Fatalf("usage %+v: want the 10 s run without its pause", done.Usage)
		}
		if a := j.award(t); !a.Final || a.Accepted != cost(a.Price, done.Usage.WallMS) {
			t.Fatalf("final acceptance %d (final %v), want the usage's %d", a.Accepted, a.Final, cost(a.Price, done.Usage.WallMS))
		}
	})
	t.Run("never again", func(t *testing.T) {
		t.Parallel()
		j := startLongJob(t, tn, 2, "30s")
		leased, stopped := j.award(t).Leased, time.Now()
		paused := j.withhold(t)
		a := j.award(t)
		claimed := j.waitClaimed(t)
		if claimed != a.Accepted {
			t.Fatalf("claimed %d, the requester's last acceptance was %d", claimed, a.Accepted)
		}
		if _, err := j.pv.PausedSpans(j.id, a.Attempt); err == nil {
			t.Fatal("the run still goes after the grace period")
		}
		if ran := cost(a.Price, paused.WallMs); ran > claimed+cost(a.Price, (paygInterval+paygSlack).Milliseconds()) {
			t.Fatalf("the provider ran %d, claimed %d: lost more than an interval", ran, claimed)
		}
		spec := &pb.JobSpec{Executor: "noop", MaxDurationMs: 60_000, Resources: &pb.Resources{Gpus: 1}}
		observed := market.BillCap(a.Price, spec, stopped.Sub(leased), market.DefaultBillTolerance, math.MaxUint64)
		t.Logf("claimed %d; the requester observed %v (%d with the tolerance) before it went silent", claimed, stopped.Sub(leased), observed)
		if claimed > observed {
			t.Fatalf("the requester paid %d, more than the %d it observed", claimed, observed)
		}
	})
}

// withhold makes the requester stop countersigning and waits for the
// pause; it checks the provider's risk then: what it ran beyond the
// requester's last acceptance is at most one interval's price.
func (j *longJob) withhold(t *testing.T) *pb.Usage {
	t.Helper()
	j.rq.WithholdAcceptances(true)
	t.Cleanup(func() { j.rq.WithholdAcceptances(false) })
	u := j.waitPaused(t, true)
	a := j.award(t)
	t.Logf("paused after %d ms run (%d µcredits), %d countersigned; an interval costs %d", u.GetWallMs(),
		cost(a.Price, u.GetWallMs()), a.Accepted, cost(a.Price, paygInterval.Milliseconds()))
	if ran := cost(a.Price, u.GetWallMs()); ran > a.Accepted+cost(a.Price, (paygInterval+paygSlack).Milliseconds()) {
		t.Fatalf("paused after running %d ms (%d) with %d countersigned: more than an interval unpaid", u.GetWallMs(), ran, a.Accepted)
	}
	return u
}

// waitClaimed waits until every node's ledger shows the provider's claim
// of the job's hold, not closing it, and returns the amount.
func (j *longJob) waitClaimed(t *testing.T) uint64 {
	t.Helper()
	var claimed uint64
	if err := testnet.WaitFor(context.Background(), 4*paygInterval, func() error {
		claimed = 0
		for i, n := range j.tn.Nodes() {
			h, open, err := n.Ledger().HoldOf(j.rq.ID(), ledger.Hash(j.id), j.pv.ID())
			switch {
			case err != nil:
				return err
			case !open || h.Claimed == 0:
				return fmt.Errorf("node %d: hold open %v, claimed %d", i, open, h.Claimed)
			case claimed != 0 && h.Claimed != claimed:
				return fmt.Errorf("node %d: claimed %d, another %d", i, h.Claimed, claimed)
			}
			claimed = h.Claimed
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return claimed
}
