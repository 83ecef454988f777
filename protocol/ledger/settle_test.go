package ledger

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// settleNet is a network of version 3 chains for the tests of settlement
// by the provider: a requester a (granted 1000), providers p, q, r.
type settleNet struct {
	t          *testing.T
	rules      *Rules
	t0         time.Time
	expiry     int64 // of the holds the tests write: t0 + 1 h
	a, p, q, r *chain
}

func newSettleNet(t *testing.T) *settleNet {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	n := &settleNet{t: t, t0: t0, expiry: t0.Add(time.Hour).UnixNano(),
		a: newChain(t, "a", t0), p: newChain(t, "p", t0), q: newChain(t, "q", t0), r: newChain(t, "r", t0)}
	n.rules = NewRules(&Genesis{Network: testNet, Grants: []GenesisGrant{{Peer: n.a.id, Amount: 1000}}})
	return n
}

// hold is a's hold of job j naming provider (version 3).
func (n *settleNet) hold(j string, provider peer.ID, amount uint64) HoldBody {
	return HoldBody{Job: job(j), Provider: provider, Amount: amount, Expiry: n.expiry, Replicas: 1}
}

// claim is provider's claim of amount of a's job j on a's hold entry seq,
// with a's acceptance.
func (n *settleNet) claim(provider peer.ID, j string, seq, amount uint64, final bool) ClaimBody {
	return acceptedClaim(n.t, testNet, n.a.priv, provider, ClaimBody{Job: job(j), HoldSeq: seq, Amount: amount, Final: final, Receipt: job("receipt " + j)})
}

// after dates c's next entry d after the holds' expiry.
func (n *settleNet) after(c *chain, d time.Duration) *chain {
	c.at = time.Unix(0, n.expiry).Add(d)
	return c
}

// apply checks raw's signatures and applies it to st, as a node does.
func (n *settleNet) apply(st *MemState, raw []byte) error {
	e, err := DecodeEntry(raw)
	if err != nil {
		return err
	}
	if err := e.VerifySignature(testNet); err != nil {
		return err
	}
	return n.rules.Apply(st, &e, sha256.Sum256(raw))
}

// step is one entry a test applies and the outcome it wants: nil, or an
// error it wraps.
type step struct {
	raw  []byte
	want error
}

// TestSettlementAttacks has rogue requesters and providers try what the
// rules of version 3 must refuse (or make wait), beside what they allow,
// with real signatures, entry by entry against a replayed state.
func TestSettlementAttacks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps func(n *settleNet) []step
	}{
		{"a second provider leases a hold naming another", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.q.entryRaw(t, n.a.leaseFor(t, n.q.id, job("j"), 400)), ErrUnfunded},
				{n.q.entryRaw(t, n.claim(n.q.id, "j", 2, 400, true)), ErrNotDrawable},
				{n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), nil},
			}
		}},
		{"a lease of version 3 backed only by a posting hold", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, HoldBody{Job: job("j"), Amount: 400}), nil},
				{n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), ErrUnfunded},
			}
		}},
		{"an award replaces the posting hold in one entry", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, HoldBody{Job: job("j"), Amount: 900}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 1000)), nil}, // the 900 held return first
				{n.a.next(t, ReleaseBody{Job: job("j")}), ErrNoHold},
			}
		}},
		{"a payment of version 2 to a peer the hold does not name", func(n *settleNet) []step {
			n.a.v2 = true
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, HoldBody{Job: job("j"), Provider: n.p.id, Amount: 400}), nil},
				{n.a.entryRaw(t, PaymentBody{Job: job("j"), To: n.q.id, Amount: 400}), ErrWrongPayee},
				{n.a.next(t, PaymentBody{Job: job("j"), To: n.p.id, Amount: 400}), nil},
			}
		}},
		{"a payment of version 3", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, HoldBody{Job: job("j"), Amount: 400}), nil},
				{n.a.entryRaw(t, PaymentBody{Job: job("j"), To: n.p.id, Amount: 400}), ErrPaymentRetired},
			}
		}},
		{"a release before the expiry", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.a.entryRaw(t, ReleaseBody{Job: job("j"), Provider: n.p.id}), ErrReleaseEarly},
			}
		}},
		{"a release after the expiry waits for the provider's chain to pass it", func(n *settleNet) []step {
			setup := []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
			}
			waiting := n.after(n.a, time.Second).entryRaw(t, ReleaseBody{Job: job("j"), Provider: n.p.id})
			return append(setup, []step{
				{n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), nil},
				{waiting, ErrClaimWindowOpen},
				{n.p.next(t, ReceiptBody{Job: job("j"), Receipt: job("r")}), nil},
				{waiting, ErrClaimWindowOpen},
				{n.after(n.p, time.Millisecond).entryRaw(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), ErrUnfunded},
				{n.after(n.p, time.Millisecond).entryRaw(t, ReceiptBody{Job: job("j"), Receipt: job("r2")}), ErrNoLease},
				{n.after(n.p, time.Millisecond).next(t, WaiveBody{Job: job("j"), Requester: n.a.id, HoldSeq: 2}), ErrNotDrawable},
			}...)
		}},
		{"a release once the provider's chain passed the expiry, after its receipt", func(n *settleNet) []step {
			setup := []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.a.next(t, n.hold("k", n.p.id, 400)), nil},
				{n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), nil},
				{n.p.next(t, ReceiptBody{Job: job("j"), Receipt: job("r")}), nil},
			}
			waiting := n.after(n.a, time.Second).entryRaw(t, ReleaseBody{Job: job("j"), Provider: n.p.id})
			return append(setup, []step{
				{waiting, ErrClaimWindowOpen},
				{n.after(n.p, time.Millisecond).next(t, n.a.leaseFor(t, n.p.id, job("k"), 400)), nil},
				{waiting, nil},
			}...)
		}},
		{"a release once the provider's chain passed the expiry", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.a.next(t, n.hold("k", n.p.id, 400)), nil},
				{n.p.next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), nil},
				{n.after(n.p, time.Millisecond).next(t, n.a.leaseFor(t, n.p.id, job("k"), 400)), nil},
				{n.after(n.a, time.Second).next(t, ReleaseBody{Job: job("j"), Provider: n.p.id}), nil},
				{n.a.next(t, HoldBody{Job: job("j2"), Provider: n.p.id, Amount: 1000, Expiry: n.expiry + int64(time.Hour), Replicas: 1}), ErrOverdraft},
			}
		}},
		{"claims with a forged acceptance, above the hold, after the expiry, twice", func(n *settleNet) []step {
			forged := n.claim(n.p.id, "j", 2, 100, false)
			forged.Acceptance = acceptedClaim(t, testNet, n.q.priv, n.p.id, ClaimBody{Job: job("j"), HoldSeq: 2, Amount: 100, Receipt: job("receipt j")}).Acceptance
			raised := n.claim(n.p.id, "j", 2, 100, false)
			raised.Amount = 400 // the requester accepted 100
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.p.entryRaw(t, forged), ErrBadAcceptance},
				{n.p.entryRaw(t, raised), ErrBadAcceptance},
				{n.p.entryRaw(t, n.claim(n.p.id, "j", 2, 401, false)), ErrNotDrawable},
				{n.p.entryRaw(t, n.claim(n.p.id, "j", 1, 100, false)), ErrNotDrawable},
				{n.p.next(t, n.claim(n.p.id, "j", 2, 100, false)), nil},
				{n.p.entryRaw(t, n.claim(n.p.id, "j", 2, 100, false)), ErrAlreadyPaid},
				{n.p.next(t, n.claim(n.p.id, "j", 2, 300, true)), nil},
				{n.p.entryRaw(t, n.claim(n.p.id, "j", 2, 400, true)), ErrNotDrawable},
				{n.a.entryRaw(t, n.hold("j", n.p.id, 10)), ErrAlreadyPaid},
				{n.after(n.q, time.Millisecond).entryRaw(t, n.claim(n.q.id, "j", 2, 1, true)), ErrNotDrawable},
			}
		}},
		{"a claim after the expiry", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.after(n.p, time.Nanosecond).entryRaw(t, n.claim(n.p.id, "j", 2, 400, true)), ErrNotDrawable},
				{n.after(n.p, time.Nanosecond).entryRaw(t, WaiveBody{Job: job("j"), Requester: n.a.id, HoldSeq: 2}), ErrNotDrawable},
			}
		}},
		{"a claim waits for the hold it draws on", func(n *settleNet) []step {
			c := n.p.entryRaw(t, n.claim(n.p.id, "j", 2, 400, true))
			return []step{
				{c, ErrUnfunded},
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{c, ErrUnfunded},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{c, nil},
			}
		}},
		{"a final claim, then a release", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.p.next(t, n.claim(n.p.id, "j", 2, 250, true)), nil},
				{n.after(n.p, time.Millisecond).next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), nil},
				{n.after(n.a, time.Second).entryRaw(t, ReleaseBody{Job: job("j"), Provider: n.p.id}), ErrNotDrawable},
			}
		}},
		{"a waive, then a claim", func(n *settleNet) []step {
			return []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
				{n.p.next(t, WaiveBody{Job: job("j"), Requester: n.a.id, HoldSeq: 2}), nil},
				{n.p.entryRaw(t, n.claim(n.p.id, "j", 2, 400, true)), ErrNotDrawable},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil}, // awarded to it again
			}
		}},
		{"a second hold naming one provider while the first may be claimed", func(n *settleNet) []step {
			setup := []step{
				{n.a.next(t, GrantBody{Amount: 1000}), nil},
				{n.a.next(t, n.hold("j", n.p.id, 400)), nil},
			}
			second := n.a.entryRaw(t, n.hold("j", n.p.id, 100))
			return append(setup, []step{
				{second, ErrClaimWindowOpen},
				{n.after(n.p, time.Millisecond).next(t, n.a.leaseFor(t, n.p.id, job("j"), 400)), nil},
				{second, ErrHoldExists},
			}...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newSettleNet(t)
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
			var total uint64
			for _, acct := range st.Accounts {
				total += acct.Balance
			}
			if total != 1000 && len(st.Accounts) > 0 && st.Accounts[n.a.id].Granted == 1000 {
				t.Fatalf("balances sum to %d, 1000 granted", total)
			}
		})
	}
}

// entryRaw signs c's next entry without advancing the chain: an entry
// the test expects refused, or to retry.
func (c *chain) entryRaw(t testing.TB, body Body) []byte {
	t.Helper()
	e := c.entry(t, body)
	return e.Encode()
}

// settleScenario is chains of version 3 whose entries depend on each
// other's: claims on holds, a release waiting for the provider past the
// expiry, a hold waiting for what a waive returns, a receipt written
// after the expiry (which must not count as a run before it).
func settleScenario(t *testing.T, n *settleNet) [][]byte {
	a, p, q, r := n.a, n.p, n.q, n.r
	out := [][]byte{
		a.next(t, GrantBody{Amount: 1000}),
		a.next(t, HoldBody{Job: job("j"), Amount: 300}), // 2: posting hold
		a.next(t, n.hold("j", p.id, 400)),               // 3: award to p, replacing it
		a.next(t, n.hold("j", q.id, 400)),               // 4: replica to q
		a.next(t, n.hold("k", r.id, 100)),               // 5: award to r
		a.next(t, HoldBody{Job: job("m"), Amount: 400}), // 6: waits for q's waive
		p.next(t, a.leaseFor(t, p.id, job("j"), 400)),
		p.next(t, ReceiptBody{Job: job("j"), Receipt: job("rp"), Usage: Usage{WallMS: 7, GPUMS: 3}}),
		p.next(t, n.claim(p.id, "j", 3, 150, false)),
		p.next(t, n.claim(p.id, "j", 3, 250, true)),
		q.next(t, WaiveBody{Job: job("j"), Requester: a.id, HoldSeq: 4}),
		r.next(t, a.leaseFor(t, r.id, job("k"), 100)),
		n.after(r, time.Millisecond).next(t, ReceiptBody{Job: job("k"), Receipt: job("rr")}), // too late
		n.after(a, time.Second).next(t, ReleaseBody{Job: job("k"), Provider: r.id}),
		q.next(t, n.claim(q.id, "j", 4, 1, true)), // after its waive: waits for ever
	}
	return out
}

// node applies entries as they arrive, in any order, keeping those that
// wait, as storage does: its final state and refusals are what an order
// gives.
func (n *settleNet) node(arrivals [][]byte) (*MemState, map[string]bool) {
	st := NewMemState()
	refused := map[string]bool{}
	var pending [][]byte
	for _, raw := range arrivals {
		pending = append(pending, raw)
		for progress := true; progress; {
			progress = false
			kept := pending[:0]
			for _, raw := range pending {
				err := n.apply(st, raw)
				switch {
				case err == nil:
					progress = true
				case Waits(err):
					kept = append(kept, raw)
				default:
					e, _ := DecodeEntry(raw)
					refused[fmt.Sprintf("%s/%d", e.Account, e.Seq)] = true
					progress = true
				}
			}
			pending = kept
		}
	}
	return st, refused
}

// TestSettlementOrderFree delivers the same entries to nodes in many
// orders: every node ends with the same balances, holds, claims, lease
// records, voters and reputations, and refuses the same entries; what
// they end with is what the scenario wants.
func TestSettlementOrderFree(t *testing.T) {
	for _, sc := range []struct {
		name  string
		build func(*testing.T, *settleNet) [][]byte
		check func(*testing.T, *settleNet, *MemState, map[string]bool)
	}{
		{"claims, waives, releases", settleScenario, checkSettleScenario},
		{"replicas", replicaScenario, checkReplicaScenario},
	} {
		t.Run(sc.name, func(t *testing.T) {
			n := newSettleNet(t)
			want, refused := orderFree(t, n, sc.build(t, n))
			sc.check(t, n, want, refused)
		})
	}
}

// orderFree applies entries in chain order and in 200 random orders, and
// fails unless every order gives the same state and refusals: it returns
// them.
func orderFree(t *testing.T, n *settleNet, entries [][]byte) (*MemState, map[string]bool) {
	want, wantRefused := n.node(entries)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		order := append([][]byte(nil), entries...)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		got, refused := n.node(order)
		for _, m := range []struct {
			name      string
			got, want any
		}{
			{"accounts", got.Accounts, want.Accounts}, {"holds", got.Holds, want.Holds}, {"claims", got.Claims, want.Claims},
			{"leases", got.Leased, want.Leased}, {"reputations", got.Reps, want.Reps}, {"refused", refused, wantRefused},
			{"voters", got.Votes, want.Votes},
		} {
			if !reflect.DeepEqual(m.got, m.want) {
				t.Fatalf("order %d: %s %+v, in chain order %+v", i, m.name, m.got, m.want)
			}
		}
	}
	return want, wantRefused
}

// checkSettleScenario checks what every order of settleScenario gives.
func checkSettleScenario(t *testing.T, n *settleNet, want *MemState, wantRefused map[string]bool) {
	a, p, q, r := want.Accounts[n.a.id], want.Accounts[n.p.id], want.Accounts[n.q.id], want.Accounts[n.r.id]
	if a.Balance != 750 || a.Held != 400 || p.Balance != 250 || q.Balance != 0 || r.Balance != 0 || a.LastSeq != 7 {
		t.Fatalf("balances a %+v p %+v q %+v r %+v", a, p, q, r)
	}
	if len(wantRefused) != 0 || len(want.Holds) != 1 || want.Accounts[n.q.id].LastSeq != 1 {
		t.Fatalf("refused %v, open holds %v, q %+v: want q's claim after its waive waiting, m's hold open",
			wantRefused, want.Holds, want.Accounts[n.q.id])
	}
	reps := map[peer.ID]Reputation{
		n.a.id: {Awards: 3, PaidFor: 1, Spent: 250},
		n.p.id: {Leases: 1, Receipts: 1, JobsPaid: 1, Earned: 250, GPUMS: 3, WallMS: 7},
		n.q.id: {Waived: 1},
		n.r.id: {Leases: 1, Receipts: 1, NotRun: 1},
	}
	if !reflect.DeepEqual(want.Reps, reps) {
		t.Fatalf("reputations %+v, want %+v", want.Reps, reps)
	}
}
