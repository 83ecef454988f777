package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// ledgerEnv is a ledger whose genesis grants a 1000 and b 500; p (a
// provider) has no grant.
type ledgerEnv struct {
	t       *testing.T
	clock   *fakeClock
	g       *ledger.Genesis
	l       *Ledger
	a, b, p *chain
}

func newLedgerEnv(t *testing.T, opts ...LedgerOption) *ledgerEnv {
	t.Helper()
	clock := newFakeClock()
	env := &ledgerEnv{t: t, clock: clock}
	env.a = newChain(t, "a", clock.Now())
	env.b = newChain(t, "b", clock.Now())
	env.p = newChain(t, "p", clock.Now())
	env.g = &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: env.a.id, Amount: 1000}, {Peer: env.b.id, Amount: 500}}}
	env.l = openTestLedger(t, env.g, clock.Now, opts...)
	return env
}

// ok ingests raw and fails the test on error.
func (env *ledgerEnv) ok(raw []byte) ledger.Entry {
	env.t.Helper()
	e, err := env.l.Ingest(raw)
	if err != nil {
		env.t.Fatalf("ingest %s seq %d: %v", e.Account, e.Seq, err)
	}
	return e
}

func (env *ledgerEnv) balance(id peer.ID) Balance {
	env.t.Helper()
	b, err := env.l.Balance(id)
	if err != nil {
		env.t.Fatal(err)
	}
	return b
}

// noProblems runs Verify and fails on any problem.
func (env *ledgerEnv) noProblems() {
	env.t.Helper()
	probs, err := env.l.Verify(context.Background())
	if err != nil {
		env.t.Fatal(err)
	}
	for _, p := range probs {
		env.t.Errorf("verify: %v", p)
	}
}

func TestLedgerRules(t *testing.T) {
	cases := []struct {
		name string
		// run writes what the case needs and returns the outcome of the
		// entry under test.
		run  func(env *ledgerEnv) error
		want error
	}{
		{"grant", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			return err
		}, nil},
		{"grant of another amount", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(env.a.next(env.t, ledger.GrantBody{Amount: 1001}))
			return err
		}, ledger.ErrBadGrant},
		{"grant to an account genesis does not list", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(env.p.next(env.t, ledger.GrantBody{Amount: 1000}))
			return err
		}, ledger.ErrBadGrant},
		{"second grant", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			return err
		}, ledger.ErrBadGrant},
		{"overdraft", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 600}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.HoldBody{Job: job("2"), Provider: env.p.id, Amount: 401}))
			return err
		}, ledger.ErrOverdraft},
		{"hold of all that is available", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 600}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.HoldBody{Job: job("2"), Provider: env.p.id, Amount: 400}))
			return err
		}, nil},
		{"second open hold for a job", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 1}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 1}))
			return err
		}, ledger.ErrHoldExists},
		{"payment above hold", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 101}))
			return err
		}, ledger.ErrPaymentAboveHold},
		{"payment without hold", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 1}))
			return err
		}, ledger.ErrNoHold},
		{"release then payment", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.a.next(env.t, ledger.ReleaseBody{Job: job("1")}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 1}))
			return err
		}, ledger.ErrNoHold},
		{"release without hold", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(env.a.next(env.t, ledger.ReleaseBody{Job: job("1")}))
			return err
		}, ledger.ErrNoHold},
		{"double payment", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.a.next(env.t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 100}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 100}))
			return err
		}, ledger.ErrAlreadyPaid},
		{"hold for a paid job", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.a.next(env.t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 100}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			return err
		}, ledger.ErrAlreadyPaid},
		{"hold again after release (job re-assigned)", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.a.next(env.t, ledger.ReleaseBody{Job: job("1")}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.b.id, Amount: 100}))
			return err
		}, nil},
		{"hold of zero (it escrows nothing)", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			_, err := env.l.Ingest(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 0}))
			return err
		}, ledger.ErrMalformed},
		{"lease nobody held", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, ledger.ErrUnfunded},
		{"lease of a hold naming it", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, nil},
		{"lease of a posting hold, naming no provider", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Amount: 100}))
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, nil},
		{"lease of a posting hold without a grant (the fan-out)", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Amount: 100}))
			_, err := env.l.Ingest(env.p.next(env.t, ledger.LeaseBody{Job: job("1"), Requester: env.a.id, Price: 1, Attempt: 1, Grant: make([]byte, ledger.GrantSize)}))
			return err
		}, ledger.ErrBadLeaseGrant},
		{"lease of a posting hold quoting another provider's grant", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Amount: 100}))
			l := env.a.leaseFor(env.t, env.p.id, job("1"), 1)
			env.ok(env.p.next(env.t, l))
			_, err := env.l.Ingest(env.b.next(env.t, l))
			return err
		}, ledger.ErrBadLeaseGrant},
		{"lease without a grant, nobody held (refused, not waiting)", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(env.p.next(env.t, ledger.LeaseBody{Job: job("1"), Requester: env.a.id, Price: 1, Attempt: 1, Grant: make([]byte, ledger.GrantSize)}))
			if n := env.l.PendingLen(); n != 0 {
				env.t.Errorf("%d entries pending", n)
			}
			return err
		}, ledger.ErrBadLeaseGrant},
		{"lease of a hold naming another provider", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.b.id, Amount: 100}))
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, ledger.ErrUnfunded},
		{"lease of another requester's hold", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			_, err := env.l.Ingest(env.p.next(env.t, env.b.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, ledger.ErrUnfunded},
		{"lease of a hold since paid", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.a.next(env.t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 100}))
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, nil},
		{"lease of a hold since released", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Amount: 100}))
			env.ok(env.a.next(env.t, ledger.ReleaseBody{Job: job("1")}))
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, nil},
		{"second lease of one hold", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, ledger.ErrUnfunded},
		{"second lease after a second award's hold", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Amount: 100}))
			env.ok(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			env.ok(env.a.next(env.t, ledger.ReleaseBody{Job: job("1")}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			_, err := env.l.Ingest(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			return err
		}, nil},
		{"receipt without a lease", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(env.p.next(env.t, ledger.ReceiptBody{Job: job("1"), Receipt: job("r"), Result: "bafy"}))
			return err
		}, ledger.ErrNoLease},
		{"receipt of its lease", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			_, err := env.l.Ingest(env.p.next(env.t, ledger.ReceiptBody{Job: job("1"), Receipt: job("r"), Result: "bafy"}))
			return err
		}, nil},
		{"receipt of another job's lease", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			_, err := env.l.Ingest(env.p.next(env.t, ledger.ReceiptBody{Job: job("2"), Receipt: job("r"), Result: "bafy"}))
			return err
		}, ledger.ErrNoLease},
		{"second receipt of one lease", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
			env.ok(env.p.next(env.t, env.a.leaseFor(env.t, env.p.id, job("1"), 1)))
			env.ok(env.p.next(env.t, ledger.ReceiptBody{Job: job("1"), Receipt: job("r"), Result: "bafy"}))
			_, err := env.l.Ingest(env.p.next(env.t, ledger.ReceiptBody{Job: job("1"), Receipt: job("r2"), Result: "bafy"}))
			return err
		}, ledger.ErrNoLease},
		{"forged signature", func(env *ledgerEnv) error {
			e := env.a.entry(env.t, ledger.GrantBody{Amount: 1000})
			e.Signature = nil
			if err := e.Sign(testNet, env.b.priv); err == nil {
				env.t.Fatal("signed a's entry with b's key")
			}
			sig, _ := env.b.priv.Sign(e.SigningBytes(testNet))
			e.Signature = sig
			_, err := env.l.Ingest(e.Encode())
			return err
		}, ledger.ErrBadSignature},
		{"flipped signature bit", func(env *ledgerEnv) error {
			e := env.a.entry(env.t, ledger.GrantBody{Amount: 1000})
			e.Signature[10] ^= 1
			_, err := env.l.Ingest(e.Encode())
			return err
		}, ledger.ErrBadSignature},
		{"body changed after signing", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			e := env.a.entry(env.t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100})
			e.Body = ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 1}
			_, err := env.l.Ingest(e.Encode())
			return err
		}, ledger.ErrBadSignature},
		{"wrong network", func(env *ledgerEnv) error {
			env.a.net = "other"
			_, err := env.l.Ingest(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			return err
		}, ledger.ErrBadSignature},
		{"broken chain", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.a.prev = job("elsewhere")
			_, err := env.l.Ingest(env.a.next(env.t, ledger.ReleaseBody{Job: job("1")}))
			return err
		}, ledger.ErrBrokenChain},
		{"gap", func(env *ledgerEnv) error {
			env.a.next(env.t, ledger.GrantBody{Amount: 1000})
			_, err := env.l.Ingest(env.a.next(env.t, env.b.leaseFor(env.t, env.a.id, job("1"), 1)))
			return err
		}, ledger.ErrGap},
		{"duplicate", func(env *ledgerEnv) error {
			raw := env.a.next(env.t, ledger.GrantBody{Amount: 1000})
			env.ok(raw)
			_, err := env.l.Ingest(raw)
			return err
		}, ledger.ErrDuplicate},
		{"time in the future", func(env *ledgerEnv) error {
			env.a.at = env.clock.Now().Add(DefaultMaxClockSkew + time.Second)
			_, err := env.l.Ingest(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			return err
		}, ledger.ErrFutureTime},
		{"time before predecessor", func(env *ledgerEnv) error {
			env.ok(env.a.next(env.t, ledger.GrantBody{Amount: 1000}))
			env.a.at = env.a.at.Add(-time.Hour)
			_, err := env.l.Ingest(env.a.next(env.t, env.b.leaseFor(env.t, env.a.id, job("1"), 1)))
			return err
		}, ledger.ErrBadTimestamp},
		{"malformed", func(env *ledgerEnv) error {
			raw := env.a.next(env.t, ledger.GrantBody{Amount: 1000})
			_, err := env.l.Ingest(raw[:len(raw)-3])
			return err
		}, ledger.ErrMalformed},
		{"oversized", func(env *ledgerEnv) error {
			_, err := env.l.Ingest(make([]byte, ledger.MaxEntrySize+1))
			return err
		}, ledger.ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newLedgerEnv(t)
			err := tc.run(env)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			env.noProblems()
		})
	}
}

func TestLedgerGapFilled(t *testing.T) {
	env := newLedgerEnv(t)
	raws := [][]byte{
		env.a.next(t, ledger.GrantBody{Amount: 1000}),
		env.a.next(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 300}),
		env.a.next(t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 200}),
	}
	for _, raw := range [][]byte{raws[2], raws[1]} {
		if _, err := env.l.Ingest(raw); !errors.Is(err, ledger.ErrGap) {
			t.Fatalf("err = %v, want ErrGap", err)
		}
	}
	if _, err := env.l.Ingest(raws[2]); !errors.Is(err, ledger.ErrGap) {
		t.Fatalf("pending again: err = %v, want ErrGap", err)
	}
	if n := env.l.PendingLen(); n != 2 {
		t.Fatalf("pending %d, want 2", n)
	}
	env.ok(raws[0])
	if h, _ := env.l.Head(env.a.id); h.Seq != 3 || h.Hash != sha256.Sum256(raws[2]) {
		t.Fatalf("head %+v, want seq 3", h)
	}
	if _, err := env.l.Ingest(raws[2]); !errors.Is(err, ledger.ErrDuplicate) {
		t.Fatalf("err = %v, want ErrDuplicate", err)
	}
	if b := env.balance(env.p.id); b.Balance != 200 {
		t.Fatalf("provider balance %+v", b)
	}
	if env.l.PendingLen() != 0 || env.l.Count() != 3 {
		t.Fatalf("pending %d, count %d", env.l.PendingLen(), env.l.Count())
	}
	env.noProblems()
}

func TestLedgerEquivocation(t *testing.T) {
	env := newLedgerEnv(t)
	env.ok(env.a.next(t, ledger.GrantBody{Amount: 1000}))
	fork := *env.a
	env.ok(env.a.next(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}))
	second := fork.next(t, ledger.HoldBody{Job: job("1"), Provider: env.b.id, Amount: 900})

	_, err := env.l.Ingest(second)
	var eq *ledger.EquivocationError
	if !errors.As(err, &eq) || !errors.Is(err, ledger.ErrEquivocation) {
		t.Fatalf("err = %v, want an EquivocationError", err)
	}
	if who, err := eq.Proof.Verify(testNet); err != nil || who != env.a.id {
		t.Fatalf("proof: %v, %v", who, err)
	}
	if _, err := eq.Proof.Verify("other"); !errors.Is(err, ledger.ErrBadFraudProof) {
		t.Fatalf("proof on another network: %v", err)
	}
	if frozen, _ := env.l.Frozen(env.a.id); !frozen {
		t.Fatal("account not frozen")
	}
	if p, ok, _ := env.l.FraudProofFor(env.a.id); !ok || p.Encode() == nil {
		t.Fatal("no stored proof")
	}
	// Later entries are refused, the past stays.
	if _, err := env.l.Ingest(env.a.next(t, ledger.ReleaseBody{Job: job("1")})); !errors.Is(err, ledger.ErrFrozen) {
		t.Fatalf("later entry: err = %v, want ErrFrozen", err)
	}
	if _, err := env.l.Append(env.a.priv, ledger.ReleaseBody{Job: job("1")}); !errors.Is(err, ledger.ErrFrozen) {
		t.Fatalf("append: err = %v, want ErrFrozen", err)
	}
	if _, err := env.l.Ingest(second); !errors.Is(err, ledger.ErrFrozen) {
		t.Fatalf("proof entry again: err = %v, want ErrFrozen", err)
	}
	if b := env.balance(env.a.id); b.Balance != 1000 || b.Held != 100 {
		t.Fatalf("balance %+v", b)
	}
	env.noProblems()

	// Another node learns of it from the proof alone.
	other := newLedgerEnv(t)
	if err := other.l.IngestFraudProof(eq.Proof); err != nil {
		t.Fatal(err)
	}
	if err := other.l.IngestFraudProof(eq.Proof); !errors.Is(err, ledger.ErrDuplicate) {
		t.Fatalf("second time: err = %v, want ErrDuplicate", err)
	}
	if frozen, _ := other.l.Frozen(env.a.id); !frozen {
		t.Fatal("not frozen by the proof")
	}
	if err := other.l.IngestFraudProof(ledger.FraudProof{A: second, B: second}); !errors.Is(err, ledger.ErrBadFraudProof) {
		t.Fatalf("same entry twice: err = %v", err)
	}
	decoded, err := ledger.DecodeFraudProof(eq.Proof.Encode())
	if err != nil || string(decoded.A) != string(eq.Proof.A) || string(decoded.B) != string(eq.Proof.B) {
		t.Fatalf("proof round trip: %v", err)
	}
	other.noProblems()

	// IngestMany reports the proof too.
	third := newLedgerEnv(t)
	if _, err := third.l.IngestMany([][]byte{mustEntry(t, env.l, env.a.id, 1), mustEntry(t, env.l, env.a.id, 2)}); err != nil {
		t.Fatal(err)
	}
	res, err := third.l.IngestMany([][]byte{second})
	if err != nil || len(res.Fraud) != 1 || len(res.Accepted) != 0 {
		t.Fatalf("IngestMany: %+v, %v", res, err)
	}
	third.noProblems()
}

func mustEntry(t *testing.T, l *Ledger, id peer.ID, seq uint64) []byte {
	t.Helper()
	es, err := l.Entries(id, seq-1, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("entry %d: %v", seq, err)
	}
	return es[0].Encode()
}

// TestAppendRefusesLeaseWithoutGrant checks that a node never writes a
// lease into its own chain that every other node would refuse (and that
// would stop its chain there): one whose grant is missing or not the
// requester's award to this node, at this price.
func TestAppendRefusesLeaseWithoutGrant(t *testing.T) {
	env := newLedgerEnv(t)
	if _, err := env.l.Append(env.a.priv, ledger.GrantBody{Amount: 1000}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.l.Append(env.a.priv, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100, Expiry: env.clock.Now().Add(time.Hour).UnixNano(), Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	good := env.a.leaseFor(t, env.p.id, job("1"), 5)
	for name, tc := range map[string]struct {
		l    ledger.LeaseBody
		want error
	}{
		// A lease without its 64 bytes of grant does not even decode.
		"none":               {ledger.LeaseBody{Job: job("1"), Requester: env.a.id, Price: 5, Attempt: 1}, ledger.ErrMalformed},
		"zeros":              {ledger.LeaseBody{Job: job("1"), Requester: env.a.id, Price: 5, Attempt: 1, Grant: make([]byte, ledger.GrantSize)}, ledger.ErrBadLeaseGrant},
		"to another":         {env.a.leaseFor(t, env.b.id, job("1"), 5), ledger.ErrBadLeaseGrant},
		"of another price":   {ledger.LeaseBody{Job: job("1"), Requester: env.a.id, Price: 6, Attempt: 1, Grant: good.Grant}, ledger.ErrBadLeaseGrant},
		"of another job":     {ledger.LeaseBody{Job: job("2"), Requester: env.a.id, Price: 5, Attempt: 1, Grant: good.Grant}, ledger.ErrBadLeaseGrant},
		"of another attempt": {ledger.LeaseBody{Job: job("1"), Requester: env.a.id, Price: 5, Attempt: 2, Grant: good.Grant}, ledger.ErrBadLeaseGrant},
	} {
		if _, err := env.l.Append(env.p.priv, tc.l); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
	if h, _ := env.l.Head(env.p.id); h.Seq != 0 {
		t.Fatalf("the provider's chain has %d entries", h.Seq)
	}
	if _, err := env.l.Append(env.p.priv, good); err != nil {
		t.Fatal(err)
	}
}

// TestLedgerJobFlow follows jobs' ledger entries (of version 3) and the
// balances: an award replacing the posting hold, a lease, a receipt, the
// provider's claim with the requester's acceptance; a posting hold
// released; a provider spending what it earned.
func TestLedgerJobFlow(t *testing.T) {
	env := newLedgerEnv(t)
	l := env.l
	must := func(e ledger.Entry, err error) ledger.Entry {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	expiry := env.clock.Now().Add(time.Hour).UnixNano()
	must(l.Append(env.a.priv, ledger.GrantBody{Amount: 1000}))
	must(l.Append(env.b.priv, ledger.GrantBody{Amount: 500}))
	// Posted, then awarded: the named hold replaces the posting hold.
	must(l.Append(env.a.priv, ledger.HoldBody{Job: job("1"), Amount: 400}))
	hold := must(l.Append(env.a.priv, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 300, Expiry: expiry, Replicas: 1}))
	if _, ok, err := l.HoldFor(env.a.id, job("1")); err != nil || ok {
		t.Fatalf("posting hold still open: %v, %v", ok, err)
	}
	e, h, ok, err := l.HoldEntryOf(env.a.id, job("1"), env.p.id)
	if err != nil || !ok || e.Hash() != hold.Hash() || h.Provider != env.p.id || h.Amount != 300 || !h.Named || h.Expiry.UnixNano() != expiry || h.Seq != hold.Seq {
		t.Fatalf("HoldEntryOf = %+v, %v, %v", h, ok, err)
	}
	if es, err := l.EscrowFor(env.a.id, job("1")); err != nil || es.Hold != nil || len(es.Claims) != 0 || len(es.Named) != 1 || es.Named[0].Seq != hold.Seq {
		t.Fatalf("EscrowFor once awarded = %+v, %v", es, err)
	}
	must(l.Append(env.p.priv, env.a.leaseFor(t, env.p.id, job("1"), 250)))
	rc := must(l.Append(env.p.priv, ledger.ReceiptBody{Job: job("1"), Receipt: job("r1"), Result: "bafy", Usage: ledger.Usage{WallMS: 10, GPUMS: 9}}))
	if b := env.balance(env.a.id); b.Balance != 1000 || b.Held != 300 || b.Available() != 700 {
		t.Fatalf("a while held: %+v", b)
	}
	if o, ok, err := l.ClaimableHold(env.p.id, env.a.id, job("1"), env.clock.Now()); err != nil || !ok || o.Seq != hold.Seq {
		t.Fatalf("ClaimableHold = %+v, %v, %v", o, ok, err)
	}
	if _, ok, _ := l.ClaimableHold(env.p.id, env.a.id, job("1"), time.Unix(0, expiry+1)); ok {
		t.Fatal("a hold claimable after its expiry")
	}
	// Accepted: the provider claims 250 out of 300; the rest returns.
	claim := acceptedClaim(t, env.a.priv, env.p.id, ledger.ClaimBody{Job: job("1"), HoldSeq: hold.Seq, Amount: 250, Final: true, Receipt: rc.Body.(ledger.ReceiptBody).Receipt})
	ce := must(l.Append(env.p.priv, claim))
	if _, ok, _ := l.HoldOf(env.a.id, job("1"), env.p.id); ok {
		t.Fatal("hold still open after the final claim")
	}
	if got, ok, err := l.FinalClaim(env.a.id, job("1"), env.p.id); err != nil || !ok || got.Hash() != ce.Hash() {
		t.Fatalf("FinalClaim: %v, %v", ok, err)
	}
	if c, err := l.Claimed(env.a.id, job("1"), env.p.id); err != nil || !c {
		t.Fatalf("Claimed: %v, %v", c, err)
	}
	// The requester's escrow shows the claim, its own chain no payment.
	if es, err := l.EscrowFor(env.a.id, job("1")); err != nil || len(es.Claims) != 1 || es.Claims[0].Hash() != ce.Hash() ||
		es.Payment != nil || es.Hold != nil || len(es.Named) != 0 {
		t.Fatalf("EscrowFor once claimed = %+v, %v", es, err)
	}
	if cs, err := l.FinalClaims(env.a.id, job("1")); err != nil || len(cs) != 1 || cs[0].Hash() != ce.Hash() {
		t.Fatalf("FinalClaims = %v, %v", cs, err)
	}
	if cs, err := l.FinalClaims(env.b.id, job("1")); err != nil || len(cs) != 0 {
		t.Fatalf("FinalClaims of another requester = %v, %v", cs, err)
	}
	// A job awarded to two providers at once (replicas), one waives.
	hb := must(l.Append(env.a.priv, ledger.HoldBody{Job: job("2"), Provider: env.b.id, Amount: 100, Expiry: expiry, Replicas: 2}))
	must(l.Append(env.a.priv, ledger.HoldBody{Job: job("2"), Provider: env.p.id, Amount: 100, Expiry: expiry, Replicas: 2}))
	if hs, err := l.JobHolds(env.a.id, job("2")); err != nil || len(hs) != 2 {
		t.Fatalf("JobHolds = %+v, %v", hs, err)
	}
	must(l.Append(env.b.priv, ledger.WaiveBody{Job: job("2"), Requester: env.a.id, HoldSeq: hb.Seq}))
	if hs, err := l.JobHolds(env.a.id, job("2")); err != nil || len(hs) != 1 || hs[0].Provider != env.p.id {
		t.Fatalf("JobHolds after the waive = %+v, %v", hs, err)
	}
	// Failed job, held when it was posted (no provider named): released.
	must(l.Append(env.b.priv, ledger.HoldBody{Job: job("3"), Amount: 500}))
	if h, ok, err := l.HoldFor(env.b.id, job("3")); err != nil || !ok || h.Provider != "" || h.Amount != 500 {
		t.Fatalf("HoldFor = %+v, %v, %v", h, ok, err)
	}
	must(l.Append(env.b.priv, ledger.ReleaseBody{Job: job("3")}))
	// The provider spends what it earned.
	must(l.Append(env.p.priv, ledger.HoldBody{Job: job("4"), Provider: env.b.id, Amount: 250, Expiry: expiry, Replicas: 1}))
	if _, err := l.Append(env.p.priv, ledger.HoldBody{Job: job("5"), Amount: 1}); !errors.Is(err, ledger.ErrOverdraft) {
		t.Fatalf("provider overdraft: err = %v", err)
	}
	rep := func(id peer.ID) ledger.Reputation {
		r, err := l.Reputation(id)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := rep(env.p.id); r != (ledger.Reputation{Leases: 1, Receipts: 1, JobsPaid: 1, Earned: 250, GPUMS: 9, WallMS: 10, Awards: 1}) {
		t.Errorf("p's reputation %+v", r)
	}
	if r := rep(env.a.id); r != (ledger.Reputation{Awards: 3, PaidFor: 1, Spent: 250}) {
		t.Errorf("a's reputation %+v", r)
	}
	if r := rep(env.b.id); r != (ledger.Reputation{Waived: 1}) {
		t.Errorf("b's reputation %+v", r)
	}
	n := 0
	if err := l.Reputations(func(peer.ID, ledger.Reputation) error { n++; return nil }); err != nil || n != 3 {
		t.Fatalf("Reputations: %d peers, %v", n, err)
	}

	want := map[peer.ID]Balance{
		env.a.id: {Balance: 750, Held: 100},
		env.b.id: {Balance: 500},
		env.p.id: {Balance: 250, Held: 250},
	}
	for id, w := range want {
		if b := env.balance(id); b != w {
			t.Errorf("%s: %+v, want %+v", id, b, w)
		}
	}
	total, err := l.Total()
	if err != nil {
		t.Fatal(err)
	}
	granted, _ := l.Granted()
	if total != 1500 || granted != 1500 || env.g.Total([]peer.ID{env.a.id, env.b.id}) != total {
		t.Fatalf("total %d, granted %d", total, granted)
	}
	if l.Count() != 13 {
		t.Fatalf("count %d", l.Count())
	}
	env.noProblems()

	// Queries.
	es, err := l.Entries(env.a.id, 2, 2)
	if err != nil || len(es) != 2 || es[0].Seq != 3 || es[1].Seq != 4 {
		t.Fatalf("Entries = %v, %v", es, err)
	}
	got, err := l.EntryByHash(rc.Hash())
	if err != nil || got.Hash() != rc.Hash() {
		t.Fatalf("EntryByHash: %v", err)
	}
	if _, err := l.EntryByHash(job("none")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("EntryByHash(none): %v", err)
	}
	n, last := 0, ledger.Hash{}
	for item, err := range l.Items() {
		if err != nil || bytes.Compare(item.Hash[:], last[:]) <= 0 {
			t.Fatalf("items out of hash order: %v", err)
		}
		if e, err := l.EntryByHash(item.Hash); err != nil || e.Time.UnixNano() != item.Time {
			t.Fatalf("item %v: its entry's time %v (%v)", item, e.Time, err)
		}
		last = item.Hash
		n++
	}
	if n != 13 {
		t.Fatalf("%d items", n)
	}
}

func TestAppendBatchAtomic(t *testing.T) {
	env := newLedgerEnv(t)
	if _, err := env.l.AppendBatch(env.a.priv, []ledger.Body{
		ledger.GrantBody{Amount: 1000},
		ledger.HoldBody{Job: job("1"), Amount: 1001},
	}); !errors.Is(err, ledger.ErrOverdraft) {
		t.Fatalf("err = %v", err)
	}
	if env.l.Count() != 0 {
		t.Fatal("a refused batch left entries")
	}
	es, err := env.l.AppendBatch(env.a.priv, []ledger.Body{ledger.GrantBody{Amount: 1000}, ledger.HoldBody{Job: job("1"), Amount: 1000}})
	if err != nil || len(es) != 2 || es[1].Seq != 2 {
		t.Fatalf("%v, %v", es, err)
	}
	// Own entries never go back in time, even when the clock does.
	env.clock.Advance(-time.Hour)
	e, err := env.l.Append(env.a.priv, ledger.ReleaseBody{Job: job("1")})
	if err != nil || e.Time.Before(es[1].Time) {
		t.Fatalf("%v, %v", e, err)
	}
	env.noProblems()
}

// TestLedgerConvergence feeds the same entries to ledgers in different
// orders and batches: they end up equal, including a hold that relies on
// a payment from another chain arriving after it, and leases (and the
// receipts after them) that arrive before the holds that back them.
func TestLedgerConvergence(t *testing.T) {
	env := newLedgerEnv(t)
	var raws [][]byte
	add := func(raw []byte) { raws = append(raws, raw) }
	add(env.a.next(t, ledger.GrantBody{Amount: 1000}))
	add(env.b.next(t, ledger.GrantBody{Amount: 500}))
	for i := range 20 {
		j := job(string(rune('A' + i)))
		named := env.p.id
		if i%2 == 0 {
			named = "" // a posting hold, which backs the first award
		}
		add(env.a.next(t, ledger.HoldBody{Job: j, Provider: named, Amount: 40}))
		// The provider's lease and receipt: valid only after the hold.
		add(env.p.next(t, env.a.leaseFor(t, env.p.id, j, 40)))
		add(env.p.next(t, ledger.ReceiptBody{Job: j, Receipt: j, Result: "bafy"}))
		add(env.a.next(t, ledger.PaymentBody{Job: j, To: env.p.id, Amount: 35}))
		// The provider spends its earnings at once: valid only after the
		// payment above.
		add(env.p.next(t, ledger.HoldBody{Job: j, Provider: env.b.id, Amount: 30}))
		add(env.b.next(t, env.p.leaseFor(t, env.b.id, j, 30)))
		add(env.p.next(t, ledger.PaymentBody{Job: j, To: env.b.id, Amount: 30}))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var digest ledger.Hash
	for round := range 40 {
		l := openTestLedger(t, env.g, env.clock.Now)
		order := append([][]byte(nil), raws...)
		if round > 0 {
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		for len(order) > 0 {
			n := min(len(order), 1+rng.IntN(16))
			if round%2 == 0 {
				if _, err := l.IngestMany(order[:n]); err != nil {
					t.Fatal(err)
				}
			} else {
				for _, raw := range order[:n] {
					if _, err := l.Ingest(raw); err != nil && !ledger.Waits(err) {
						t.Fatalf("round %d: %v", round, err)
					}
				}
			}
			order = order[n:]
		}
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			digest = d
		}
		if d != digest || l.Count() != uint64(len(raws)) || l.PendingLen() != 0 {
			t.Fatalf("round %d: digest %s, count %d of %d, pending %d", round, d, l.Count(), len(raws), l.PendingLen())
		}
		if b, _ := l.Balance(env.p.id); b != (Balance{Balance: 100}) {
			t.Fatalf("round %d: provider %+v", round, b)
		}
		if total, _ := l.Total(); total != 1500 {
			t.Fatalf("round %d: total %d", round, total)
		}
		probs, err := l.Verify(context.Background())
		if err != nil || len(probs) != 0 {
			t.Fatalf("round %d: verify %v, %v", round, probs, err)
		}
	}
}

func TestIngestManyResult(t *testing.T) {
	env := newLedgerEnv(t, WithPendingLimit(3))
	var raws [][]byte
	raws = append(raws, env.a.next(t, ledger.GrantBody{Amount: 1000}))
	for i := range 6 {
		raws = append(raws, env.a.next(t, ledger.HoldBody{Job: job(string(rune('a' + i))), Amount: 1}))
	}
	// Seqs 2..7 without 1: all wait, the bound keeps the newest 3.
	res, err := env.l.IngestMany(raws[1:])
	if err != nil || res.Pending != 3 || len(res.Accepted) != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	bad := env.b.next(t, ledger.GrantBody{Amount: 1})
	res, err = env.l.IngestMany([][]byte{raws[0], raws[0], bad, {1, 2, 3}, raws[1]})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Accepted) != 2 || res.Duplicates != 1 || len(res.Rejected) != 2 || res.Pending != 3 {
		t.Fatalf("%+v", res)
	}
	if !errors.Is(res.Rejected[0].Err, ledger.ErrMalformed) && !errors.Is(res.Rejected[1].Err, ledger.ErrMalformed) {
		t.Fatalf("rejections %+v", res.Rejected)
	}
	// The missing seqs 3 and 4 (dropped) arrive: the rest follows from the
	// buffer.
	res, err = env.l.IngestMany([][]byte{raws[3], raws[2]})
	if err != nil || len(res.Accepted) != 5 || res.Pending != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	env.noProblems()
}

func TestLedgerVerifyTampered(t *testing.T) {
	cases := map[string]struct {
		tamper func(env *ledgerEnv, txn *badger.Txn) error
		want   error
	}{
		"garbage entry": {func(env *ledgerEnv, txn *badger.Txn) error {
			return txn.Set(entryKey(env.a.id, 2), []byte("garbage"))
		}, ledger.ErrMalformed},
		"entry with a bad signature": {func(env *ledgerEnv, txn *badger.Txn) error {
			e, _ := ledger.DecodeEntry(mustEntry(env.t, env.l, env.a.id, 2))
			e.Body = ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 999}
			return txn.Set(entryKey(env.a.id, 2), e.Encode())
		}, ledger.ErrBadSignature},
		"validly signed entry that breaks a rule": {func(env *ledgerEnv, txn *badger.Txn) error {
			e := ledger.Entry{Account: env.a.id, Seq: 4, Prev: env.l.mustHead(env.t, env.a.id), Time: env.a.at,
				Body: ledger.PaymentBody{Job: job("none"), To: env.p.id, Amount: 1}}.AsVersion2()
			if err := e.Sign(testNet, env.a.priv); err != nil {
				return err
			}
			return txn.Set(entryKey(env.a.id, 4), e.Encode())
		}, ledger.ErrNoHold},
		"missing entry": {func(env *ledgerEnv, txn *badger.Txn) error {
			return txn.Delete(entryKey(env.a.id, 2))
		}, ledger.ErrGap},
		"balance edited": {func(env *ledgerEnv, txn *badger.Txn) error {
			a, _ := env.l.committed(env.p.id)
			a.Balance += 1000
			return txn.Set(acctKey(env.p.id), a.Encode())
		}, ErrInconsistent},
		"hold index deleted": {func(env *ledgerEnv, txn *badger.Txn) error {
			return txn.Delete(holdKey(env.b.id, job("2"), ""))
		}, ErrInconsistent},
		"count edited": {func(env *ledgerEnv, txn *badger.Txn) error {
			return txn.Set([]byte(keyLedgerCount), []byte{0, 0, 0, 0, 0, 0, 0, 1})
		}, ErrInconsistent},
		"validly signed lease that no hold backs": {func(env *ledgerEnv, txn *badger.Txn) error {
			e := ledger.Entry{Account: env.p.id, Seq: 3, Prev: env.l.mustHead(env.t, env.p.id), Time: env.p.at,
				Body: env.a.leaseFor(env.t, env.p.id, job("none"), 1)}
			if err := e.Sign(testNet, env.p.priv); err != nil {
				return err
			}
			return txn.Set(entryKey(env.p.id, 3), e.Encode())
		}, ledger.ErrUnfunded},
		"validly signed lease of a held job that its requester did not grant": {func(env *ledgerEnv, txn *badger.Txn) error {
			e := ledger.Entry{Account: env.p.id, Seq: 3, Prev: env.l.mustHead(env.t, env.p.id), Time: env.p.at,
				Body: ledger.LeaseBody{Job: job("2"), Requester: env.b.id, Price: 1, Attempt: 1, Grant: env.a.leaseFor(env.t, env.p.id, job("2"), 1).Grant}}
			if err := e.Sign(testNet, env.p.priv); err != nil {
				return err
			}
			return txn.Set(entryKey(env.p.id, 3), e.Encode())
		}, ledger.ErrBadLeaseGrant},
		"validly signed receipt without a lease": {func(env *ledgerEnv, txn *badger.Txn) error {
			e := ledger.Entry{Account: env.p.id, Seq: 3, Prev: env.l.mustHead(env.t, env.p.id), Time: env.p.at,
				Body: ledger.ReceiptBody{Job: job("2"), Receipt: job("r"), Result: "bafy"}}
			if err := e.Sign(testNet, env.p.priv); err != nil {
				return err
			}
			return txn.Set(entryKey(env.p.id, 3), e.Encode())
		}, ledger.ErrNoLease},
		"index of holds written deleted": {func(env *ledgerEnv, txn *badger.Txn) error {
			return txn.Delete(fundKey(env.a.id, job("1"), env.p.id))
		}, ErrInconsistent},
		"index of holds written invented": {func(env *ledgerEnv, txn *badger.Txn) error {
			return txn.Set(fundKey(env.a.id, job("9"), ""), binary.BigEndian.AppendUint64(nil, 1))
		}, ErrInconsistent},
		"lease index edited": {func(env *ledgerEnv, txn *badger.Txn) error {
			return txn.Set(leaseKey(env.p.id, job("1")), ledger.LeaseRecord{Leases: 2, Receipts: 1}.Encode())
		}, ErrInconsistent},
		"rate state edited": {func(env *ledgerEnv, txn *badger.Txn) error {
			a, _ := env.l.committed(env.a.id)
			a.Paced = 0
			return txn.Set(acctKey(env.a.id), a.Encode())
		}, ErrInconsistent},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := newLedgerEnv(t)
			env.ok(env.a.next(t, ledger.GrantBody{Amount: 1000}))
			env.ok(env.a.next(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 300}))
			env.ok(env.a.next(t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 300}))
			env.ok(env.b.next(t, ledger.GrantBody{Amount: 500}))
			env.ok(env.b.next(t, ledger.HoldBody{Job: job("2"), Provider: env.p.id, Amount: 10}))
			env.ok(env.p.next(t, env.a.leaseFor(t, env.p.id, job("1"), 300)))
			env.ok(env.p.next(t, ledger.ReceiptBody{Job: job("1"), Receipt: job("r"), Result: "bafy"}))
			env.noProblems()
			if err := env.l.db.bdb.Update(func(txn *badger.Txn) error { return tc.tamper(env, txn) }); err != nil {
				t.Fatal(err)
			}
			probs, err := env.l.Verify(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range probs {
				found = found || errors.Is(p, tc.want)
			}
			if !found {
				t.Fatalf("problems %v, want one with %v", probs, tc.want)
			}
		})
	}
}

func (l *Ledger) mustHead(t *testing.T, id peer.ID) ledger.Hash {
	t.Helper()
	h, err := l.Head(id)
	if err != nil {
		t.Fatal(err)
	}
	return h.Hash
}

func TestLedgerReopen(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	a := newChain(t, "a", clock.Now())
	g := &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: a.id, Amount: 10}}}
	open := func(g *ledger.Genesis) (*DB, *Ledger, error) {
		db, err := Open(dir, Options{Network: testNet})
		if err != nil {
			t.Fatal(err)
		}
		l, err := OpenLedger(db, testNet, g, clock.Now)
		if err != nil {
			db.Close()
		}
		return db, l, err
	}
	db, l, err := open(g)
	if err != nil {
		t.Fatal(err)
	}
	_, p := testKey(t, "p")
	grant := a.next(t, ledger.GrantBody{Amount: 10})
	for _, raw := range [][]byte{
		grant,
		a.next(t, ledger.HoldBody{Job: job("h"), Amount: 4}),
		a.next(t, ledger.HoldBody{Job: job("paid"), Amount: 2}),
		a.next(t, ledger.PaymentBody{Job: job("paid"), To: p, Amount: 1}),
	} {
		if _, err := l.Ingest(raw); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	other := *g
	other.Testnet = true
	if _, _, err := open(&other); !errors.Is(err, ledger.ErrGenesis) {
		t.Fatalf("another genesis: err = %v", err)
	}
	db, l, err = open(g)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if b, _ := l.Balance(a.id); b.Balance != 9 || b.Held != 4 || l.Count() != 4 {
		t.Fatalf("after reopen: %+v, count %d", b, l.Count())
	}
	// What was stored before is found (the key filter is filled from the
	// store): the entry by its hash, the open hold, the payment made.
	if ok, err := l.Has(sha256.Sum256(grant)); err != nil || !ok {
		t.Fatalf("stored entry not found after reopen (%v)", err)
	}
	refused := func(body ledger.Body, want error) {
		t.Helper()
		before := *a // a refused entry does not extend the chain
		if _, err := l.Ingest(a.next(t, body)); !errors.Is(err, want) {
			t.Fatalf("%T after reopen: err = %v, want %v", body, err, want)
		}
		*a = before
	}
	refused(ledger.HoldBody{Job: job("h"), Amount: 1}, ledger.ErrHoldExists)
	refused(ledger.PaymentBody{Job: job("paid"), To: p, Amount: 1}, ledger.ErrAlreadyPaid)
	refused(a.leaseFor(t, a.id, job("x"), 1), ledger.ErrUnfunded)
	if _, err := l.Ingest(a.next(t, ledger.PaymentBody{Job: job("h"), To: p, Amount: 4})); err != nil {
		t.Fatalf("payment of the open hold after reopen: %v", err)
	}
	// The hold is paid, but was written: it backs one lease.
	if _, err := l.Ingest(a.next(t, a.leaseFor(t, a.id, job("h"), 1))); err != nil {
		t.Fatal(err)
	}
	refused(a.leaseFor(t, a.id, job("h"), 1), ledger.ErrUnfunded)
	if _, err := OpenLedger(db, "other", g, nil); !errors.Is(err, ledger.ErrGenesis) {
		t.Fatalf("genesis of another network: %v", err)
	}
}

// TestFaucetClaims is the attack of finding 5 of issue 15: 100 throwaway
// keys each claim the genesis faucet and pay the claim on to one account
// (as gossip or a reconciliation would bring their entries). No claim is
// granted, so nothing reaches the sink, with or without the testnet flag;
// a faucet on a network that does not declare itself a test network does
// not even open; a peer the faucet lists claims it once.
func TestFaucetClaims(t *testing.T) {
	_, listed := testKey(t, "listed")
	faucet := func() *ledger.GenesisFaucet { return &ledger.GenesisFaucet{Amount: 50, Peers: []peer.ID{listed}} }
	for _, tc := range []struct {
		name    string
		g       *ledger.Genesis
		listed  uint64 // what the listed peer may claim
		openErr error
	}{
		{"testnet with a faucet for listed peers", &ledger.Genesis{Network: testNet, Testnet: true, Faucet: faucet()}, 50, nil},
		{"testnet without a faucet", &ledger.Genesis{Network: testNet, Testnet: true}, 0, nil},
		{"no testnet flag, no faucet", &ledger.Genesis{Network: testNet}, 0, nil},
		{"a faucet without the testnet flag", &ledger.Genesis{Network: testNet, Faucet: faucet()}, 0, ledger.ErrGenesis},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := Open("", Options{Network: testNet, InMemory: true})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			clock := newFakeClock()
			l, err := OpenLedger(db, testNet, tc.g, clock.Now)
			if tc.openErr != nil {
				if !errors.Is(err, tc.openErr) {
					t.Fatalf("open: %v, want %v", err, tc.openErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, sink := testKey(t, "sink")
			var raws [][]byte
			for i := range 100 {
				c := newChain(t, fmt.Sprint("throwaway-", i), clock.Now())
				j := job(fmt.Sprint("funnel-", i))
				raws = append(raws, c.next(t, ledger.GrantBody{Amount: 50}),
					c.next(t, ledger.HoldBody{Job: j, Provider: sink, Amount: 50}),
					c.next(t, ledger.PaymentBody{Job: j, To: sink, Receipt: j, Amount: 50}))
			}
			res, err := l.IngestMany(raws)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Accepted) > 0 || len(res.Rejected) != 100 {
				t.Fatalf("%d funnel entries stored, %d claims refused of 100", len(res.Accepted), len(res.Rejected))
			}
			for _, r := range res.Rejected {
				if !errors.Is(r.Err, ledger.ErrBadGrant) {
					t.Fatalf("claim refused with %v, want ErrBadGrant", r.Err)
				}
			}
			if b, _ := l.Balance(sink); b.Balance != 0 {
				t.Fatalf("the sink holds %d", b.Balance)
			}
			c := newChain(t, "listed", clock.Now())
			_, err = l.Ingest(c.next(t, ledger.GrantBody{Amount: 50}))
			switch {
			case tc.listed > 0 && err != nil:
				t.Fatalf("the listed peer's claim: %v", err)
			case tc.listed == 0 && !errors.Is(err, ledger.ErrBadGrant):
				t.Fatalf("the listed peer's claim without a faucet: %v", err)
			}
			if _, err := l.Ingest(c.next(t, ledger.GrantBody{Amount: 50})); !errors.Is(err, ledger.ErrBadGrant) && !errors.Is(err, ledger.ErrGap) {
				t.Fatalf("second claim: %v", err)
			}
			if total, _ := l.Total(); total != tc.listed || total != tc.g.Total([]peer.ID{listed, sink}) {
				t.Fatalf("total %d, want %d", total, tc.listed)
			}
			if probs, err := l.Verify(context.Background()); err != nil || len(probs) > 0 {
				t.Fatalf("verify: %v, %v", probs, err)
			}
		})
	}
}

// TestLedgerConcurrent ingests one set of entries from several goroutines
// at once, while another reads: the end state is the same as in order.
func TestLedgerConcurrent(t *testing.T) {
	env := newLedgerEnv(t)
	var raws [][]byte
	raws = append(raws, env.a.next(t, ledger.GrantBody{Amount: 1000}), env.b.next(t, ledger.GrantBody{Amount: 500}))
	for i := range 30 {
		j := job(string(rune('A' + i)))
		raws = append(raws,
			env.a.next(t, ledger.HoldBody{Job: j, Provider: env.p.id, Amount: 20}),
			env.a.next(t, ledger.PaymentBody{Job: j, To: env.p.id, Amount: 20}),
			env.p.next(t, ledger.HoldBody{Job: j, Provider: env.b.id, Amount: 15}),
			env.p.next(t, ledger.PaymentBody{Job: j, To: env.b.id, Amount: 15}),
			env.b.next(t, env.p.leaseFor(t, env.b.id, j, 15)))
	}
	ref := openTestLedger(t, env.g, env.clock.Now)
	if _, err := ref.IngestMany(raws); err != nil {
		t.Fatal(err)
	}
	want, _ := ref.Digest()

	l := env.l
	done := make(chan struct{})
	errs := make(chan error, 8)
	go func() {
		for {
			select {
			case <-done:
				errs <- nil
				return
			default:
			}
			if _, err := l.Balance(env.p.id); err != nil {
				errs <- err
				return
			}
			for _, err := range l.Items() {
				if err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	const workers = 4
	finished := make(chan error, workers)
	for w := range workers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			mine := append([][]byte(nil), raws...)
			rng.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
			for len(mine) > 0 {
				n := min(len(mine), 1+rng.IntN(8))
				if w%2 == 0 {
					if _, err := l.IngestMany(mine[:n]); err != nil {
						finished <- err
						return
					}
				} else {
					for _, raw := range mine[:n] {
						_, err := l.Ingest(raw)
						if err != nil && !ledger.Waits(err) && !errors.Is(err, ledger.ErrDuplicate) {
							finished <- err
							return
						}
					}
				}
				mine = mine[n:]
			}
			finished <- nil
		}()
	}
	for range workers {
		if err := <-finished; err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Digest(); got != want || l.Count() != uint64(len(raws)) || l.PendingLen() != 0 {
		t.Fatalf("count %d of %d, pending %d", l.Count(), len(raws), l.PendingLen())
	}
	env.noProblems()
}

// TestHoldEntryAndPaymentFor reads back the entries that hold and pay for
// a job, and finds none for another job; EscrowFor sees each stage.
func TestHoldEntryAndPaymentFor(t *testing.T) {
	env := newLedgerEnv(t)
	env.ok(env.a.next(t, ledger.GrantBody{Amount: 1000}))
	hold := env.ok(env.a.next(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 600}))
	got, ok, err := env.l.HoldEntry(env.a.id, job("1"))
	if err != nil || !ok || got.Seq != hold.Seq || string(got.Encode()) != string(hold.Encode()) {
		t.Fatalf("HoldEntry = seq %d, %v, %v; want the hold at seq %d", got.Seq, ok, err, hold.Seq)
	}
	if es, err := env.l.EscrowFor(env.a.id, job("1")); err != nil || es.Payment != nil || es.Hold == nil || es.Hold.Amount != 600 {
		t.Fatalf("EscrowFor while held = %+v, %v", es, err)
	}
	pay := env.ok(env.a.next(t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 500}))
	if es, err := env.l.EscrowFor(env.a.id, job("1")); err != nil || es.Hold != nil || es.Payment == nil || es.Payment.Seq != pay.Seq {
		t.Fatalf("EscrowFor once paid = %+v, %v", es, err)
	}
	got, ok, err = env.l.PaymentFor(env.a.id, job("1"))
	if err != nil || !ok || got.Seq != pay.Seq {
		t.Fatalf("PaymentFor = seq %d, %v, %v; want the payment at seq %d", got.Seq, ok, err, pay.Seq)
	}
	if _, ok, err := env.l.HoldEntry(env.a.id, job("2")); ok || err != nil {
		t.Fatalf("HoldEntry of another job = %v, %v", ok, err)
	}
	env.ok(env.a.next(t, ledger.HoldBody{Job: job("3"), Provider: env.p.id, Amount: 100}))
	env.ok(env.a.next(t, ledger.ReleaseBody{Job: job("3")}))
	if es, err := env.l.EscrowFor(env.a.id, job("3")); err != nil || es.Hold != nil || es.Payment != nil {
		t.Fatalf("EscrowFor once released = %+v, %v", es, err)
	}
}

// TestLedgerUpgradesFormat1 opens a ledger written in format 1 (a time
// index, hash index values without the time): it is upgraded in place and
// reads and verifies as if written now.
func TestLedgerUpgradesFormat1(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	a := newChain(t, "a", clock.Now())
	g := &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: a.id, Amount: 10}}}
	open := func() (*DB, *Ledger) {
		db, err := Open(dir, Options{Network: testNet})
		if err != nil {
			t.Fatal(err)
		}
		l, err := OpenLedger(db, testNet, g, clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		return db, l
	}
	db, l := open()
	for _, raw := range [][]byte{
		a.next(t, ledger.GrantBody{Amount: 10}),
		a.next(t, ledger.HoldBody{Job: job("h"), Amount: 4}),
		a.next(t, a.leaseFor(t, a.id, job("h"), 1)),
	} {
		if _, err := l.Ingest(raw); err != nil {
			t.Fatal(err)
		}
	}
	want := map[ledger.Hash]int64{}
	for item, err := range l.Items() {
		if err != nil {
			t.Fatal(err)
		}
		want[item.Hash] = item.Time
	}
	// Rewrite it as format 1 wrote it: format 2's account records and
	// indexes, a time index, hash index values without times.
	downgradeToFormat2(t, db.bdb)
	err := db.bdb.Update(func(txn *badger.Txn) error {
		for h, nanos := range want {
			e, err := l.EntryByHash(h)
			if err != nil {
				return err
			}
			old := append(binary.BigEndian.AppendUint64(nil, e.Seq), e.Account...)
			if err := txn.Set(hashKey(h), old); err != nil {
				return err
			}
			tk := append(binary.BigEndian.AppendUint64([]byte(keyOldTimePrefix), uint64(nanos)), h[:]...)
			if err := txn.Set(tk, nil); err != nil {
				return err
			}
		}
		return txn.Delete([]byte(keyLedgerFormat))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	db, l = open()
	defer db.Close()
	for h, nanos := range want {
		if e, err := l.EntryByHash(h); err != nil || e.Time.UnixNano() != nanos {
			t.Fatalf("entry %s after the upgrade: %v (time %v)", h, err, e.Time)
		}
	}
	n := 0
	for item, err := range l.Items() {
		if err != nil || want[item.Hash] != item.Time {
			t.Fatalf("item %v after the upgrade: %v", item, err)
		}
		n++
	}
	if probs, err := l.Verify(context.Background()); err != nil || len(probs) > 0 || n != len(want) {
		t.Fatalf("after the upgrade: %d items of %d, problems %v (%v)", n, len(want), probs, err)
	}
	err = db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyOldTimePrefix)})
		defer it.Close()
		if it.Rewind(); it.Valid() {
			return fmt.Errorf("time index key %x left", it.Item().Key())
		}
		if v, err := getValue(txn, []byte(keyLedgerFormat)); err != nil || !bytes.Equal(v, []byte{ledgerFormat}) {
			return fmt.Errorf("format %x (%v)", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// downgradeToFormat2 rewrites a ledger as format 2 wrote it: account
// records of version 1 (no rate state), no index of holds written or of
// leases.
func downgradeToFormat2(t *testing.T, db *badger.DB) {
	t.Helper()
	for _, p := range []string{keyFundPrefix, keyLeasePrefix} {
		if err := db.DropPrefix([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	err := db.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyAcctPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			v1 := append([]byte{1}, v[1:ledger.AccountStateLenV1]...)
			if err := txn.Set(it.Item().KeyCopy(nil), v1); err != nil {
				return err
			}
		}
		return txn.Set([]byte(keyLedgerFormat), []byte{2})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLedgerUpgradesFormat2 opens a ledger written in format 2, with a
// lease and a receipt (and one lease that no hold backs, which format 2
// stored): the indexes and account records of format 3 are built from
// the entries, Verify finds only the lease the rules now refuse, and the
// ledger goes on under the new rules.
func TestLedgerUpgradesFormat2(t *testing.T) {
	dir := t.TempDir()
	env := newLedgerEnv(t)
	open := func() (*DB, *Ledger) { return openLedgerIn(t, dir, env) }
	db, l := open()
	for _, raw := range [][]byte{
		env.a.next(t, ledger.GrantBody{Amount: 1000}),
		env.a.next(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}),
		env.p.next(t, env.a.leaseFor(t, env.p.id, job("1"), 1)),
		env.p.next(t, ledger.ReceiptBody{Job: job("1"), Receipt: job("r"), Result: "bafy"}),
		env.a.next(t, ledger.PaymentBody{Job: job("1"), To: env.p.id, Amount: 100}),
		env.a.next(t, ledger.HoldBody{Job: job("2"), Amount: 50}),
	} {
		if _, err := l.Ingest(raw); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := l.Digest()
	// What format 2 accepted and format 3 refuses: a lease nobody held,
	// stored with its indexes as format 2 stored it.
	unheld := env.p.next(t, env.a.leaseFor(t, env.p.id, job("nobody's"), 1))
	e, _ := ledger.DecodeEntry(unheld)
	err := db.bdb.Update(func(txn *badger.Txn) error {
		p, _ := l.committed(env.p.id)
		p.LastSeq, p.LastHash, p.LastTime = e.Seq, sha256.Sum256(unheld), e.Time.UnixNano()
		for k, v := range map[string][]byte{
			string(entryKey(env.p.id, e.Seq)): unheld,
			string(hashKey(p.LastHash)):       hashRef(e.Account, e.Seq, p.LastTime),
			string(acctKey(env.p.id)):         p.Encode(),
			keyLedgerCount:                    binary.BigEndian.AppendUint64(nil, l.Count()+1),
		} {
			if err := txn.Set([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	downgradeToFormat2(t, db.bdb)
	db.Close()

	db, l = open()
	defer db.Close()
	var format []byte
	db.bdb.View(func(txn *badger.Txn) (err error) { format, err = getValue(txn, []byte(keyLedgerFormat)); return err })
	if !bytes.Equal(format, []byte{ledgerFormat}) {
		t.Fatalf("format %x after the upgrade", format)
	}
	probs, err := l.Verify(context.Background())
	if err != nil || len(probs) != 1 || !errors.Is(probs[0], ledger.ErrUnfunded) || probs[0].Account != env.p.id {
		t.Fatalf("after the upgrade: problems %v (%v), want the lease nobody held", probs, err)
	}
	if d, _ := l.Digest(); d == want {
		t.Fatal("digest does not count the lease stored behind the rules' back")
	}
	// The indexes work: the paid hold backs no second lease, the open
	// one (naming no provider) backs one.
	if _, err := l.Ingest(env.p.next(t, env.a.leaseFor(t, env.p.id, job("2"), 1))); err != nil {
		t.Fatalf("lease of the posting hold after the upgrade: %v", err)
	}
}

// TestLedgerUpgradesFormat3 opens a ledger of format 3, whose entries are
// of version 1 (leases without grants): it is marked format 4 and its
// entries stay as they are; Verify finds only the lease, which quotes no
// grant, and the ledger goes on under the new rules (a lease needs its
// grant).
func TestLedgerUpgradesFormat3(t *testing.T) {
	dir := t.TempDir()
	env := newLedgerEnv(t)
	open := func() (*DB, *Ledger) { return openLedgerIn(t, dir, env) }
	db, l := open()
	for _, raw := range [][]byte{
		env.a.nextV1(t, ledger.GrantBody{Amount: 1000}),
		env.a.nextV1(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}),
		env.a.nextV1(t, ledger.HoldBody{Job: job("2"), Amount: 50}),
	} {
		if _, err := l.Ingest(raw); err != nil {
			t.Fatal(err)
		}
	}
	// The lease format 3 stored; format 4 refuses it, as it has no grant.
	old := env.p.nextV1(t, ledger.LeaseBody{Job: job("1"), Requester: env.a.id, Price: 1})
	if _, err := l.Ingest(old); !errors.Is(err, ledger.ErrBadLeaseGrant) {
		t.Fatalf("lease of version 1: err = %v, want ErrBadLeaseGrant", err)
	}
	e, _ := ledger.DecodeEntry(old)
	err := db.bdb.Update(func(txn *badger.Txn) error {
		p, _ := l.committed(env.p.id)
		p.LastSeq, p.LastHash, p.LastTime = e.Seq, sha256.Sum256(old), e.Time.UnixNano()
		for k, v := range map[string][]byte{
			string(entryKey(env.p.id, e.Seq)):    old,
			string(hashKey(p.LastHash)):          hashRef(e.Account, e.Seq, p.LastTime),
			string(acctKey(env.p.id)):            p.Encode(),
			string(leaseKey(env.p.id, job("1"))): ledger.LeaseRecord{Leases: 1}.Encode(),
			keyLedgerCount:                       binary.BigEndian.AppendUint64(nil, l.Count()+1),
			keyLedgerFormat:                      {3},
		} {
			if err := txn.Set([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	db, l = open()
	defer db.Close()
	var format []byte
	db.bdb.View(func(txn *badger.Txn) (err error) { format, err = getValue(txn, []byte(keyLedgerFormat)); return err })
	if !bytes.Equal(format, []byte{ledgerFormat}) || ledgerFormat != 5 {
		t.Fatalf("format %x after the upgrade", format)
	}
	if got, err := l.EntryByHash(sha256.Sum256(old)); err != nil || !bytes.Equal(got.Encode(), old) {
		t.Fatalf("stored lease of version 1 after the upgrade: %v", err)
	}
	probs, err := l.Verify(context.Background())
	if err != nil || len(probs) != 1 || !errors.Is(probs[0], ledger.ErrBadLeaseGrant) || probs[0].Account != env.p.id {
		t.Fatalf("after the upgrade: problems %v (%v), want the lease without a grant", probs, err)
	}
	// New entries of the old chains: the requester's of version 2, a lease
	// with its grant of the posting hold.
	if _, err := l.Ingest(env.a.next(t, ledger.ReleaseBody{Job: job("1")})); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Ingest(env.b.next(t, env.a.leaseFor(t, env.b.id, job("2"), 1))); err != nil {
		t.Fatalf("lease of the posting hold after the upgrade: %v", err)
	}
}

// openLedgerIn opens the database in dir and env's ledger on it.
func openLedgerIn(t *testing.T, dir string, env *ledgerEnv) (*DB, *Ledger) {
	t.Helper()
	db, err := Open(dir, Options{Network: testNet})
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLedger(db, testNet, env.g, env.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return db, l
}
