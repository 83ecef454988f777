package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/ledgerd"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
	"github.com/mira-market/mira/testnet"
)

// copyDir copies the tree at src to dst (which must not exist), keeping
// each file's permission bits: a data dir's identity key must stay 0600.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm())
		case !d.Type().IsRegular():
			return nil // sockets, links: a data dir has none that matter
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, info.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

// restoreDir replaces the data dir dst with the copy at backup, as an
// operator restoring a backup does.
func restoreDir(t *testing.T, backup, dst string) {
	t.Helper()
	if err := os.RemoveAll(dst); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, dst)
}

// dbOf opens the database of a stopped member's data dir.
func dbOf(t *testing.T, dir string) *storage.DB {
	t.Helper()
	db, err := storage.Open(filepath.Join(dir, "db"), storage.Options{Network: "testnet"})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// jobRecords reads the records of the jobs ids from a stopped member's
// database.
func jobRecords(t *testing.T, dir string, ids []string) map[string][]byte {
	t.Helper()
	db := dbOf(t, dir)
	defer db.Close()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	recs := map[string][]byte{}
	if err := db.Jobs(func(id string, rec []byte) error {
		if want[id] {
			recs[id] = rec
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(ids) {
		t.Fatalf("found %d of %d job records", len(recs), len(ids))
	}
	return recs
}

// A requester's data dir copied while its payments were pending, restored
// after it ran more jobs: the node must take back from its peers what it
// signed after the copy, and sign nothing at a seq the network has. Every
// job is paid exactly once (its provider's final claim), nothing stays
// held, and every ledger ends the same and verifies.
//
// The copy is taken from the stopped node, so that Badger is consistent.
// It holds jobs still running, and (like a snapshot of a running machine
// taken in the ~150 ms between a job's end being persisted and its
// payment being written, or a crash there) jobs that have ended with
// their payments not written yet: the records of those are put into the
// copy from the node's later state, the way that moment leaves them.
func TestRestoredDataDirDoesNotEquivocate(t *testing.T) {
	tn := startTestnet(t, 3, testnet.WithProviders(1)) // 0 bootstrap, 1 provider, 2 requester
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const req = 2
	requester := tn.Node(req).ID()
	c := clientFor(t, tn, req)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})

	submit := func(c *api.Client, n int, sleep string) []string {
		t.Helper()
		var ids []string
		for range n {
			j, err := c.SubmitJob(ctx, noopJob("batch", sleep, "2m"))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, j.ID)
		}
		return ids
	}
	// Jobs still running when the copy is taken: their holds are open in it.
	pending := submit(c, 4, "3s")
	waitJobs(t, c, pending, "running", deadline)
	if err := tn.Stop(req); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "backup")
	copyDir(t, tn.Dir(req), backup)
	if err := tn.Restart(ctx, req); err != nil {
		t.Fatal(err)
	}
	c = clientFor(t, tn, req)
	waitJobs(t, c, pending, "succeeded", time.Minute)
	// More jobs, which the copy knows nothing of.
	later := submit(c, 3, "10ms")
	waitJobs(t, c, later, "succeeded", time.Minute)
	// Every node has the requester's entries written since the copy.
	ledgersAgree(t, tn)
	head, err := tn.Node(0).Ledger().Head(requester)
	if err != nil {
		t.Fatal(err)
	}
	if err := tn.Stop(req); err != nil {
		t.Fatal(err)
	}
	// Half the pending jobs had ended in the copy, their payments not
	// written.
	ended := jobRecords(t, tn.Dir(req), pending[:2])
	db := dbOf(t, backup)
	if err := db.PutJobs(ended); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	restoreDir(t, backup, tn.Dir(req))
	if err := tn.Restart(ctx, req); err != nil {
		t.Fatal(err)
	}
	c = clientFor(t, tn, req)
	// It says it took what its copy lacked from its peers.
	if err := testnet.WaitFor(ctx, deadline, func() error {
		info, err := c.Node(ctx)
		if err != nil {
			return err
		}
		if l := info.Ledger; l.Head != "confirmed" || l.Learned == 0 || l.Seq < head.Seq || l.Frozen {
			return fmt.Errorf("GET /v1/node: ledger %+v; the network had the requester's head at %d", l, head.Seq)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The restored node works: new jobs get their holds and are paid.
	after := submit(c, 2, "10ms")
	final := waitJobs(t, c, after, "succeeded", time.Minute)
	for id, j := range final {
		if j.Payment == nil || j.Payment.State != "paid" {
			t.Errorf("job %s after the restore: payment %+v, error %q", id[:8], j.Payment, j.Error)
		}
	}
	// The jobs the copy thought running or unpaid are over, paid once,
	// and not run again.
	if err := testnet.WaitFor(ctx, deadline, func() error {
		for _, id := range pending {
			j, err := c.Job(ctx, id)
			if err != nil {
				return err
			}
			if !market.State(j.State).Terminal() || j.Payment == nil || j.Payment.State != "paid" {
				return fmt.Errorf("restored job %s is %s, payment %+v, error %q", id[:8], j.State, j.Payment, j.Error)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	for i, n := range tn.Nodes() {
		if frozen, err := n.Ledger().Frozen(requester); err != nil || frozen {
			t.Fatalf("node %d froze the restored requester (%v)", i, err)
		}
	}
	if h, err := tn.Node(req).Ledger().Head(requester); err != nil || h.Seq <= head.Seq {
		t.Fatalf("restored requester's head %d (%v), the network had %d before the restore", h.Seq, err, head.Seq)
	}
	ledgersAgree(t, tn)
	// Each job paid exactly once, by the provider's final claim of the
	// award's hold, which replaced its posting hold: the requester's chain
	// releases nothing of them (and pays nothing itself); nothing of the
	// requester's is left held.
	provider := tn.Node(1).ID()
	settled := settlements(t, tn.Node(0), requester)
	for _, ids := range [][]string{pending, later, after} {
		for _, id := range ids {
			if s := settled[mustHash(t, id)]; !s.paidOnceTo(provider) || s.Posted != 1 || s.ReleasedPosted+s.ReleasedNamed != 0 {
				t.Errorf("job %s: settlement %+v; want one final claim by the provider, no release", id[:8], s)
			}
		}
	}
	for i := range tn.Len() {
		c := clientFor(t, tn, i)
		v, err := c.VerifyLedger(ctx)
		if err != nil || !v.OK {
			t.Fatalf("GET /v1/ledger/verify on node %d: %+v, %v", i, v, err)
		}
		b, err := c.Balance(ctx, requester.String())
		if err != nil || b.Held != 0 || b.Frozen {
			t.Fatalf("requester's balance on node %d: %+v, %v", i, b, err)
		}
	}
}

// waitHead waits until member i's GET /v1/node reports its ledger head in
// state want, and returns that status.
func waitHead(t *testing.T, tn *testnet.Testnet, i int, want string) api.LedgerStatus {
	t.Helper()
	var st api.LedgerStatus
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		info, err := clientFor(t, tn, i).Node(context.Background())
		if err != nil {
			return err
		}
		if st = info.Ledger; st.Head != want {
			return fmt.Errorf("node %d: ledger head %q (%s), want %q", i, st.Head, st.Detail, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A node that restarts with no peer to ask for its own head signs
// nothing: a job submitted at once waits for its hold; once head_wait has
// passed, GET /v1/node says why and a submit is refused with the reason.
// When a peer comes back the node confirms its head and the waiting job
// gets its hold.
func TestNodeWithoutPeersDoesNotSign(t *testing.T) {
	tn := startTestnet(t, 2, func(_ int, cfg *node.Config) {
		cfg.Ledger.HeadWait = node.Duration(3 * time.Second)
	})
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const lone = 1 // bootstraps to node 0
	self := tn.Node(lone).ID()
	waitHead(t, tn, lone, "confirmed")
	for _, i := range []int{lone, 0} {
		if err := tn.Stop(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := tn.Restart(ctx, lone); err != nil {
		t.Fatal(err)
	}
	n := tn.Node(lone)
	before, err := n.Ledger().Head(self)
	if err != nil || before.Seq == 0 {
		t.Fatalf("own head before: %+v, %v", before, err)
	}
	c := clientFor(t, tn, lone)
	unservable := noopJob("batch", "0s", "10m")
	unservable.Resources.GPUs = 8 // nobody runs it: it stays bidding, held
	waiting, err := c.SubmitJob(ctx, unservable)
	if err != nil {
		t.Fatalf("submit while the node asks for its head: %v", err)
	}

	st := waitHead(t, tn, lone, "unreachable")
	if !strings.Contains(st.Detail, "no peer connected") || st.Seq != before.Seq {
		t.Fatalf("GET /v1/node ledger %+v: want the reason, and the head at %d", st, before.Seq)
	}
	_, err = c.SubmitJob(ctx, unservable)
	if code := statusCode(err); code != 503 || !strings.Contains(err.Error(), "ledger head not confirmed") {
		t.Fatalf("submit with no peer to confirm the head: %v (status %d), want a 503 that says why", err, code)
	}
	if h, err := n.Ledger().Head(self); err != nil || h != before {
		t.Fatalf("own head moved while unconfirmed: %+v (%v), was %+v", h, err, before)
	}
	if j, err := c.Job(ctx, waiting.ID); err != nil || j.Payment != nil {
		t.Fatalf("the waiting job: %+v, %v; want no hold yet", j.Payment, err)
	}

	if err := tn.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	st = waitHead(t, tn, lone, "confirmed")
	if st.Learned != 0 {
		t.Fatalf("learned %d own entries from a peer that had none to teach", st.Learned)
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		j, err := c.Job(ctx, waiting.ID)
		if err != nil {
			return err
		}
		if j.Payment == nil || j.Payment.State != "held" {
			return fmt.Errorf("waiting job's payment %+v", j.Payment)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubmitJob(ctx, unservable); err != nil {
		t.Fatalf("submit once confirmed: %v", err)
	}
}

// A hold whose job the node has forgotten (its data dir restored from a
// copy older than the job) is released once the job's deadline has
// certainly passed, and no sooner; holds of jobs the node knows are left
// to the market.
func TestForgottenJobsHoldIsReleased(t *testing.T) {
	tn := startTestnet(t, 2, nil)
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const req = 1
	self := tn.Node(req).ID()
	waitHead(t, tn, req, "confirmed")
	if err := tn.Stop(req); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "backup")
	copyDir(t, tn.Dir(req), backup)
	if err := tn.Restart(ctx, req); err != nil {
		t.Fatal(err)
	}
	unservable := noopJob("batch", "0s", "10m")
	unservable.Resources.GPUs = 8
	submitHeld := func() ledger.Hash {
		t.Helper()
		j, err := clientFor(t, tn, req).SubmitJob(ctx, unservable)
		if err != nil {
			t.Fatal(err)
		}
		job := mustHash(t, j.ID)
		if err := testnet.WaitFor(ctx, deadline, func() error {
			for _, n := range tn.Nodes() {
				if _, ok, err := n.Ledger().HoldFor(self, job); err != nil || !ok {
					return fmt.Errorf("%s lacks the hold of job %s (%v)", n.ID(), j.ID[:8], err)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return job
	}
	forgotten := submitHeld()
	if err := tn.Stop(req); err != nil {
		t.Fatal(err)
	}
	restoreDir(t, backup, tn.Dir(req))
	if err := tn.Restart(ctx, req); err != nil {
		t.Fatal(err)
	}
	if st := waitHead(t, tn, req, "confirmed"); st.Learned == 0 {
		t.Fatalf("the restored node learned nothing: %+v", st)
	}
	n := tn.Node(req)
	if _, ok, err := n.Ledger().HoldFor(self, forgotten); err != nil || !ok {
		t.Fatalf("the restored node lacks the forgotten job's hold (%v)", err)
	}
	known := submitHeld()

	now := time.Now()
	for _, tt := range []struct {
		at   time.Time
		want ledgerd.SweepReport
	}{
		{now, ledgerd.SweepReport{Orphans: 1}},
		{now.Add(ledgerd.OrphanHoldAge - time.Minute), ledgerd.SweepReport{Orphans: 1}},
		{now.Add(ledgerd.OrphanHoldAge + time.Minute), ledgerd.SweepReport{Orphans: 1, Released: 1}},
	} {
		if got, err := n.SweepHolds(tt.at); err != nil || got != tt.want {
			t.Fatalf("sweep at now+%v: %+v, %v; want %+v", tt.at.Sub(now), got, err, tt.want)
		}
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		for _, m := range tn.Nodes() {
			if _, ok, err := m.Ledger().HoldFor(self, forgotten); err != nil || ok {
				return fmt.Errorf("%s still holds the forgotten job (%v)", m.ID(), err)
			}
			if _, ok, err := m.Ledger().HoldFor(self, known); err != nil || !ok {
				return fmt.Errorf("%s lost the hold of the job the node knows (%v)", m.ID(), err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := n.SweepHolds(now.Add(2 * ledgerd.OrphanHoldAge)); err != nil || got != (ledgerd.SweepReport{}) {
		t.Fatalf("sweep after the release: %+v, %v", got, err)
	}
	ledgersAgree(t, tn)
}

// A node whose account is frozen (it signed two entries with one seq)
// refuses a job with an error that names the freeze, not credits.
func TestFrozenAccountsSubmitNamesTheFreeze(t *testing.T) {
	tn := startTestnet(t, 2, nil)
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const victim = 1
	self := tn.Node(victim).ID()
	waitHead(t, tn, victim, "confirmed")
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if h, err := tn.Node(0).Ledger().Head(self); err != nil || h.Seq == 0 {
			return fmt.Errorf("node 0 lacks node 1's grant (%v)", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	key, err := node.LoadIdentity(tn.Dir(victim))
	if err != nil {
		t.Fatal(err)
	}
	// A second grant at seq 1, signed later: what a node restored to an
	// empty data dir would sign.
	twin := ledger.Entry{Account: self, Seq: 1, Time: time.Now(), Body: ledger.GrantBody{Amount: testnet.DefaultCredits}}
	if err := twin.Sign("testnet", key); err != nil {
		t.Fatal(err)
	}
	if err := tn.Node(0).IngestEntry(twin.Encode()); !errors.Is(err, ledger.ErrEquivocation) {
		t.Fatalf("the twin entry: %v", err)
	}
	c := clientFor(t, tn, victim)
	if err := testnet.WaitFor(ctx, deadline, func() error {
		info, err := c.Node(ctx)
		if err != nil || !info.Ledger.Frozen {
			return fmt.Errorf("GET /v1/node: %+v, %v; want frozen", info.Ledger, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if code := statusCode(err); code != 503 || !strings.Contains(err.Error(), "is frozen") || !strings.Contains(err.Error(), "at seq 1") ||
		strings.Contains(err.Error(), "credits?") {
		t.Fatalf("submit from a frozen account: %v (status %d), want a 503 naming the freeze", err, code)
	}
}

// An award waits for the head to be confirmed; when head_wait passes
// without that (here: a quorum of three peers asked of a node that has
// two), the award fails and its job ends with the reason, not a credits
// error, and the node has signed nothing.
func TestAwardFailsWithTheReasonWhenTheHeadStaysUnconfirmed(t *testing.T) {
	const req = 2
	tn := startTestnet(t, 3, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		if i == req {
			cfg.Ledger.HeadPeers, cfg.Ledger.HeadQuorum = 3, 3
			cfg.Ledger.HeadWait = node.Duration(5 * time.Second)
		}
	})
	ctx := context.Background()
	c := clientFor(t, tn, req)
	j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatalf("submit while the node asks for its head: %v", err)
	}
	final := waitJobs(t, c, []string{j.ID}, "cancelled", deadline)[j.ID]
	if !strings.Contains(final.Error, "escrow failed: ledger head not confirmed") {
		t.Fatalf("job %s: error %q; want the head's reason", j.ID[:8], final.Error)
	}
	if len(final.Bids) == 0 {
		t.Fatalf("job %s ended without a bid: its award was never tried", j.ID[:8])
	}
	for i, n := range tn.Nodes() {
		if h, err := n.Ledger().Head(tn.Node(req).ID()); err != nil || h.Seq != 0 {
			t.Fatalf("node %d holds the requester's head at %d (%v): it signed while unconfirmed", i, h.Seq, err)
		}
	}
}

// The [ledger] keys are checked, each refusal naming its key.
func TestLedgerConfigIsChecked(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(*node.LedgerConfig)
		want string // "" for valid
	}{
		{"defaults", func(*node.LedgerConfig) {}, ""},
		{"alone by design", func(c *node.LedgerConfig) { c.HeadQuorum = 0 }, ""},
		{"no peers asked", func(c *node.LedgerConfig) { c.HeadPeers = 0 }, "head_peers"},
		{"too many peers asked", func(c *node.LedgerConfig) { c.HeadPeers = 17 }, "head_peers"},
		{"quorum above the peers asked", func(c *node.LedgerConfig) { c.HeadPeers, c.HeadQuorum = 2, 3 }, "head_quorum"},
		{"negative quorum", func(c *node.LedgerConfig) { c.HeadQuorum = -1 }, "head_quorum"},
		{"no wait", func(c *node.LedgerConfig) { c.HeadWait = 0 }, "head_wait"},
		{"no sweep", func(c *node.LedgerConfig) { c.HoldSweepInterval = -1 }, "hold_sweep_interval"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := node.DefaultConfig(t.TempDir())
			tt.set(&cfg.Ledger)
			err := cfg.Validate()
			if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), "ledger: "+tt.want) {
				t.Fatalf("Validate = %v, want an error naming %q", err, tt.want)
			}
		})
	}
}
