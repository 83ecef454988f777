package storage

import (
	"errors"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
)

// A provider's claims on the leases a requester's holds back: a named hold
// backs one lease of that provider, the posting hold (naming none) none
// (this build writes leases of version 3); a claim counts as a lease until it is given back, so a
// second award is refused before the first lease is written, and after.
func TestClaimLease(t *testing.T) {
	env := newLedgerEnv(t)
	env.a.v2, env.p.v2 = false, false
	q := newChainV3(t, "q", env.clock.Now())
	expiry := env.clock.Now().Add(time.Hour).UnixNano()
	named := func(j string, p *chain) ledger.HoldBody {
		return ledger.HoldBody{Job: job(j), Provider: p.id, Amount: 10, Expiry: expiry, Replicas: 1}
	}
	env.ok(env.a.next(t, ledger.GrantBody{Amount: 1000}))
	env.ok(env.a.next(t, named("named", env.p)))
	env.ok(env.a.next(t, ledger.HoldBody{Job: job("posted"), Amount: 10}))
	claim := func(p *chain, name string) error { return env.l.ClaimLease(p.id, env.a.id, job(name)) }
	steps := []struct {
		name string
		do   func() error
		want error
	}{
		{"p claims the named hold's lease", func() error { return claim(env.p, "named") }, nil},
		{"p claims it again before writing it", func() error { return claim(env.p, "named") }, ledger.ErrUnfunded},
		{"q claims a lease of a hold naming p", func() error { return claim(q, "named") }, ledger.ErrUnfunded},
		{"p writes its lease and gives the claim back", func() error {
			_, err := env.l.Ingest(env.p.next(t, env.a.leaseFor(t, env.p.id, job("named"), 1)))
			env.l.UnclaimLease(env.p.id, job("named"))
			return err
		}, nil},
		{"p claims again once the lease is written", func() error { return claim(env.p, "named") }, ledger.ErrUnfunded},
		{"p claims the posting hold's lease", func() error { return claim(env.p, "posted") }, ledger.ErrUnfunded},
		{"q claims the posting hold's lease", func() error { return claim(q, "posted") }, ledger.ErrUnfunded},
		{"an award to q backs q's lease", func() error {
			env.ok(env.a.next(t, named("awarded", q)))
			return claim(q, "awarded")
		}, nil},
		{"q claims it twice", func() error { return claim(q, "awarded") }, ledger.ErrUnfunded},
		{"q gives its claim back, unwritten", func() error { env.l.UnclaimLease(q.id, job("awarded")); return nil }, nil},
		{"q claims it anew", func() error { return claim(q, "awarded") }, nil},
		{"a job nobody held", func() error { return claim(env.p, "unheld") }, ledger.ErrUnfunded},
		{"a second hold naming p backs a second lease", func() error {
			env.ok(env.p.next(t, ledger.WaiveBody{Job: job("named"), Requester: env.a.id, HoldSeq: 2}))
			env.ok(env.a.next(t, named("named", env.p)))
			return claim(env.p, "named")
		}, nil},
	}
	for _, s := range steps {
		if err := s.do(); !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
			t.Fatalf("%s: %v, want %v", s.name, err, s.want)
		}
	}
	if n, err := env.l.LeaseFunding(env.a.id, job("named"), env.p.id); err != nil || n != 2 {
		t.Fatalf("LeaseFunding of the named job: %d, %v; want its 2 holds", n, err)
	}
}
