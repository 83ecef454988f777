package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
)

// TestIngestManyBadSignatureInBatch hides one bad signature among valid
// entries of several accounts, across several signature batches: only it
// is refused, with the error VerifySignature gives it, and the rest is
// stored.
func TestIngestManyBadSignatureInBatch(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	spoil := map[string]func(t *testing.T, c *chain, e ledger.Entry) ledger.Entry{
		"forged signature": func(t *testing.T, c *chain, e ledger.Entry) ledger.Entry {
			e.Signature = bytes.Clone(e.Signature)
			e.Signature[40] ^= 0x80
			return e
		},
		"signed for another network": func(t *testing.T, c *chain, e ledger.Entry) ledger.Entry {
			if err := e.Sign("other", c.priv); err != nil {
				t.Fatal(err)
			}
			return e
		},
		"signature of another entry": func(t *testing.T, c *chain, e ledger.Entry) ledger.Entry {
			o := e
			o.Body = c.leaseFor(t, c.id, job("other"), 1)
			if err := o.Sign(testNet, c.priv); err != nil {
				t.Fatal(err)
			}
			e.Signature = o.Signature
			return e
		},
	}
	for name, f := range spoil {
		for _, workers := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s, %d workers", name, workers), func(t *testing.T) {
				const accounts, perChain = 5, 40 // 200 entries: 4 batches
				g := &ledger.Genesis{Network: testNet}
				var chains []*chain
				for a := range accounts {
					c := newChain(t, fmt.Sprint("acct-", a), at)
					chains = append(chains, c)
					g.Grants = append(g.Grants, ledger.GenesisGrant{Peer: c.id, Amount: cycleGrant})
				}
				l := openTestLedger(t, g, newFakeClock().Now, WithVerifyWorkers(workers))
				var raws [][]byte
				var bad ledger.Entry
				for a, c := range chains {
					for seq := 1; seq <= perChain; seq++ {
						body := cycleBody(c.id, seq)
						if a == 2 && seq == perChain {
							// The chain's last entry, so none waits on it.
							bad = f(t, c, c.entry(t, body))
							raws = append(raws, bad.Encode())
							continue
						}
						raws = append(raws, c.next(t, body))
					}
				}
				want := bad.VerifySignature(testNet)
				if !errors.Is(want, ledger.ErrBadSignature) {
					t.Fatalf("spoiled entry: VerifySignature = %v", want)
				}
				res, err := l.IngestMany(raws)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Accepted) != len(raws)-1 || len(res.Rejected) != 1 || res.Pending != 0 {
					t.Fatalf("accepted %d of %d, rejected %v, pending %d", len(res.Accepted), len(raws), res.Rejected, res.Pending)
				}
				r := res.Rejected[0]
				if r.Account != bad.Account || r.Seq != bad.Seq || !errors.Is(r.Err, ledger.ErrBadSignature) || r.Err.Error() != want.Error() {
					t.Fatalf("rejected %s seq %d: %v; want %s seq %d: %v", r.Account, r.Seq, r.Err, bad.Account, bad.Seq, want)
				}
				probs, err := l.Verify(context.Background())
				if err != nil || len(probs) > 0 {
					t.Fatalf("verify: %v, %v", probs, err)
				}
			})
		}
	}
}
