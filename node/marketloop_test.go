package node

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/results"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
)

// flakyJobs fails the first fail writes of job records, then passes them
// on.
type flakyJobs struct {
	mu     sync.Mutex
	inner  jobStore
	fail   int
	failed int
}

func (f *flakyJobs) PutJobs(recs map[string][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		f.failed++
		return errors.New("injected: no space left on device")
	}
	return f.inner.PutJobs(recs)
}

// loopDriver is a market driver with only what its loop needs to carry
// out a requester's job records: an engine, a job store, the real clock
// (in a synctest bubble, the bubble's), a ledger writer that is never
// run, and a result collector with nothing to collect (the jobs here end
// without results).
func loopDriver(self peer.ID, jobs jobStore) *marketDriver {
	log := slog.New(slog.DiscardHandler)
	n := &Node{log: log, results: results.New(context.Background(), nil, log)}
	d := &marketDriver{
		n: n, in: make(chan func(), 8), jobs: jobs, clock: realClock{},
		eng: market.NewEngine(market.Config{Self: self, InteractiveWindow: time.Second, BatchWindow: time.Second,
			AcceptTimeout: time.Second, HeartbeatTimeout: 3 * time.Second, HeartbeatInterval: time.Second}),
		running: map[protocol.JobID]runningLease{}, watchers: map[protocol.JobID][]*watcher{},
		postingHolds: map[protocol.JobID]*ledgerWrite{},
		offers:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "offers"}), offerBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bytes"}),
		writer: newLedgerWriter(n),
	}
	n.market = d
	return d
}

// restoredJob puts a batch job of key's, bidding until its deadline a
// minute from now, into d's engine as a restart would.
func restoredJob(t *testing.T, d *marketDriver, key crypto.PrivKey) protocol.JobID {
	t.Helper()
	now := d.clock.Now()
	nonce := make([]byte, 16)
	rand.Read(nonce)
	self, _ := peer.IDFromPrivateKey(key)
	o := &pb.Offer{Requester: []byte(self), Network: "testnet", Nonce: nonce, CreatedUnixMs: now.UnixMilli(),
		DeadlineUnixMs: now.Add(time.Minute).UnixMilli(),
		Spec:           &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, MaxPrice: 10, MaxDurationMs: 1000}}
	raw, err := protocol.SealMarket(key, "testnet", now.Add(time.Minute), &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: o}})
	if err != nil {
		t.Fatal(err)
	}
	offer, err := protocol.OpenMarket(raw, "testnet", now)
	if err != nil {
		t.Fatal(err)
	}
	d.eng.Restore(&market.Job{Offer: raw, Round: 1, Tier: protocol.TierBatch, MaxPrice: 10, State: market.Bidding,
		Deadline: now.Add(time.Minute), Created: now, WindowEnds: now.Add(time.Second)}, offer)
	return offer.Job
}

// The loop carries out a Ready only once its jobs are on disk: a write
// that fails is tried again after a pause, on the loop's clock, and the
// job's change reaches the database then.
func TestLoopRetriesAFailedJobWrite(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := peer.IDFromPrivateKey(key)
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		// Opened in the bubble: Badger's goroutines must be its own.
		db, err := storage.Open(filepath.Join(dir, "db"), storage.Options{Network: "testnet"})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		jobs := &flakyJobs{inner: db, fail: 1}
		d := loopDriver(self, jobs)
		id := restoredJob(t, d, key)
		ctx, stop := context.WithCancel(t.Context())
		d.n.wg.Add(1)
		go d.loop(ctx)
		if err := d.do(ctx, func() { d.eng.Cancel(d.clock.Now(), id, "cancelled by requester") }); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if jobs.failed != 1 || stored(t, db, id) != "" {
			t.Fatalf("%d writes failed, the record is %q; want the write failed", jobs.failed, stored(t, db, id))
		}
		time.Sleep(persistRetryFirst / 2)
		synctest.Wait()
		if got := stored(t, db, id); got != "" {
			t.Fatalf("stored %q before the pause ended", got)
		}
		time.Sleep(persistRetryFirst / 2)
		synctest.Wait()
		if got := stored(t, db, id); got != market.Cancelled {
			t.Fatalf("the job's record is %q, want %q", got, market.Cancelled)
		}
		stop()
		d.n.wg.Wait()
	})
}

// stored is the state of a job's record in db; "" if there is none.
func stored(t *testing.T, db *storage.DB, id protocol.JobID) market.State {
	t.Helper()
	var state market.State
	if err := db.Jobs(func(key string, rec []byte) error {
		if key != id.String() {
			return nil
		}
		var j market.Job
		if err := json.Unmarshal(rec, &j); err != nil {
			return err
		}
		state = j.State
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return state
}
