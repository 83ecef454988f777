package ledger

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestLeaseGrantSignAndVerify checks who can sign a grant and what one
// grants: only the requester's key, only this award, only on this network;
// and no other signature of the requester's (an entry's) passes as one.
func TestLeaseGrantSignAndVerify(t *testing.T) {
	at := time.Unix(1700000000, 0)
	req := newChain(t, "requester", at)
	_, prov := testKey(t, "provider")
	_, other := testKey(t, "other")
	g := LeaseGrant{Job: job("1"), Requester: req.id, Provider: prov, Price: 7, Attempt: 2}
	sig, err := g.Sign(testNet, req.priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Verify(testNet, sig); err != nil {
		t.Fatalf("the requester's grant: %v", err)
	}
	provKey, _ := testKey(t, "provider")
	if _, err := g.Sign(testNet, provKey); err == nil {
		t.Fatal("signed the requester's grant with the provider's key")
	}
	if _, err := (LeaseGrant{Job: job("1"), Requester: req.id, Provider: "not a peer"}).Sign(testNet, req.priv); !errors.Is(err, ErrBadAccount) {
		t.Fatalf("grant to a provider that is no Ed25519 peer: err = %v", err)
	}
	// A self-lease's entry signature over its own bytes, offered as its
	// grant: another domain, so it fails.
	self := LeaseGrant{Job: job("1"), Requester: req.id, Provider: req.id, Price: 7, Attempt: 1}
	entry := req.entry(t, LeaseBody{Job: job("1"), Requester: req.id, Price: 7, Attempt: 1, Grant: make([]byte, GrantSize)})
	for name, tc := range map[string]struct {
		g   LeaseGrant
		net string
		sig []byte
	}{
		"another provider":          {LeaseGrant{Job: g.Job, Requester: g.Requester, Provider: other, Price: g.Price, Attempt: g.Attempt}, testNet, sig},
		"another job":               {LeaseGrant{Job: job("2"), Requester: g.Requester, Provider: g.Provider, Price: g.Price, Attempt: g.Attempt}, testNet, sig},
		"another price":             {LeaseGrant{Job: g.Job, Requester: g.Requester, Provider: g.Provider, Price: 8, Attempt: g.Attempt}, testNet, sig},
		"another attempt":           {LeaseGrant{Job: g.Job, Requester: g.Requester, Provider: g.Provider, Price: g.Price, Attempt: 1}, testNet, sig},
		"another requester":         {LeaseGrant{Job: g.Job, Requester: other, Provider: g.Provider, Price: g.Price, Attempt: g.Attempt}, testNet, sig},
		"another network":           {g, "other", sig},
		"none":                      {g, testNet, nil},
		"short":                     {g, testNet, sig[:GrantSize-1]},
		"long":                      {g, testNet, append(bytes.Clone(sig), 0)},
		"requester not Ed25519":     {LeaseGrant{Job: g.Job, Requester: peer.ID("x"), Provider: g.Provider, Price: g.Price, Attempt: g.Attempt}, testNet, sig},
		"an entry's signature":      {self, testNet, entry.Signature},
		"provider not Ed25519 peer": {LeaseGrant{Job: g.Job, Requester: g.Requester, Provider: "x", Price: g.Price, Attempt: g.Attempt}, testNet, sig},
	} {
		if err := tc.g.Verify(tc.net, tc.sig); !errors.Is(err, ErrBadLeaseGrant) {
			t.Errorf("%s: err = %v, want ErrBadLeaseGrant", name, err)
		}
	}
}

// BenchmarkLeaseGrant is what a grant costs: one signature on the
// requester per award, and one check of it alone (the provider, when it
// takes the award and before it writes its lease); every other node checks
// it inside its batches of entry signatures (BenchmarkLedgerIngest).
func BenchmarkLeaseGrant(b *testing.B) {
	req := newChain(b, "requester", time.Unix(1700000000, 0))
	_, prov := testKey(b, "provider")
	g := LeaseGrant{Job: job("1"), Requester: req.id, Provider: prov, Price: 7, Attempt: 1}
	sig, err := g.Sign(testNet, req.priv)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := g.Sign(testNet, req.priv); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("verify", func(b *testing.B) {
		for b.Loop() {
			if err := g.Verify(testNet, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestFraudProofNeedsOnlyTheAccountsSignatures checks that two leases a
// provider signed with one seq prove its equivocation whatever their
// grants: a proof is about the account's signatures (a ledger stored
// before grants holds leases of version 1, which have none).
func TestFraudProofNeedsOnlyTheAccountsSignatures(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	env := struct{ a, p *chain }{newChain(t, "a", at), newChain(t, "p", at)}
	fork := *env.p
	good := env.p.next(t, env.a.leaseFor(t, env.p.id, job("1"), 1))
	forged := fork.next(t, LeaseBody{Job: job("1"), Requester: env.a.id, Price: 2, Attempt: 1, Grant: make([]byte, GrantSize)})
	old := Entry{Account: env.p.id, Seq: 1, Time: env.p.at, Body: LeaseBody{Job: job("1"), Requester: env.a.id, Price: 3}, version: entryVersion1}
	if err := old.Sign(testNet, env.p.priv); err != nil {
		t.Fatal(err)
	}
	for name, other := range map[string][]byte{"a forged grant": forged, "a lease of version 1": old.Encode()} {
		if who, err := NewFraudProof(good, other).Verify(testNet); err != nil || who != env.p.id {
			t.Errorf("%s: proof against %s, %v", name, who, err)
		}
	}
	// A signature of the account that does not hold is no proof.
	e, _ := DecodeEntry(forged)
	e.Signature = bytes.Clone(e.Signature)
	e.Signature[0] ^= 1
	if _, err := NewFraudProof(good, e.Encode()).Verify(testNet); !errors.Is(err, ErrBadFraudProof) {
		t.Fatalf("proof with a forged entry signature: err = %v", err)
	}
}
