package ledger

// Security review of entry version 3 (branch ledger): each test states what
// the rules should do and fails while they do not.

import (
	"errors"
	"math"
	"testing"
	"time"
)

// TestReviewSilentProviderHoldsRelease documents an accepted limit (see
// docs/TRUST.md, "What is still open"): a provider (a Sybil that wins an
// award, or one whose disk died) that never writes again after the award
// keeps its hold's release waiting, a year after the expiry as at once:
// the release waits for an entry of the provider dated after the expiry,
// which alone makes it order-independent (every claim or waive dated
// before the expiry has been applied), and which never comes.
func TestReviewSilentProviderHoldsRelease(t *testing.T) {
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
	if err := n.apply(st, release); !errors.Is(err, ErrClaimWindowOpen) || !Waits(err) {
		t.Fatalf("release a year after the expiry of a hold whose provider went silent: %v, want it waiting (ErrClaimWindowOpen)", err)
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
// requester itself counted a job paid and paid for, at no cost: a single
// key farmed JobsPaid/PaidFor without a counterparty. A hold naming its
// own account is refused, and a final claim of 0 (a provider the
// requester paid nothing) counts no job paid.
func TestReviewFreeJobsPaid(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	for i, s := range []step{
		{n.a.next(t, GrantBody{Amount: 1000}), nil},
		{n.a.entryRaw(t, n.hold("j", n.a.id, 1000)), ErrSelfAward}, // awarded to itself
		{n.a.next(t, n.hold("j", n.p.id, 1000)), nil},
		{n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 1000)), nil},
		{n.p.next(t, ReceiptBody{Job: job("j"), Receipt: job("r"), Usage: Usage{WallMS: 5, GPUMS: 5}}), nil},
		{n.p.next(t, n.claim(n.p.id, "j", 2, 0, true)), nil},
	} {
		if err := n.apply(st, s.raw); !errors.Is(err, s.want) || (err == nil) != (s.want == nil) {
			t.Fatalf("step %d: %v, want %v", i+1, err, s.want)
		}
	}
	if a, p := st.Reps[n.a.id], st.Reps[n.p.id]; p.JobsPaid != 0 || a.PaidFor != 0 || p.GPUMS != 0 || p.WallMS != 0 {
		t.Fatalf("final claim of 0 counted: provider %+v, requester %+v", p, a)
	}
}

// TestReviewPaidUsage: the time a final claim counts as delivered is the
// provider's last receipt of the job as far as the amount pays for it at
// the lease's price (per second): a receipt of a day paid 3 at price 1
// counts 3 s.
func TestReviewPaidUsage(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	day := uint64(24 * time.Hour / time.Millisecond)
	for _, raw := range [][]byte{
		n.a.next(t, GrantBody{Amount: 1000}),
		n.a.next(t, n.hold("j", n.p.id, 10)),
		n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 1)),
		n.p.next(t, ReceiptBody{Job: job("j"), Receipt: job("r"), Usage: Usage{WallMS: day, GPUMS: 2000}}),
		n.p.next(t, n.claim(n.p.id, "j", 2, 3, true)),
	} {
		if err := n.apply(st, raw); err != nil {
			t.Fatal(err)
		}
	}
	if r := st.Reps[n.p.id]; r.GPUMS != 2000 || r.WallMS != 3000 || r.JobsPaid != 1 {
		t.Fatalf("reputation %+v, want GPUMS 2000 (within what was paid), WallMS 3000 (what 3 pays at 1/s)", r)
	}
}

// TestReviewVersionNeverGoesDown: once a chain wrote an entry of version
// 3, one of version 2 (a payment, a hold any lease of version 2 may draw
// on) is refused for good.
func TestReviewVersionNeverGoesDown(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	if err := n.apply(st, n.a.next(t, GrantBody{Amount: 1000})); err != nil {
		t.Fatal(err)
	}
	n.a.v2 = true
	err := n.apply(st, n.a.entryRaw(t, HoldBody{Job: job("j"), Amount: 400}))
	if !errors.Is(err, ErrVersionDown) || Waits(err) {
		t.Fatalf("hold of version 2 after an entry of version 3: %v, want ErrVersionDown", err)
	}
}

// TestReviewProviderEquivocationWaitsRelease: the mirror of the storage
// test of a requester's equivocation. A provider shows one node a fork
// with a final claim and an entry past the expiry, another a fork without
// the claim: on the first the hold is closed when the requester's release
// comes, which waits (ErrNotDrawable) instead of being refused for good.
func TestReviewProviderEquivocationWaitsRelease(t *testing.T) {
	n := newSettleNet(t)
	st := NewMemState()
	for _, raw := range [][]byte{
		n.a.next(t, GrantBody{Amount: 1000}),
		n.a.next(t, n.hold("j", n.p.id, 400)),
		n.p.next(t, n.claim(n.p.id, "j", 2, 300, true)),
		n.after(n.p, time.Second).next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)),
	} {
		if err := n.apply(st, raw); err != nil {
			t.Fatal(err)
		}
	}
	err := n.apply(st, n.after(n.a, 2*time.Second).entryRaw(t, ReleaseBody{Job: job("j"), Provider: n.p.id}))
	if !errors.Is(err, ErrNotDrawable) || !Waits(err) {
		t.Fatalf("release of a hold the provider's claim closed: %v, want it waiting", err)
	}
}
