package storage

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/mira-market/mira/protocol/ledger"
)

// TestLedgerEntryRate holds an account to the network's entry rate (here
// a burst of 4, then 2 a second), in its entries' own times.
func TestLedgerEntryRate(t *testing.T) {
	type step struct {
		after time.Duration // since the entry before
		ok    bool
	}
	at := func(d time.Duration, ok bool) step { return step{d, ok} }
	cases := []struct {
		name  string
		steps []step
	}{
		{"a burst at once, one over", []step{at(0, true), at(0, true), at(0, true), at(0, true), at(0, false)}},
		{"paced at the rate after the burst", []step{at(0, true), at(0, true), at(0, true), at(0, true),
			at(500*time.Millisecond, true), at(500*time.Millisecond, true), at(500*time.Millisecond, true)}},
		{"half the interval is too soon", []step{at(0, true), at(0, true), at(0, true), at(0, true),
			at(250*time.Millisecond, false), at(250*time.Millisecond, true)}},
		{"an idle hour refills the burst, not more", []step{at(0, true), at(0, true), at(0, true), at(0, true),
			at(time.Hour, true), at(0, true), at(0, true), at(0, true), at(0, false)}},
		{"slower than the rate never waits", []step{at(0, true), at(time.Second, true), at(time.Second, true),
			at(time.Second, true), at(time.Second, true), at(time.Second, true), at(time.Second, true)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			c := newChain(t, "a", clock.Now())
			g := &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: c.id, Amount: cycleGrant}},
				EntryRate: &ledger.GenesisEntryRate{Burst: 4, PerSecond: 2}}
			l := openTestLedger(t, g, func() time.Time { return clock.Now().Add(24 * time.Hour) })
			for i, s := range tc.steps {
				c.at = c.at.Add(s.after)
				before := *c
				_, err := l.Ingest(c.next(t, cycleBody(c.id, int(c.seq)+1)))
				c.at = before.at // next adds a millisecond: keep the steps' times
				switch {
				case s.ok && err != nil:
					t.Fatalf("entry %d: %v", i, err)
				case !s.ok && !errors.Is(err, ledger.ErrRateLimited):
					t.Fatalf("entry %d: err = %v, want ErrRateLimited", i, err)
				case !s.ok:
					*c = before // refused: the chain stays where it was
				}
			}
			if probs, err := l.Verify(context.Background()); err != nil || len(probs) > 0 {
				t.Fatalf("verify: %v, %v", probs, err)
			}
		})
	}
}

// TestLedgerEntryRateAppend refuses an own entry over the rate as it
// refuses a peer's, and Verify finds one stored anyway.
func TestLedgerEntryRateAppend(t *testing.T) {
	priv, id := testKey(t, "a")
	clock := newFakeClock()
	g := &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: id, Amount: cycleGrant}},
		EntryRate: &ledger.GenesisEntryRate{Burst: 3, PerSecond: 1}}
	l := openTestLedger(t, g, clock.Now)
	for seq := 1; seq <= 3; seq++ {
		if _, err := l.Append(priv, cycleBody(id, seq)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Append(priv, cycleBody(id, 4)); !errors.Is(err, ledger.ErrRateLimited) {
		t.Fatalf("fourth entry at once: %v", err)
	}
	clock.Advance(time.Second)
	if _, err := l.Append(priv, cycleBody(id, 4)); err != nil {
		t.Fatalf("a second later: %v", err)
	}
	// Written behind the rules' back: Verify refuses it.
	head, _ := l.Head(id)
	e := ledger.Entry{Account: id, Seq: 5, Prev: head.Hash, Time: head.Time, Body: cycleBody(id, 5)}
	if err := e.Sign(testNet, priv); err != nil {
		t.Fatal(err)
	}
	if err := l.db.bdb.Update(func(txn *badger.Txn) error { return txn.Set(entryKey(id, 5), e.Encode()) }); err != nil {
		t.Fatal(err)
	}
	probs, err := l.Verify(context.Background())
	if err != nil || len(probs) == 0 || !errors.Is(probs[0], ledger.ErrRateLimited) {
		t.Fatalf("verify: %v, %v", probs, err)
	}
}

// TestLedgerDefaultRateTakesAMarketBurst writes, from one account, what a
// requester writes for a burst of 3,000 jobs (posting holds, releases and
// new holds for re-awards, payments: 9,000 entries) within three seconds
// of entry time: the default rate never refuses it.
func TestLedgerDefaultRateTakesAMarketBurst(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 9,000 entries")
	}
	priv, id := testKey(t, "requester")
	_, provider := testKey(t, "provider")
	clock := newFakeClock()
	l := openTestLedger(t, &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: id, Amount: 1 << 40}}}, clock.Now)
	if _, err := l.Append(priv, ledger.GrantBody{Amount: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	var bodies []ledger.Body
	for i := range 3000 {
		j := job(fmt.Sprint(i))
		bodies = append(bodies, ledger.HoldBody{Job: j, Amount: 100}, ledger.ReleaseBody{Job: j},
			ledger.HoldBody{Job: j, Provider: provider, Amount: 100, Expiry: clock.Now().Add(time.Hour).UnixNano(), Replicas: 1})
	}
	for i := range 3000 {
		// What a requester writes for a job besides its holds, now that
		// providers claim: a posting hold of another.
		bodies = append(bodies, ledger.HoldBody{Job: job(fmt.Sprint("next", i)), Amount: 1})
	}
	for len(bodies) > 0 {
		n := min(len(bodies), MaxAppendBatch)
		if _, err := l.AppendBatch(priv, bodies[:n]); err != nil {
			t.Fatal(err)
		}
		bodies = bodies[n:]
		clock.Advance(80 * time.Millisecond) // 9,000 entries in 2.9 s
	}
}
