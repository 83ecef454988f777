package ledger

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// sigCase is an entry whose signature check has a known verdict: nil, or
// the sentinel the error wraps.
type sigCase struct {
	name string
	e    Entry
	want error
}

// sigCases builds entries of every kind of signature verdict: valid ones,
// forged ones, ones signed for another network or carrying another entry's
// signature, and ZIP-215 edge cases built from small-order points.
func sigCases(t *testing.T) []sigCase {
	t.Helper()
	at := time.Unix(1700000000, 0)
	alice := newChain(t, "alice", at)
	bob := newChain(t, "bob", at)
	req := newChain(t, "p", at) // the requester, whose grants the leases quote
	p := req.id
	lease := func(c *chain, j string) Entry {
		return c.entry(t, req.leaseFor(t, c.id, job(j), 1))
	}
	a1 := lease(alice, "1")
	a2 := lease(alice, "2")
	b1 := lease(bob, "1")

	forged := a1
	forged.Signature = bytes.Clone(a1.Signature)
	forged.Signature[5] ^= 1
	altered := a1 // the signature of a1 over another body
	altered.Body = req.leaseFor(t, alice.id, job("1"), 2)
	otherNet := alice.entry(t, req.leaseFor(t, alice.id, job("3"), 1))
	if err := otherNet.Sign("other", alice.priv); err != nil {
		t.Fatal(err)
	}
	stolen := a2 // a2 carrying a1's signature
	stolen.Signature = a1.Signature
	crossed := b1 // bob's entry with alice's signature over the same bytes
	crossed.Signature = a1.Signature
	highS := a1 // S + ℓ: the same S modulo the group order, not canonical
	highS.Signature = addOrder(a1.Signature)
	notEd := a1
	notEd.Account = peer.ID("not an Ed25519 peer ID")

	// A public key of order 4 (y = 0) and R the identity, S = 0: the
	// cofactored equation [8][S]B = [8]R + [8][k]A holds for any message,
	// so ZIP-215 accepts it whatever is signed (Go's crypto/ed25519 only
	// when k ≡ 0 mod 4). Nobody holds the private key of such an account:
	// its chain carries no funds anyone else could move.
	smallA := peer.ID(ed25519PeerPrefix + string(make([]byte, 32)))
	identity := append([]byte{1}, make([]byte, 31)...)
	small := Entry{Account: smallA, Seq: 1, Time: at, Body: req.leaseFor(t, smallA, job("s"), 1),
		Signature: append(bytes.Clone(identity), make([]byte, 32)...)}
	// The same with R the identity encoded with y = p+1, not canonical:
	// ZIP-215 accepts non-canonical encodings of R.
	nonCanonR := small
	nonCanonR.Signature = append(append([]byte{0xee}, bytes.Repeat([]byte{0xff}, 30)...), 0x7f)
	nonCanonR.Signature = append(nonCanonR.Signature, make([]byte, 32)...)
	// R not on the curve (y = 2 has no x): no rule accepts it.
	offCurve := small
	offCurve.Signature = append(append([]byte{2}, make([]byte, 31)...), make([]byte, 32)...)

	// Leases whose grant is not the requester's award to their author:
	// each validly signed by its account.
	withGrant := func(name string, l LeaseBody) sigCase {
		return sigCase{"grant: " + name, alice.entry(t, l), ErrBadLeaseGrant}
	}
	lg := func(f func(l *LeaseBody)) LeaseBody {
		l := req.leaseFor(t, alice.id, job("1"), 1)
		f(&l)
		return l
	}
	otherNetGrant, err := LeaseGrant{Job: job("1"), Requester: p, Provider: alice.id, Price: 1, Attempt: 1}.Sign("other", req.priv)
	if err != nil {
		t.Fatal(err)
	}
	// The provider's own key signing the grant it quotes.
	selfGranted := lg(func(l *LeaseBody) { l.Grant = alice.leaseFor(t, alice.id, job("1"), 1).Grant })
	// A requester with the order-4 key: any grant with R the identity and
	// S = 0 passes ZIP-215, as small's signature does; nobody holds that
	// key, so no such requester has holds that a lease could use.
	smallGrant := LeaseBody{Job: job("1"), Requester: smallA, Price: 1, Attempt: 1, Grant: small.Signature}
	grantCases := []sigCase{
		withGrant("none", lg(func(l *LeaseBody) { l.Grant = nil })),
		withGrant("forged", lg(func(l *LeaseBody) { l.Grant = bytes.Clone(l.Grant); l.Grant[3] ^= 1 })),
		withGrant("of another provider", bob.leaseFor(t, bob.id, job("1"), 1)),
		withGrant("of another provider, replayed", lg(func(l *LeaseBody) {
			l.Grant = req.leaseFor(t, bob.id, job("1"), 1).Grant
		})),
		withGrant("of another price", lg(func(l *LeaseBody) { l.Price = 2 })),
		withGrant("of another attempt", lg(func(l *LeaseBody) { l.Attempt = 2 })),
		withGrant("of another job", lg(func(l *LeaseBody) { l.Job = job("2") })),
		withGrant("for another network", lg(func(l *LeaseBody) { l.Grant = otherNetGrant })),
		withGrant("signed by the provider", selfGranted),
		withGrant("signed by another key", lg(func(l *LeaseBody) { l.Requester = bob.id })),
		withGrant("short", lg(func(l *LeaseBody) { l.Grant = l.Grant[:63] })),
		withGrant("requester not Ed25519", lg(func(l *LeaseBody) { l.Requester = peer.ID("not an Ed25519 peer ID") })),
		withGrant("S not reduced", lg(func(l *LeaseBody) { l.Grant = addOrder(l.Grant) })),
		{"grant: ZIP-215: small-order requester", alice.entry(t, smallGrant), nil},
		// Both signatures bad: the entry's is named.
		{"grant and signature forged", func() Entry {
			e := alice.entry(t, lg(func(l *LeaseBody) { l.Grant = nil }))
			e.Signature = forged.Signature
			return e
		}(), ErrBadSignature},
	}

	return append([]sigCase{
		{"valid", a1, nil},
		{"valid, next in chain", a2, nil},
		{"valid, other account", b1, nil},
		{"forged signature", forged, ErrBadSignature},
		{"body changed after signing", altered, ErrBadSignature},
		{"signed for another network", otherNet, ErrBadSignature},
		{"signature of another entry", stolen, ErrBadSignature},
		{"signature of another account", crossed, ErrBadSignature},
		{"S not reduced", highS, ErrBadSignature},
		{"short signature", func() Entry { e := a1; e.Signature = a1.Signature[:63]; return e }(), ErrBadSignature},
		{"account not Ed25519", notEd, ErrBadAccount},
		{"ZIP-215: small-order key, identity R", small, nil},
		{"ZIP-215: non-canonical R", nonCanonR, nil},
		{"R off the curve", offCurve, ErrBadSignature},
	}, grantCases...)
}

// addOrder returns sig with ℓ, the group order, added to its S half
// (little-endian).
func addOrder(sig []byte) []byte {
	l := [32]byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	out := bytes.Clone(sig)
	carry := 0
	for i := range 32 {
		v := int(out[32+i]) + int(l[i]) + carry
		out[32+i], carry = byte(v), v>>8
	}
	return out
}

func checkVerdict(t *testing.T, name string, err, want error) {
	t.Helper()
	if want == nil && err != nil || want != nil && !errors.Is(err, want) {
		t.Errorf("%s: err = %v, want %v", name, err, want)
	}
}

func TestVerifySignatureVerdicts(t *testing.T) {
	for _, tc := range sigCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			checkVerdict(t, "VerifySignature", tc.e.VerifySignature(testNet), tc.want)
		})
	}
}

// TestSignatureSingleAndBatchAgree checks every case alone and in batches
// (each case alone, all together in both orders, and each forged case
// among valid entries of the same account): the batch gives each entry
// exactly the error VerifySignature gives it.
func TestSignatureSingleAndBatchAgree(t *testing.T) {
	cases := sigCases(t)
	single := make([]error, len(cases))
	for i, tc := range cases {
		single[i] = tc.e.VerifySignature(testNet)
		checkVerdict(t, tc.name, single[i], tc.want)
	}
	order := make([]int, len(cases))
	for i := range order {
		order[i] = i
	}
	reversed := slices.Clone(order)
	slices.Reverse(reversed)
	batches := map[string][]int{"all": order, "all, reversed": reversed}
	for i := range cases {
		batches[fmt.Sprintf("alone %d", i)] = []int{i}
		// Among valid entries of alice's, so that the batch reuses her
		// expanded key around it.
		batches[fmt.Sprintf("among valid %d", i)] = []int{0, 1, i, 0, 1}
	}
	for name, idx := range batches {
		t.Run(name, func(t *testing.T) {
			cs := make([]*Candidate, len(idx))
			for j, i := range idx {
				cs[j] = &Candidate{Entry: cases[i].e}
			}
			VerifyBatch(testNet, cs)
			for j, i := range idx {
				if got, want := errText(cs[j].Err), errText(single[i]); got != want {
					t.Errorf("%s in batch: err %q, alone %q", cases[i].name, got, want)
				}
			}
		})
	}
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestStdlibValidIsValid checks that what Go's crypto/ed25519 accepts, the
// ledger accepts, on the cases that are well-formed; and that the ZIP-215
// rule is the wider one (crypto/ed25519 refuses a non-canonical R).
func TestStdlibValidIsValid(t *testing.T) {
	for _, tc := range sigCases(t) {
		if tc.name == "ZIP-215: non-canonical R" {
			pub, _ := accountKey(tc.e.Account)
			if ed25519.Verify(pub, tc.e.SigningBytes(testNet), tc.e.Signature) {
				t.Errorf("%s: crypto/ed25519 accepts it", tc.name)
			}
		}
		pub, err := accountKey(tc.e.Account)
		if err != nil || len(tc.e.Signature) != ed25519.SignatureSize {
			continue
		}
		stdOK := ed25519.Verify(pub, tc.e.SigningBytes(testNet), tc.e.Signature)
		if l, ok := tc.e.Body.(LeaseBody); ok && stdOK {
			// A lease's grant is a signature too, held to the same rule.
			rpub, err := accountKey(l.Requester)
			stdOK = err == nil && len(l.Grant) == GrantSize &&
				ed25519.Verify(rpub, l.grantOf(tc.e.Account).signingBytes(testNet), l.Grant)
		}
		if stdOK {
			if err := tc.e.VerifySignature(testNet); err != nil {
				t.Errorf("%s: crypto/ed25519 accepts it, VerifySignature: %v", tc.name, err)
			}
		}
	}
}
