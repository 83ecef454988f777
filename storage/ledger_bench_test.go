package storage

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	voied "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// benchEntries signs n entries of 100 accounts, interleaved round-robin,
// each account's chain in order: a grant, then holds naming the next
// account, payments to it, and leases of the jobs the account before held
// for it (as a provider records them). It returns the entries and the
// genesis.
func benchEntries(b *testing.B, n int) ([][]byte, *Genesis) {
	b.Helper()
	const accounts = 100
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	g := &Genesis{Network: testNet}
	chains := make([]*chain, accounts)
	for i := range chains {
		chains[i] = newChain(b, fmt.Sprintf("bench-%d", i), start)
		g.Grants = append(g.Grants, GenesisGrant{Peer: chains[i].id, Amount: 1 << 50})
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
			var body Body
			switch {
			case step == 0:
				body = GrantBody{Amount: 1 << 50}
			case step%3 == 1:
				body = HoldBody{Job: j, Provider: to, Amount: 1000}
			case step%3 == 2:
				body = PaymentBody{Job: j, To: to, Receipt: j, Amount: 900}
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

func benchLedger(b *testing.B, g *Genesis, opts ...LedgerOption) *Ledger {
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
	g := &Genesis{Network: testNet, Grants: []GenesisGrant{{Peer: id, Amount: 1}}}
	l := benchLedger(b, g)
	if _, err := l.Append(priv, GrantBody{Amount: 1}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		var body Body = HoldBody{Job: job(fmt.Sprint(i / 2)), Amount: 1}
		if i%2 == 1 {
			body = ReleaseBody{Job: job(fmt.Sprint(i / 2))}
		}
		if _, err := l.Append(priv, body); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkEd25519Verify verifies the signatures of the same kind of
// entries directly, on one goroutine ("serial") and on all ("parallel"):
// the bounds that ingest is measured against. "stdlib" is Go's
// crypto/ed25519.Verify (RFC 8032, cofactorless), the goal's baseline;
// "zip215" is curve25519-voi's single verification under the ledger's
// rule; "batchN" is its batch verification of N at a time in arrival order
// (every key expanded for each entry). For these, keys and signed bytes
// are prepared outside the timing. "ledger" is verifyBatch as IngestMany
// runs it: each 256 entries sorted by account, chunks of SignatureBatch,
// the signed bytes built inside the timing.
func BenchmarkEd25519Verify(b *testing.B) {
	raws, _ := benchEntries(b, 1024)
	type msg struct {
		pub       []byte
		data, sig []byte
	}
	msgs := make([]msg, len(raws))
	for i, raw := range raws {
		e, err := DecodeEntry(raw)
		if err != nil {
			b.Fatal(err)
		}
		pub, _ := accountKey(e.Account)
		msgs[i] = msg{pub, e.SigningBytes(testNet), e.Signature}
	}
	single := map[string]func(m msg) bool{
		"stdlib": func(m msg) bool { return ed25519.Verify(m.pub, m.data, m.sig) },
		"zip215": func(m msg) bool { return voied.VerifyWithOptions(m.pub, m.data, m.sig, sigRule) },
	}
	for _, name := range []string{"stdlib", "zip215"} {
		verify := single[name]
		b.Run(name+"/serial", func(b *testing.B) {
			for i := range b.N {
				if !verify(msgs[i%len(msgs)]) {
					b.Fatal("bad signature")
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if !verify(msgs[i%len(msgs)]) {
						b.Error("bad signature")
						return
					}
					i++
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
	b.Run("ledger/parallel", func(b *testing.B) {
		var cs []*cand
		for len(cs) < b.N {
			for i := 0; i < len(raws) && len(cs) < b.N; i++ {
				e, _ := DecodeEntry(raws[i])
				cs = append(cs, &cand{e: e})
			}
		}
		for i := 0; i < len(cs); i += 256 {
			batch := cs[i:min(i+256, len(cs))]
			slices.SortStableFunc(batch, func(x, y *cand) int { return strings.Compare(string(x.e.Account), string(y.e.Account)) })
		}
		chunks := (len(cs) + SignatureBatch - 1) / SignatureBatch
		b.ResetTimer()
		parallel(runtime.GOMAXPROCS(0), chunks, func(k int) {
			verifyBatch(testNet, cs[k*SignatureBatch:min((k+1)*SignatureBatch, len(cs))])
		})
		b.StopTimer()
		for _, c := range cs {
			if c.err != nil {
				b.Fatal(c.err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	})
	for _, n := range []int{16, 32, 64, 128} {
		b.Run(fmt.Sprintf("batch%d/parallel", n), func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				bv := voied.NewBatchVerifierWithCapacity(n)
				check := func() {
					if ok, _ := bv.Verify(rand.Reader); !ok {
						b.Error("bad signature")
					}
					bv = voied.NewBatchVerifierWithCapacity(n)
				}
				i := 0
				for pb.Next() {
					m := msgs[i%len(msgs)]
					bv.AddWithOptions(m.pub, m.data, m.sig, sigRule)
					if i++; i%n == 0 {
						check()
					}
				}
				if i%n != 0 {
					check()
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
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
			g := &Genesis{Network: testNet, Grants: []GenesisGrant{{Peer: id, Amount: cycleGrant}}}
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
