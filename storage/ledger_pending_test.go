package storage

import (
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
)

// A pending entry is retried when, and only when, an entry that can
// unblock it is stored, in a later write of any kind: its predecessor, a
// payment to its account (a hold waiting for funds), a hold of its
// requester's job (a lease waiting for its hold); the unblocking entry
// given alone (Ingest), in a batch (IngestMany) or appended as this
// node's own (Append).
func TestPendingEntriesWakeOnWhatUnblocksThem(t *testing.T) {
	type way int
	const (
		ingest way = iota
		ingestMany
		appendOwn
	)
	for _, w := range []struct {
		name string
		way  way
	}{{"Ingest", ingest}, {"IngestMany", ingestMany}, {"Append", appendOwn}} {
		for _, tc := range []struct {
			name string
			// setup returns the entry that waits, one valid after it, and
			// the one that frees it (an entry of account a, which Append
			// writes as a's own).
			setup func(env *ledgerEnv) (waiting, after, unblocking ledger.Body, waiter *chain)
			// v2 marks a case of version 2's rules, which this node's own
			// entries (of version 3) cannot unblock.
			v2 bool
		}{
			{"a hold waits for a payment to its account", func(env *ledgerEnv) (ledger.Body, ledger.Body, ledger.Body, *chain) {
				// b holds more than its grant: it waits for a's payment.
				env.ok(env.a.next(t, ledger.HoldBody{Job: job("paid"), Provider: env.b.id, Amount: 100}))
				return ledger.HoldBody{Job: job("spend"), Amount: 550}, ledger.ReleaseBody{Job: job("spend")},
					ledger.PaymentBody{Job: job("paid"), To: env.b.id, Amount: 100}, env.b
			}, true},
			{"a lease waits for its hold", func(env *ledgerEnv) (ledger.Body, ledger.Body, ledger.Body, *chain) {
				return env.a.leaseFor(t, env.p.id, job("leased"), 1), ledger.ReceiptBody{Job: job("leased"), Receipt: job("r"), Result: "bafy"},
					ledger.HoldBody{Job: job("leased"), Provider: env.p.id, Amount: 5}, env.p
			}, true},
			{"a lease waits for its hold, of version 3", func(env *ledgerEnv) (ledger.Body, ledger.Body, ledger.Body, *chain) {
				env.a.v2, env.p.v2 = false, false
				return env.a.leaseFor(t, env.p.id, job("leased"), 1), ledger.ReceiptBody{Job: job("leased"), Receipt: job("r"), Result: "bafy"},
					ledger.HoldBody{Job: job("leased"), Provider: env.p.id, Amount: 5, Expiry: env.clock.Now().Add(time.Hour).UnixNano(), Replicas: 1}, env.p
			}, false},
			{"a waive waits for the hold it gives back", func(env *ledgerEnv) (ledger.Body, ledger.Body, ledger.Body, *chain) {
				env.a.v2, env.p.v2 = false, false
				// a's next entry (seq 2) is the hold.
				return ledger.WaiveBody{Job: job("waived"), Requester: env.a.id, HoldSeq: 2}, env.a.leaseFor(t, env.p.id, job("waived"), 1),
					ledger.HoldBody{Job: job("waived"), Provider: env.p.id, Amount: 5, Expiry: env.clock.Now().Add(time.Hour).UnixNano(), Replicas: 1}, env.p
			}, false},
			{"a lease waits for the posting hold", func(env *ledgerEnv) (ledger.Body, ledger.Body, ledger.Body, *chain) {
				return env.a.leaseFor(t, env.p.id, job("posted"), 1), ledger.ReceiptBody{Job: job("posted"), Receipt: job("r"), Result: "bafy"},
					ledger.HoldBody{Job: job("posted"), Amount: 5}, env.p
			}, true},
		} {
			t.Run(w.name+"/"+tc.name, func(t *testing.T) {
				if tc.v2 && w.way == appendOwn {
					t.Skip("an entry of version 2 unblocks it: not one this node writes")
				}
				env := newLedgerEnv(t)
				aPriv := env.a.priv
				env.ok(env.a.next(t, ledger.GrantBody{Amount: 1000}))
				env.ok(env.b.next(t, ledger.GrantBody{Amount: 500}))
				waiting, after, unblocking, waiter := tc.setup(env)
				// Entries that wait for what never comes, beside it: they
				// must stay, and cost the write nothing.
				other := newChain(t, "other", env.clock.Now())
				other.seq = 1
				env.l.IngestMany([][]byte{other.next(t, env.a.leaseFor(t, other.id, job("never"), 1))})
				// The waiting entry, and one after it in its chain.
				first := waiter.next(t, waiting)
				second := waiter.next(t, after)
				res, err := env.l.IngestMany([][]byte{second, first})
				if err != nil || len(res.Accepted) != 0 || res.Pending != 3 {
					t.Fatalf("before: %+v, %v; want both waiting", res, err)
				}
				switch w.way {
				case ingest:
					_, err = env.l.Ingest(env.a.next(t, unblocking))
				case ingestMany:
					res, err = env.l.IngestMany([][]byte{env.a.next(t, unblocking)})
					if err == nil && len(res.Accepted) != 3 {
						t.Fatalf("the batch stored %d entries, want the unblocking one and both that waited", len(res.Accepted))
					}
				case appendOwn:
					_, err = env.l.Append(aPriv, unblocking)
				}
				if err != nil {
					t.Fatal(err)
				}
				if h, err := env.l.Head(waiter.id); err != nil || h.Seq != waiter.seq {
					t.Fatalf("the waiter's head %d (%v), want %d: what waited was not retried", h.Seq, err, waiter.seq)
				}
				if n := env.l.PendingLen(); n != 1 {
					t.Fatalf("%d pending, want only the entry nothing frees", n)
				}
			})
		}
	}
}
