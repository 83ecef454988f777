package ledger

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"runtime"
	"slices"
	"strings"
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

// BenchmarkEd25519Verify verifies the signatures of the same kind of
// entries directly, on one goroutine ("serial") and on all ("parallel"):
// the bounds that ingest is measured against. "stdlib" is Go's
// crypto/ed25519.Verify (RFC 8032, cofactorless), the goal's baseline;
// "zip215" is curve25519-voi's single verification under the ledger's
// rule; "batchN" is its batch verification of N at a time in arrival order
// (every key expanded for each entry). For these, keys and signed bytes
// are prepared outside the timing. "ledger" is VerifyAll as storage's
// IngestMany runs it: each 256 entries sorted by account, chunks of SignatureBatch,
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
		var cs []*Candidate
		for len(cs) < b.N {
			for i := 0; i < len(raws) && len(cs) < b.N; i++ {
				e, _ := DecodeEntry(raws[i])
				cs = append(cs, &Candidate{Entry: e})
			}
		}
		for i := 0; i < len(cs); i += 256 {
			batch := cs[i:min(i+256, len(cs))]
			slices.SortStableFunc(batch, func(x, y *Candidate) int { return strings.Compare(string(x.Entry.Account), string(y.Entry.Account)) })
		}
		b.ResetTimer()
		VerifyAll(testNet, runtime.GOMAXPROCS(0), cs)
		b.StopTimer()
		for _, c := range cs {
			if c.Err != nil {
				b.Fatal(c.Err)
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
