package storage

import (
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"
)

// benchEntries signs n entries of 100 accounts, interleaved round-robin,
// each account's chain in order: a grant, then holds, payments to the
// next account, and leases. It returns the entries and the genesis.
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
				body = LeaseBody{Job: j, Requester: to, Price: 1000}
			}
			raws = append(raws, c.next(b, body))
		}
	}
	return raws, g
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
// IngestMany in batches of 256, on disk, synced once per batch. Run with a
// fixed count (-benchtime=50000x): signing the entries is not timed but
// takes a while.
func BenchmarkLedgerIngest(b *testing.B) {
	b.Run("parallel", func(b *testing.B) { benchIngest(b) })
	// One verifier: the serial cost of an entry, to set against
	// BenchmarkEd25519Verify/serial.
	b.Run("serial", func(b *testing.B) { benchIngest(b, WithVerifyWorkers(1)) })
}

func benchIngest(b *testing.B, opts ...LedgerOption) {
	raws, g := benchEntries(b, b.N)
	l := benchLedger(b, g, opts...)
	b.ReportAllocs()
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
// entry at a time.
func BenchmarkLedgerAppend(b *testing.B) {
	priv, id := testKey(b, "append")
	g := &Genesis{Network: testNet, Grants: []GenesisGrant{{Peer: id, Amount: 1}}}
	l := benchLedger(b, g)
	_, p := testKey(b, "p")
	b.ResetTimer()
	for i := range b.N {
		if _, err := l.Append(priv, LeaseBody{Job: job(fmt.Sprint(i)), Requester: p, Price: 1}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkEd25519Verify verifies the signatures of the same kind of
// entries directly, on one goroutine ("serial") and on all
// ("parallel"): the bound that ingest is measured against.
func BenchmarkEd25519Verify(b *testing.B) {
	raws, _ := benchEntries(b, 1024)
	type msg struct {
		pub       ed25519.PublicKey
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
	b.Run("serial", func(b *testing.B) {
		for i := range b.N {
			m := msgs[i%len(msgs)]
			if !ed25519.Verify(m.pub, m.data, m.sig) {
				b.Fatal("bad signature")
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				m := msgs[i%len(msgs)]
				if !ed25519.Verify(m.pub, m.data, m.sig) {
					b.Error("bad signature")
					return
				}
				i++
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	})
}
