package ledger

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestSeqErrorReadsLikeTheOthers checks that the lazily built refusals of
// duplicates and gaps wrap their sentinel and read as formatted errors do.
func TestSeqErrorReadsLikeTheOthers(t *testing.T) {
	id := peer.ID("\x00\x24\x08\x01\x12\x20" + string(make([]byte, 32)))
	for _, tt := range []struct {
		err  *seqError
		kind error
		want string
	}{
		{&seqError{kind: ErrDuplicate, account: id, seq: 3}, ErrDuplicate, ErrDuplicate.Error() + ": " + id.String() + " seq 3"},
		{&seqError{kind: ErrGap, account: id, seq: 9, have: 4, known: true}, ErrGap, ErrGap.Error() + ": " + id.String() + " seq 9, have up to 4"},
	} {
		if !errors.Is(tt.err, tt.kind) || tt.err.Error() != tt.want {
			t.Errorf("%q (is %v: %v), want %q", tt.err.Error(), tt.kind, errors.Is(tt.err, tt.kind), tt.want)
		}
	}
}

// TestReplayOrderFree replays chains of version 2 whose entries wait on
// other chains (a hold on a payment still to come, a lease on its hold)
// in memory: every valid entry is applied, whichever chain comes first,
// and a chain stops at its first invalid entry.
func TestReplayOrderFree(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	a, b, p := newChain(t, "a", at), newChain(t, "b", at), newChain(t, "p", at)
	a.v2, b.v2, p.v2 = true, true, true
	g := &Genesis{Network: testNet, Grants: []GenesisGrant{{Peer: a.id, Amount: 1000}, {Peer: b.id, Amount: 10}}}
	chains := map[peer.ID][][]byte{
		// b holds more than its grant: it waits for a's payment.
		b.id: {b.next(t, GrantBody{Amount: 10}), b.next(t, HoldBody{Job: job("b"), Amount: 300})},
		// p leases a's job: it waits for a's hold.
		p.id: {p.next(t, a.leaseFor(t, p.id, job("a"), 100)), p.next(t, ReceiptBody{Job: job("a"), Receipt: job("r")}),
			p.next(t, ReceiptBody{Job: job("a"), Receipt: job("r2")})}, // a second receipt: no lease left
		a.id: {a.next(t, GrantBody{Amount: 1000}), a.next(t, HoldBody{Job: job("a"), Amount: 500}),
			a.next(t, PaymentBody{Job: job("a"), To: b.id, Receipt: job("r"), Amount: 400})},
	}
	cands := map[peer.ID][]*Candidate{}
	for id, raws := range chains {
		for _, raw := range raws {
			e, err := DecodeEntry(raw)
			if err != nil {
				t.Fatal(err)
			}
			cands[id] = append(cands[id], &Candidate{Raw: raw, Entry: e, Hash: sha256.Sum256(raw)})
		}
	}
	var all []*Candidate
	for _, cs := range cands {
		all = append(all, cs...)
	}
	VerifyAll(testNet, 2, all)
	got, err := NewRules(g).Replay(context.Background(), cands)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Problems) != 1 || got.Problems[0].Account != p.id || got.Problems[0].Seq != 3 || !errors.Is(got.Problems[0], ErrNoLease) {
		t.Fatalf("problems %v, want p's second receipt refused with ErrNoLease", got.Problems)
	}
	for id, want := range map[peer.ID]AccountState{
		a.id: {LastSeq: 3, Balance: 600, Granted: 1000},
		b.id: {LastSeq: 2, Balance: 410, Held: 300, Granted: 10},
		p.id: {LastSeq: 2},
	} {
		st := *got.State.Accounts[id]
		st.LastHash, st.LastTime, st.Paced = Hash{}, 0, 0
		if st != want {
			t.Errorf("account %s: %+v, want %+v", id, st, want)
		}
	}
	if r := got.State.Leased[JobKey{p.id, job("a")}]; r.Leases != 1 || r.Receipts != 1 || r.LastReceipt == 0 {
		t.Errorf("p's leases of job a: %+v", r)
	}
}
