package ledger

// Security review of entry version 3 (branch ledger): each test states what
// the rules should do and fails while they do not.

import (
	"errors"
	"math"
	"testing"
	"time"
)

// TestReviewSilentProviderLocksHold: a provider (a Sybil that wins an
// award, or one whose disk died) never writes again after the award. A
// year after the hold's expiry the requester still cannot release it: the
// release waits for an entry of the provider dated after the expiry,
// which never comes. Nothing bounds how long a named hold's funds stay
// locked.
func TestReviewSilentProviderLocksHold(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	for _, raw := range [][]byte{
		n.a.next(t, GrantBody{Amount: 1000}),
		n.a.next(t, n.hold("j", n.p.id, 1000)),
		n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 1000)), // then silence
	} {
		if err := n.apply(st, raw); err != nil {
			t.Fatal(err)
		}
	}
	release := n.after(n.a, 365*24*time.Hour).entryRaw(t, ReleaseBody{Job: job("j"), Provider: n.p.id})
	if err := n.apply(st, release); err != nil {
		t.Fatalf("release a year after the expiry of a hold whose provider went silent: %v; "+
			"the requester's 1000 stay held for good (Waits=%v)", err, Waits(err))
	}
}

// TestReviewV2HoldBacksV3Lease: entries of version 2 may still be written
// today. A requester writes a hold of version 2 naming p (stored as the
// job's "unnamed" hold); p's lease of version 3 is admitted on it, as if
// it were a hold p could claim; the requester then releases it at once
// (a release naming no provider), and p's claim finds no hold. A lease of
// version 3 should be backed only by holds of version 3 naming p.
func TestReviewV2HoldBacksV3Lease(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	n.a.v2 = true
	for _, raw := range [][]byte{
		n.a.next(t, GrantBody{Amount: 1000}),
		n.a.next(t, HoldBody{Job: job("j"), Provider: n.p.id, Amount: 400}), // version 2
	} {
		if err := n.apply(st, raw); err != nil {
			t.Fatal(err)
		}
	}
	n.a.v2 = false
	lease := n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 400))
	err := n.apply(st, lease)
	if err == nil {
		// Show the consequence before failing.
		rel := n.apply(st, n.a.next(t, ReleaseBody{Job: job("j")}))
		claim := n.apply(st, n.p.next(t, n.claim(n.p.id, "j", 2, 400, true)))
		t.Fatalf("lease of version 3 admitted on a hold of version 2; the requester's immediate release: %v; p's claim: %v", rel, claim)
	}
	if !errors.Is(err, ErrUnfunded) {
		t.Fatalf("lease: %v, want ErrUnfunded", err)
	}
}

// TestReviewV2LeasesShareUnnamedHold: issue 17's "one unnamed hold can
// back several awards" is still open to anyone who writes version 2: two
// providers, each granted an attempt, both lease (and write receipts of)
// the one posting hold, when rules of version 3 are meant to admit one
// award per named hold.
func TestReviewV2LeasesShareUnnamedHold(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	for _, raw := range [][]byte{
		n.a.next(t, GrantBody{Amount: 1000}),
		n.a.next(t, HoldBody{Job: job("j"), Amount: 400}), // posting hold, version 3
	} {
		if err := n.apply(st, raw); err != nil {
			t.Fatal(err)
		}
	}
	n.p.v2, n.q.v2 = true, true
	okP := n.apply(st, n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)))
	okQ := n.apply(st, n.q.next(t, n.a.leaseFor(t, n.q.id, job("j"), 400)))
	if okP == nil && okQ == nil {
		t.Fatalf("two leases of version 2 admitted on one posting hold (leases: p %d, q %d)",
			st.Reps[n.p.id].Leases, st.Reps[n.q.id].Leases)
	}
}

// TestReviewReceiptUsageInflatesReputation: GPUMS and WallMS in a
// provider's reputation are summed from its own receipts, which nobody
// countersigns: with a single award (the requester then refusing the
// bill, and releasing at expiry), a rogue provider reports 2^64-1 GPU-ms
// and its "GPU-seconds delivered" saturates on every node.
func TestReviewReceiptUsageInflatesReputation(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	for _, raw := range [][]byte{
		n.a.next(t, GrantBody{Amount: 1000}),
		n.a.next(t, n.hold("j", n.p.id, 10)),
		n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 10)),
		n.p.next(t, ReceiptBody{Job: job("j"), Receipt: job("r"), Usage: Usage{WallMS: math.MaxUint64, GPUMS: math.MaxUint64}}),
	} {
		if err := n.apply(st, raw); err != nil {
			t.Fatal(err)
		}
	}
	if r := st.Reps[n.p.id]; r.GPUMS != 0 || r.WallMS != 0 {
		t.Fatalf("unaccepted receipt counted as delivered: GPUMS %d WallMS %d (JobsPaid %d)", r.GPUMS, r.WallMS, r.JobsPaid)
	}
}

// TestReviewFreeJobsPaid: a final claim of 0 on a hold naming the
// requester itself counts a job paid and paid for, at no cost: a single
// key farms JobsPaid/PaidFor without a counterparty.
func TestReviewFreeJobsPaid(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	for i, raw := range [][]byte{
		n.a.next(t, GrantBody{Amount: 1000}),
		n.a.next(t, n.hold("j", n.a.id, 1000)), // awarded to itself
		n.a.next(t, acceptedClaim(t, testNet, n.a.priv, n.a.id, ClaimBody{Job: job("j"), HoldSeq: 2, Amount: 0, Final: true})),
	} {
		if err := n.apply(st, raw); err != nil && i < 2 {
			t.Fatal(err)
		}
	}
	if r := st.Reps[n.a.id]; r.JobsPaid != 0 || r.PaidFor != 0 {
		t.Fatalf("self-award with a final claim of 0 counted: JobsPaid %d PaidFor %d, balance %d",
			r.JobsPaid, r.PaidFor, st.Accounts[n.a.id].Balance)
	}
}
