package ledger

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// replicaNet is a settleNet whose requester a runs jobs on k replicas,
// with a sybil requester s (granted too), a sybil provider z and a
// fourth provider w.
type replicaNet struct {
	*settleNet
	s, z, w *chain
}

func newReplicaNet(t *testing.T) *replicaNet {
	n := &replicaNet{settleNet: newSettleNet(t)}
	n.s, n.z, n.w = newChain(t, "s", n.t0), newChain(t, "z", n.t0), newChain(t, "w", n.t0)
	n.rules = NewRules(&Genesis{Network: testNet, Grants: []GenesisGrant{{Peer: n.a.id, Amount: 1000}, {Peer: n.s.id, Amount: 1000}}})
	return n
}

// replicaPrice is the price of every lease of the tests: 100 per
// unit-second, so 1000 GPU-ms bill 100.
const replicaPrice = 100

// award is requester's hold of job j naming provider's chain, for k
// replicas (200 held), then the provider's lease of it.
func (n *replicaNet) award(req, prov *chain, j string, k uint8) []step {
	t := n.t
	return []step{
		{req.next(t, HoldBody{Job: job(j), Provider: prov.id, Amount: 200, Expiry: n.expiry, Replicas: k}), nil},
		{prov.next(t, req.leaseFor(t, prov.id, job(j), replicaPrice)), nil},
	}
}

// receipt is a receipt of job j with result (and outputs "out"),
// billing gpums.
func receipt(j, result string, gpums uint64) ReceiptBody {
	return ReceiptBody{Job: job(j), Receipt: job("r " + j + result), Result: result, Outputs: "out", Usage: Usage{WallMS: gpums, GPUMS: gpums}}
}

// ref is the receipt at seq of c's chain.
func ref(c *chain, seq uint64) ReceiptRef { return ReceiptRef{Provider: c.id, Seq: seq} }

// majority is c's majority claim of amount on a's hold entry holdSeq for
// job j, its receipt at seq own.
func (n *replicaNet) majority(c *chain, j string, holdSeq, amount, own uint64, others ...ReceiptRef) []byte {
	return c.entryRaw(n.t, n.majorityBody(j, holdSeq, amount, own, others...))
}

func (n *replicaNet) majorityBody(j string, holdSeq, amount, own uint64, others ...ReceiptRef) MajorityClaimBody {
	return MajorityClaimBody{Job: job(j), Requester: n.a.id, HoldSeq: holdSeq, Amount: amount, Receipt: own, Majority: others}
}

// setup3 has a award job "v" to p, q, r (k = 3, a's holds 2, 3, 4;
// their leases seq 1), p and q return "good" (seq 2: 2000 and 3000
// GPU-ms), r "bad" (seq 2, 9e6 GPU-ms).
func (n *replicaNet) setup3() []step {
	t := n.t
	steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}}
	for _, c := range []*chain{n.p, n.q, n.r} {
		steps = append(steps, n.award(n.a, c, "v", 3)...)
	}
	return append(steps,
		step{n.p.next(t, receipt("v", "good", 2000)), nil},
		step{n.q.next(t, receipt("v", "good", 3000)), nil},
		step{n.r.next(t, receipt("v", "bad", 9_000_000)), nil})
}

// TestVerdictAttacks has rogue providers claim by majorities the
// receipts do not make, and a rogue requester release a majority
// member's hold by a mismatch it made up, beside the verdicts the
// receipts support, with real signatures against a replayed state.
func TestVerdictAttacks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps func(n *replicaNet) []step
	}{
		{"a rogue claims by a majority of receipts of another job", func(n *replicaNet) []step {
			steps := append(n.setup3(), n.award(n.a, n.q, "other", 3)...)
			return append(steps,
				step{n.q.next(t, receipt("other", "bad", 1)), nil}, // q seq 4
				step{n.majority(n.r, "v", 4, 1, 2, ref(n.q, 4)), ErrBadVerdict},
				step{n.majority(n.r, "v", 4, 200, 2, ref(n.q, 3)), ErrBadVerdict}, // q's lease of "other"
			)
		}},
		{"a claim quoting an entry that is not yet the provider's vote stays refused", func(n *replicaNet) []step {
			steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}}
			for _, c := range []*chain{n.p, n.q, n.r} {
				steps = append(steps, n.award(n.a, c, "v", 3)...)
			}
			steps = append(steps, step{n.p.next(t, receipt("v", "good", 2000)), nil})
			early := n.majority(n.p, "v", 2, 200, 2, ref(n.q, 1)) // q's lease
			return append(steps,
				step{early, ErrBadVerdict},
				step{n.q.next(t, receipt("v", "good", 2000)), nil},
				step{early, ErrBadVerdict},
			)
		}},
		{"a voter's vote answers another requester's award", func(n *replicaNet) []step {
			steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}, {n.s.next(t, GrantBody{Amount: 1000}), nil}}
			for _, c := range []*chain{n.p, n.q, n.r} {
				steps = append(steps, n.award(n.a, c, "v", 3)...) // q seq 1
			}
			steps = append(steps, step{n.s.next(t, HoldBody{Job: job("v"), Provider: n.q.id, Amount: 200, Expiry: n.expiry, Replicas: 3}), nil})
			steps = append(steps, step{n.q.next(t, WaiveBody{Job: job("v"), Requester: n.s.id, HoldSeq: 2}), nil}) // q seq 2
			steps = append(steps, n.award(n.s, n.q, "v", 3)...)                                                    // q seq 3: its latest lease is s's
			return append(steps,
				step{n.q.next(t, receipt("v", "bad", 1)), nil}, // q seq 4: its vote, for s
				step{n.r.next(t, receipt("v", "bad", 1)), nil},
				step{n.majority(n.r, "v", 4, 1, 2, ref(n.q, 4)), ErrBadVerdict},
			)
		}},
		{"a claim by two of five replicas", func(n *replicaNet) []step {
			steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}}
			for _, c := range []*chain{n.p, n.q} {
				steps = append(steps, n.award(n.a, c, "v", 5)...)
			}
			return append(steps,
				step{n.p.next(t, receipt("v", "good", 2000)), nil},
				step{n.q.next(t, receipt("v", "good", 2000)), nil},
				step{n.majority(n.p, "v", 2, 200, 2, ref(n.q, 2)), ErrBadVerdict},
			)
		}},
		{"a rogue claims by its sybils' receipts, their holds not the requester's", func(n *replicaNet) []step {
			steps := append(n.setup3(), step{n.s.next(t, GrantBody{Amount: 1000}), nil})
			steps = append(steps, n.award(n.s, n.z, "v", 3)...)
			return append(steps,
				step{n.z.next(t, receipt("v", "bad", 1)), nil},
				step{n.majority(n.r, "v", 4, 200, 2, ref(n.z, 2)), ErrBadVerdict},
			)
		}},
		{"a rogue quotes a provider twice, or itself", func(n *replicaNet) []step {
			return append(n.setup3(),
				step{n.majority(n.r, "v", 4, 200, 2, ref(n.r, 2)), ErrBadVerdict},
				step{n.majority(n.p, "v", 2, 200, 2, ref(n.q, 2), ref(n.q, 2)), ErrBadVerdict},
			)
		}},
		{"a claim by a minority, or disagreeing receipts", func(n *replicaNet) []step {
			return append(n.setup3(),
				step{n.majority(n.r, "v", 4, 200, 2, ref(n.p, 2)), ErrBadVerdict},
				step{n.majority(n.p, "v", 2, 200, 2, ref(n.r, 2)), ErrBadVerdict},
				step{n.majority(n.p, "v", 2, 200, 2, ref(n.q, 2), ref(n.r, 2)), ErrBadVerdict},
			)
		}},
		{"a job without replicas has no verdicts", func(n *replicaNet) []step {
			steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}}
			for _, c := range []*chain{n.p, n.q, n.r} {
				steps = append(steps, n.award(n.a, c, "v", 1)...)
			}
			return append(steps,
				step{n.p.next(t, receipt("v", "good", 2000)), nil},
				step{n.q.next(t, receipt("v", "good", 2000)), nil},
				step{n.r.next(t, receipt("v", "bad", 2000)), nil},
				step{n.majority(n.p, "v", 2, 200, 2, ref(n.q, 2)), ErrBadVerdict},
				step{n.a.entryRaw(t, MajorityReleaseBody{Job: job("v"), Loser: ref(n.r, 2), Majority: []ReceiptRef{ref(n.p, 2), ref(n.q, 2)}}), ErrBadVerdict},
				step{n.p.next(t, n.claim(n.p.id, "v", 2, 200, true)), nil}, // paid by acceptance
			)
		}},
		{"a fourth provider does not vote among three replicas", func(n *replicaNet) []step {
			steps := append(n.setup3(), n.award(n.a, n.w, "v", 3)...)
			return append(steps,
				step{n.w.next(t, receipt("v", "bad", 1)), nil},
				step{n.majority(n.r, "v", 4, 200, 2, ref(n.w, 2)), ErrBadVerdict},
				step{n.a.entryRaw(t, MajorityReleaseBody{Job: job("v"), Loser: ref(n.p, 2), Majority: []ReceiptRef{ref(n.r, 2), ref(n.w, 2)}}), ErrBadVerdict},
				step{n.a.entryRaw(t, MajorityReleaseBody{Job: job("v"), Loser: ref(n.w, 2), Majority: []ReceiptRef{ref(n.p, 2), ref(n.q, 2)}}), ErrBadVerdict},
				step{n.w.next(t, n.claim(n.w.id, "v", 5, 100, true)), nil}, // a non-voter is paid by acceptance
			)
		}},
		{"the holds of a job carry one replicas", func(n *replicaNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, HoldBody{Job: job("v"), Provider: n.p.id, Amount: 300, Expiry: n.expiry, Replicas: 3}), nil},
				{n.a.entryRaw(t, HoldBody{Job: job("v"), Provider: n.q.id, Amount: 300, Expiry: n.expiry, Replicas: 5}), ErrReplicasMismatch},
				{n.a.entryRaw(t, HoldBody{Job: job("v"), Provider: n.q.id, Amount: 300, Expiry: n.expiry, Replicas: 1}), ErrReplicasMismatch},
			}
		}},
		{"a requester releases a majority member by a made-up mismatch", func(n *replicaNet) []step {
			release := func(loser ReceiptRef, majority ...ReceiptRef) []byte {
				return n.a.entryRaw(t, MajorityReleaseBody{Job: job("v"), Loser: loser, Majority: majority})
			}
			return append(n.setup3(),
				step{release(ref(n.p, 2), ref(n.q, 2), ref(n.r, 2)), ErrBadVerdict},   // the majority disagrees
				step{release(ref(n.p, 2), ref(n.r, 2), ref(n.z, 2)), ErrBadVerdict},   // z is not a voter, nor here
				step{release(ref(n.p, 1), ref(n.q, 2), ref(n.r, 2)), ErrBadVerdict},   // p's lease, not a receipt
				step{release(ref(n.p, 2), ref(n.q, 2), ref(n.p, 2)), ErrBadVerdict},   // p quoted twice
				step{release(ref(n.p, 2), ref(n.r, 2)), ErrBadVerdict},                // one vote of three
				step{release(ref(n.q, 2), ref(n.p, 2), ref(n.r, 3)), ErrBadVerdict},   // q agrees with p
				step{release(ref(n.r, 2), ref(n.p, 2), ref(n.q, 3)), ErrVerdictWaits}, // q's seq 3 not here
				step{release(ref(n.r, 2), ref(n.p, 2), ref(n.q, 2)), nil},             // the real one
			)
		}},
		{"a requester releases a replica that has not answered", func(n *replicaNet) []step {
			steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}}
			for _, c := range []*chain{n.p, n.q, n.r} {
				steps = append(steps, n.award(n.a, c, "v", 3)...)
			}
			release := n.a.entryRaw(t, MajorityReleaseBody{Job: job("v"), Loser: ref(n.r, 2), Majority: []ReceiptRef{ref(n.p, 2), ref(n.q, 2)}})
			return append(steps,
				step{n.p.next(t, receipt("v", "good", 2000)), nil},
				step{n.q.next(t, receipt("v", "good", 3000)), nil},
				step{release, ErrVerdictWaits},
				step{n.r.next(t, WaiveBody{Job: job("v"), Requester: n.a.id, HoldSeq: 4}), nil}, // r gives it back
				step{release, ErrBadVerdict},                                                    // seq 2 of r is no receipt
			)
		}},
		{"a voter is paid by the verdict, and only by it once it voted", func(n *replicaNet) []step {
			steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}}
			for _, c := range []*chain{n.p, n.q, n.r} {
				steps = append(steps, n.award(n.a, c, "v", 3)...)
			}
			steps = append(steps,
				step{n.p.next(t, n.claim(n.p.id, "v", 2, 50, false)), nil}, // paid as it goes, before its vote
				step{n.p.next(t, receipt("v", "good", 2000)), nil})         // p seq 3
			claim := n.majority(n.p, "v", 2, 200, 3, ref(n.q, 2))
			return append(steps,
				step{n.p.entryRaw(t, n.claim(n.p.id, "v", 2, 60, true)), ErrVoted},
				step{n.p.entryRaw(t, WaiveBody{Job: job("v"), Requester: n.a.id, HoldSeq: 2}), ErrVoted},
				step{claim, ErrVerdictWaits},
				step{n.q.next(t, receipt("v", "good", 3000)), nil},
				step{n.majority(n.p, "v", 2, 201, 3, ref(n.q, 2)), ErrPaymentAboveHold},
				step{claim, nil},
				step{n.majority(n.q, "v", 3, 201, 2, ref(n.p, 3)), ErrPaymentAboveHold}, // the median's 2000, not its 3000
				step{n.majority(n.q, "v", 3, 200, 2, ref(n.p, 3)), nil},
			)
		}},
		{"a member inflating its usage is paid the majority's", func(n *replicaNet) []step {
			steps := []step{{n.a.next(t, GrantBody{Amount: 1000}), nil}}
			for _, c := range []*chain{n.p, n.q, n.r} {
				steps = append(steps, n.award(n.a, c, "v", 3)...)
			}
			return append(steps,
				step{n.p.next(t, receipt("v", "good", 1000)), nil},
				step{n.r.next(t, receipt("v", "good", 2_000_000)), nil},
				step{n.majority(n.r, "v", 4, 101, 2, ref(n.p, 2)), ErrPaymentAboveHold},
				step{n.majority(n.r, "v", 4, 100, 2, ref(n.p, 2)), nil},
			)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newReplicaNet(t)
			n.settleNet.t = t
			st := NewMemState()
			for i, s := range tc.steps(n) {
				err := n.apply(st, s.raw)
				if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
					t.Fatalf("step %d: %v, want %v", i+1, err, s.want)
				}
				if s.want != nil && Waits(err) != Waits(s.want) {
					t.Fatalf("step %d: waits %v, want %v", i+1, Waits(err), Waits(s.want))
				}
			}
		})
	}
}

// replicaScenario is a job on three replicas (p, q, r: r returns another
// result with an inflated usage), settled by the verdict in every order:
// p and q claim by majority (q was paid 50 as it went), a releases r's
// hold by the majority; r's claim by a fake majority and a's release of
// p by a made-up one are refused.
func replicaScenario(t *testing.T, n *settleNet) [][]byte {
	a, p, q, r := n.a, n.p, n.q, n.r
	rn := &replicaNet{settleNet: n}
	hold := func(c *chain) HoldBody {
		return HoldBody{Job: job("v"), Provider: c.id, Amount: 300, Expiry: n.expiry, Replicas: 3}
	}
	return [][]byte{
		a.next(t, GrantBody{Amount: 1000}),
		a.next(t, hold(p)), a.next(t, hold(q)), a.next(t, hold(r)), // seq 2, 3, 4
		p.next(t, a.leaseFor(t, p.id, job("v"), replicaPrice)),
		p.next(t, receipt("v", "good", 2000)),
		p.next(t, rn.majorityBody("v", 2, 200, 2, ref(q, 3))),
		q.next(t, a.leaseFor(t, q.id, job("v"), replicaPrice)),
		q.next(t, n.claim(q.id, "v", 3, 50, false)),
		q.next(t, receipt("v", "good", 3000)),
		q.next(t, rn.majorityBody("v", 3, 200, 3, ref(p, 2))),
		r.next(t, a.leaseFor(t, r.id, job("v"), replicaPrice)),
		r.next(t, receipt("v", "bad", 9_000_000)),
		r.next(t, rn.majorityBody("v", 4, 300, 2, ref(p, 2))), // refused
		a.next(t, MajorityReleaseBody{Job: job("v"), Loser: ref(r, 2), Majority: []ReceiptRef{ref(p, 2), ref(q, 3)}}),
		a.next(t, MajorityReleaseBody{Job: job("v"), Loser: ref(p, 2), Majority: []ReceiptRef{ref(q, 3), ref(r, 2)}}), // refused
	}
}

// checkReplicaScenario checks what every order of replicaScenario gives.
func checkReplicaScenario(t *testing.T, n *settleNet, want *MemState, refused map[string]bool) {
	a, p, q, r := want.Accounts[n.a.id], want.Accounts[n.p.id], want.Accounts[n.q.id], want.Accounts[n.r.id]
	if a.Balance != 600 || a.Held != 0 || p.Balance != 200 || q.Balance != 200 || r.Balance != 0 || len(want.Holds) != 0 {
		t.Fatalf("balances a %+v p %+v q %+v r %+v, holds %v", a, p, q, r, want.Holds)
	}
	if len(refused) != 2 {
		t.Fatalf("refused %v: want r's fake majority and a's made-up release", refused)
	}
	reps := map[peer.ID]Reputation{
		n.a.id: {Awards: 3, PaidFor: 2, Spent: 400},
		n.p.id: {Leases: 1, Receipts: 1, JobsPaid: 1, Earned: 200, GPUMS: 2000, WallMS: 2000},
		// Delivered time is what the claims paid for: q's 3000 ms at the
		// majority's bill (200 at 100/s) count 2000, r's unpaid none.
		n.q.id: {Leases: 1, Receipts: 1, JobsPaid: 1, Earned: 200, GPUMS: 2000, WallMS: 2000},
		n.r.id: {Leases: 1, Receipts: 1, VerificationLosses: 1},
	}
	if !reflect.DeepEqual(want.Reps, reps) {
		t.Fatalf("reputations %+v, want %+v", want.Reps, reps)
	}
	if vs := want.Votes[JobKey{n.a.id, job("v")}]; !reflect.DeepEqual(vs, Voters{Replicas: 3, Providers: []peer.ID{n.p.id, n.q.id, n.r.id}}) {
		t.Fatalf("voters %+v", vs)
	}
}

func TestVerdictRecords(t *testing.T) {
	_, p := testKey(t, "p")
	for _, r := range []LeaseRecord{
		{},
		{Leases: 2, Receipts: 1, LastReceipt: 5, GPUMS: 3, WallMS: 4},
		{Leases: 1, Requester: p, Price: 7},
		{Leases: 1, Receipts: 1, LastReceipt: 9, Requester: p, Price: 7,
			Vote: Vote{Seq: 3, Requester: p, Price: 7, Units: 1000, Outcome: job("o")}},
	} {
		got, err := DecodeLeaseRecord(r.Encode())
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Fatalf("lease record %+v: got %+v, %v", r, got, err)
		}
	}
	vs := Voters{Replicas: 3, Providers: []peer.ID{p}}
	if got, err := DecodeVoters(vs.Encode()); err != nil || !reflect.DeepEqual(got, vs) {
		t.Fatalf("voters %+v: got %+v, %v", vs, got, err)
	}
	for _, bad := range [][]byte{{0}, {6}, Voters{Replicas: 1, Providers: []peer.ID{p, p}}.Encode()} {
		if _, err := DecodeVoters(bad); !errors.Is(err, ErrMalformed) {
			t.Fatalf("voters %x: %v", bad, err)
		}
	}
}

// TestReceiptVersions: a receipt of version 3 carries the outputs ID;
// one of version 2 keeps its bytes (it has none).
func TestReceiptVersions(t *testing.T) {
	c := newChain(t, "p", time.Unix(1700000000, 0))
	rc := receipt("v", "res", 5)
	v3 := c.entry(t, rc)
	c.v2 = true
	rc.Outputs = ""
	v2 := c.entry(t, rc)
	if !bytes.HasPrefix(EncodeBody(receipt("v", "res", 5)), rc.appendBody(nil, entryVersion2)) {
		t.Fatal("version 3 receipt does not extend version 2's")
	}
	for _, e := range []Entry{v3, v2} {
		got, err := DecodeEntry(e.Encode())
		if err != nil || !reflect.DeepEqual(got.Body, e.Body) || !bytes.Equal(got.Encode(), e.Encode()) {
			t.Fatalf("version %d receipt: %+v, %v", e.Version(), got.Body, err)
		}
	}
	if Outcome(receipt("v", "a", 1)) == Outcome(ReceiptBody{Result: "a", Outputs: ""}) {
		t.Fatal("outcome ignores the outputs")
	}
}
