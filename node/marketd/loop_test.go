package marketd

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
)

// flakyJobs fails the first fail writes of job records, then passes them
// on.
type flakyJobs struct {
	mu     sync.Mutex
	inner  JobStore
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

func (f *flakyJobs) Jobs(fn func(id string, rec []byte) error) error { return f.inner.Jobs(fn) }

func (f *flakyJobs) PutBills(recs map[string][]byte, drop []string) error {
	return f.inner.PutBills(recs, drop)
}

func (f *flakyJobs) Bills(fn func(key string, rec []byte) error) error { return f.inner.Bills(fn) }

// noLedger is a ledger that writes nothing and checks nothing.
type noLedger struct{}

func (noLedger) HoldPosted(protocol.JobID, *pb.JobSpec)                   {}
func (noLedger) WriteHolds([]market.HoldRequest, func([][]byte, []error)) {}
func (noLedger) SignGrant(market.HoldRequest) ([]byte, error)             { return nil, nil }
func (noLedger) ChainBefore([]byte, uint64) [][]byte                      { return nil }
func (noLedger) CheckGrant(peer.ID, protocol.JobID, *pb.Award) error      { return nil }
func (noLedger) ReleaseUnawarded([]*market.Job)                           {}
func (noLedger) SignAcceptance(market.AcceptanceRequest) ([]byte, error)  { return nil, nil }
func (noLedger) CheckHold(context.Context, *market.Lease) (uint64, time.Time, error) {
	return 1, time.Time{}, nil
}
func (noLedger) RecordLease(*market.Lease)                                       {}
func (noLedger) RecordReceipt(*pb.Bill)                                          {}
func (noLedger) WriteClaim(_ market.ClaimRequest, done func(error))              { done(nil) }
func (noLedger) WriteWaive(context.Context, market.WaiveRequest) ([]byte, error) { return nil, nil }
func (noLedger) IngestWaive([]byte) error                                        { return nil }
func (noLedger) WriteMajorityClaim(market.MajorityClaimRequest, func(error))     {}
func (noLedger) WriteMajorityRelease(market.MajorityReleaseRequest, func(error)) {}
func (noLedger) RequesterHead(peer.ID) (uint64, error)                           { return 0, nil }

// noResults collects nothing (the jobs here end without results).
type noResults struct{}

func (noResults) Collect(*market.Job) {}

// loopDriver is a market driver with only what its loop needs to carry
// out a requester's job records: an engine, a job store, the system
// clock (in a synctest bubble, the bubble's), a ledger that writes
// nothing and a result collector with nothing to collect.
func loopDriver(t *testing.T, self peer.ID, jobs JobStore) *Driver {
	t.Helper()
	d, err := New(Config{Network: "testnet", Engine: market.Config{Self: self, InteractiveWindow: time.Second, BatchWindow: time.Second,
		AcceptTimeout: time.Second, HeartbeatTimeout: 3 * time.Second, HeartbeatInterval: time.Second}},
		Deps{Jobs: jobs, Ledger: noLedger{}, Results: noResults{}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// restoredJob puts a batch job of key's, bidding until its deadline a
// minute from now, into d's engine as a restart would.
func restoredJob(t *testing.T, d *Driver, key crypto.PrivKey) protocol.JobID {
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
	d.eng.Restore(time.Now(), &market.Job{Offer: raw, Round: 1, Tier: protocol.TierBatch, MaxPrice: 10, State: market.Bidding,
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
		d := loopDriver(t, self, jobs)
		id := restoredJob(t, d, key)
		d.startLoop()
		if err := d.do(t.Context(), func() { d.eng.Cancel(d.clock.Now(), id, "cancelled by requester") }); err != nil {
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
		d.Close()
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
