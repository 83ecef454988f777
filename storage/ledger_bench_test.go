package storage

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
)

// benchEntries signs n entries of 100 accounts, interleaved round-robin,
// each account's chain in order: a grant, then holds naming the next
// account, payments to it, and leases of the jobs the account before held
// for it (as a provider records them). It returns the entries and the
// genesis.
func benchEntries(b *testing.B, n int) ([][]byte, *ledger.Genesis) {
	b.Helper()
	const accounts = 100
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	g := &ledger.Genesis{Network: testNet}
	chains := make([]*chain, accounts)
	for i := range chains {
		chains[i] = newChain(b, fmt.Sprintf("bench-%d", i), start)
		g.Grants = append(g.Grants, ledger.GenesisGrant{Peer: chains[i].id, Amount: 1 << 50})
	}
	raws := make([][]byte, 0, n)
	for step := 0; len(raws) < n; step++ {
		for i, c := range chains {
			if len(raws) == n {
				break
			}
			to := chains[(i+1)%accounts].id
			prev := (i + accounts - 1) % accounts
			j := job(fmt.Sprintf("%d-%d", i, step/3))
			var body ledger.Body
			switch {
			case step == 0:
				body = ledger.GrantBody{Amount: 1 << 50}
			case step%3 == 1:
				body = ledger.HoldBody{Job: j, Provider: to, Amount: 1000}
			case step%3 == 2:
				body = ledger.PaymentBody{Job: j, To: to, Receipt: j, Amount: 900}
			default:
				// The account before held its job step/3-1 naming this one.
				body = chains[prev].leaseFor(b, c.id, job(fmt.Sprintf("%d-%d", prev, step/3-1)), 1000)
			}
			raws = append(raws, c.next(b, body))
		}
	}
	return raws, g
}

// cpuTime returns the CPU time (user and system, all threads) the process
// has used so far.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchLedger(b *testing.B, g *ledger.Genesis, opts ...LedgerOption) *Ledger {
	b.Helper()
	db, err := Open(b.TempDir(), Options{Network: testNet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	l, err := OpenLedger(db, testNet, g, func() time.Time { return time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC) }, opts...)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkLedgerIngest ingests pre-signed entries of 100 accounts through
// IngestMany in batches of 256, on disk, synced once per batch ("nosync":
// not synced, as a node ingests peers' entries). Run with a fixed count
// (-benchtime=50000x): signing the entries is not timed but takes a while.
// Beside the rate it reports the CPU time of the whole process (workers,
// Badger's goroutines, GC) per entry: set against the cores × the time per
// entry, it tells how busy the cores were.
func BenchmarkLedgerIngest(b *testing.B) {
	b.Run("parallel", func(b *testing.B) { benchIngest(b) })
	b.Run("parallel-nosync", func(b *testing.B) { benchIngest(b, WithReceivedSync(false)) })
	// One verifier: the serial cost of an entry, to set against
	// BenchmarkEd25519Verify/serial.
	b.Run("serial", func(b *testing.B) { benchIngest(b, WithVerifyWorkers(1)) })
}

func benchIngest(b *testing.B, opts ...LedgerOption) {
	raws, g := benchEntries(b, b.N)
	l := benchLedger(b, g, opts...)
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for i := 0; i < len(raws); i += 256 {
		res, err := l.IngestMany(raws[i:min(i+256, len(raws))])
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Rejected) > 0 || res.Pending > 0 {
			b.Fatalf("rejected %v, pending %d", res.Rejected[0], res.Pending)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/entry")
	if l.Count() != uint64(b.N) {
		b.Fatalf("stored %d of %d", l.Count(), b.N)
	}
}

// BenchmarkLedgerIngestOne ingests the same entries one Ingest (and one
// sync) at a time: the cost of syncing per entry.
func BenchmarkLedgerIngestOne(b *testing.B) {
	raws, g := benchEntries(b, b.N)
	l := benchLedger(b, g)
	b.ResetTimer()
	for _, raw := range raws {
		if _, err := l.Ingest(raw); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkLedgerAppend appends (signs, validates, stores, syncs) one
// entry at a time: holds and their releases, in turn.
func BenchmarkLedgerAppend(b *testing.B) {
	priv, id := testKey(b, "append")
	g := &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: id, Amount: 1}}}
	l := benchLedger(b, g)
	if _, err := l.Append(priv, ledger.GrantBody{Amount: 1}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		var body ledger.Body = ledger.HoldBody{Job: job(fmt.Sprint(i / 2)), Amount: 1}
		if i%2 == 1 {
			body = ledger.ReleaseBody{Job: job(fmt.Sprint(i / 2))}
		}
		if _, err := l.Append(priv, body); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkIngestBesideWaiting ingests one valid entry at a time (an
// account's holds and releases, cycleBody) into a ledger whose pending
// buffer holds waiting entries of fresh accounts: leases no hold backs
// (each at its account's next seq, so a retry reaches the rules), or
// entries after a gap (seq 2, whose retry stops at the missing seq 1).
// What each ingest pays for the waiting entries is the difference to
// "none". Not synced, as a node ingests peers' entries.
func BenchmarkIngestBesideWaiting(b *testing.B) {
	for _, tc := range []struct {
		name    string
		waiting int
		seq     uint64 // of the waiting entries: 1 a lease no hold backs, 2 after a gap
	}{
		{"none", 0, 1},
		{"unfunded-4096", DefaultPendingLimit, 1},
		{"gaps-4096", DefaultPendingLimit, 2},
	} {
		b.Run(tc.name, func(b *testing.B) {
			_, id := testKey(b, "beside")
			priv, _ := testKey(b, "beside")
			g := &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: id, Amount: cycleGrant}}}
			l := benchLedger(b, g, WithReceivedSync(false))
			var waiting [][]byte
			for i := range tc.waiting {
				c := newChain(b, fmt.Sprint("waiting-", i), time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
				c.seq = tc.seq - 1
				waiting = append(waiting, c.next(b, grantedLease(b, testNet, priv, c.id, job(fmt.Sprint(i)), 1)))
			}
			if res, err := l.IngestMany(waiting); err != nil || res.Pending != tc.waiting {
				b.Fatalf("%d waiting (%v)", res.Pending, err)
			}
			c := &chain{net: testNet, priv: priv, id: id, at: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
			raws := make([][]byte, b.N)
			for i := range raws {
				raws[i] = c.next(b, cycleBody(id, i+1))
			}
			b.ResetTimer()
			for _, raw := range raws {
				if _, err := l.Ingest(raw); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if n := l.PendingLen(); n != tc.waiting {
				b.Fatalf("%d waiting after, want %d", n, tc.waiting)
			}
		})
	}
}
