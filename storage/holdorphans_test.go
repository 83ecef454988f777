package storage

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
)

// OpenHolds lists an account's open holds with their entries' times, and
// no other account's; a hold leaves the list when it is paid or released.
func TestOpenHolds(t *testing.T) {
	env := newLedgerEnv(t)
	env.ok(env.a.next(t, ledger.GrantBody{Amount: 1000}))
	env.ok(env.b.next(t, ledger.GrantBody{Amount: 500}))
	h1 := env.ok(env.a.next(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
	h2 := env.ok(env.a.next(t, ledger.HoldBody{Job: job("2"), Amount: 200}))
	env.ok(env.a.next(t, ledger.HoldBody{Job: job("3"), Amount: 300}))
	env.ok(env.b.next(t, ledger.HoldBody{Job: job("4"), Amount: 50}))
	env.ok(env.a.next(t, ledger.PaymentBody{Job: job("3"), To: env.p.id, Amount: 10}))
	for _, tt := range []struct {
		name    string
		account *chain
		want    []OpenHold
	}{
		{"a: job 3 paid", env.a, []OpenHold{
			{Job: job("1"), Provider: env.p.id, Amount: 100, Seq: h1.Seq, Time: h1.Time},
			{Job: job("2"), Amount: 200, Seq: h2.Seq, Time: h2.Time},
		}},
		{"b", env.b, []OpenHold{{Job: job("4"), Amount: 50, Seq: 2, Time: env.b.at.Add(-time.Millisecond)}}},
		{"p holds nothing", env.p, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := env.l.OpenHolds(tt.account.id)
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(tt.want, func(a, b OpenHold) int { return slices.Compare(a.Job[:], b.Job[:]) })
			if !slices.EqualFunc(got, tt.want, func(a, b OpenHold) bool {
				return a.Job == b.Job && a.Provider == b.Provider && a.Amount == b.Amount && a.Seq == b.Seq && a.Time.Equal(b.Time)
			}) {
				t.Fatalf("OpenHolds = %+v, want %+v", got, tt.want)
			}
		})
	}
	env.ok(env.a.next(t, ledger.ReleaseBody{Job: job("1")}))
	if got, err := env.l.OpenHolds(env.a.id); err != nil || len(got) != 1 || got[0].Job != job("2") {
		t.Fatalf("after releasing job 1: %+v, %v", got, err)
	}
}

// Orphan-hold records are kept across a reopen of the database, and
// forgotten when asked.
func TestOrphanHoldsPersist(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	steps := []struct {
		seen map[ledger.Hash]time.Time
		gone []ledger.Hash
		want map[ledger.Hash]time.Time
	}{
		{nil, nil, map[ledger.Hash]time.Time{}},
		{map[ledger.Hash]time.Time{job("1"): at, job("2"): at.Add(time.Hour)}, nil, map[ledger.Hash]time.Time{job("1"): at, job("2"): at.Add(time.Hour)}},
		{map[ledger.Hash]time.Time{job("3"): at}, []ledger.Hash{job("1")}, map[ledger.Hash]time.Time{job("2"): at.Add(time.Hour), job("3"): at}},
		{nil, []ledger.Hash{job("2"), job("3"), job("9")}, map[ledger.Hash]time.Time{}},
	}
	for i, s := range steps {
		db, err := Open(dir, Options{Network: testNet})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.SetOrphanHolds(s.seen, s.gone); err != nil {
			t.Fatal(err)
		}
		db.Close()
		if db, err = Open(dir, Options{Network: testNet}); err != nil {
			t.Fatal(err)
		}
		got, err := db.OrphanHolds()
		db.Close()
		if err != nil || !maps.EqualFunc(got, s.want, time.Time.Equal) {
			t.Fatalf("step %d: OrphanHolds = %v, %v; want %v", i, got, err, s.want)
		}
	}
}
