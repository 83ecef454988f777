package ledger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// sampleBodies are bodies of every kind for entries of alice's chain (the
// lease quotes a grant to alice).
func sampleBodies(t testing.TB) []Body {
	_, p := testKey(t, "provider")
	pk, _ := testKey(t, "provider")
	_, alice := testKey(t, "alice")
	return []Body{
		GrantBody{Amount: 1_000_000},
		HoldBody{Job: job("a"), Provider: p, Amount: 42, Expiry: farExpiry, Replicas: 3},
		HoldBody{Job: job("b"), Amount: 42}, // any provider
		ReleaseBody{Job: job("a")},
		ReleaseBody{Job: job("a"), Provider: p},
		PaymentBody{Job: job("a"), To: p, Receipt: job("receipt"), Amount: 41},
		grantedLease(t, testNet, pk, alice, job("a"), 7),
		ReceiptBody{Job: job("a"), Receipt: job("r"), Result: "bafkreigh2akiscaildc", Usage: Usage{WallMS: 1500, GPUMS: 1200, ExitCode: -1}},
		acceptedClaim(t, testNet, pk, alice, ClaimBody{Job: job("a"), HoldSeq: 2, Amount: 40, Final: true, Receipt: job("r")}),
		WaiveBody{Job: job("a"), Requester: p, HoldSeq: 9},
		ReceiptBody{Job: job("a"), Receipt: job("r"), Result: "bafy-res", Outputs: "bafy-out", Usage: Usage{WallMS: 5}},
		MajorityClaimBody{Job: job("a"), Requester: p, HoldSeq: 2, Amount: 40, Receipt: 3,
			Majority: []ReceiptRef{{Provider: p, Seq: 4}, {Provider: alice, Seq: 1}}},
		MajorityReleaseBody{Job: job("a"), Loser: ReceiptRef{Provider: p, Seq: 2}, Majority: []ReceiptRef{{Provider: alice, Seq: 7}}},
	}
}

// farExpiry is a hold's expiry after every sample entry's time.
const farExpiry = int64(1 << 62)

// olderBody is body as an entry of an older version can hold it (without
// the fields of version 3); nil for the kinds version 3 added.
func olderBody(body Body) Body {
	switch b := body.(type) {
	case HoldBody:
		b.Expiry, b.Replicas = 0, 0
		return b
	case ReleaseBody:
		b.Provider = ""
		return b
	case ReceiptBody:
		b.Outputs = ""
		return b
	case ClaimBody, WaiveBody, MajorityClaimBody, MajorityReleaseBody:
		return nil
	}
	return body
}

func TestEd25519PeerIDLayout(t *testing.T) {
	// accountKey relies on the layout libp2p gives Ed25519 peer IDs.
	priv, id := testKey(t, "layout")
	pub, err := accountKey(id)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := priv.GetPublic().Raw()
	if !bytes.Equal(pub, raw) {
		t.Fatal("public key from peer ID differs")
	}
	_, rsaPub, err := crypto.GenerateSecp256k1Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := peer.IDFromPublicKey(rsaPub)
	if _, err := accountKey(other); !errors.Is(err, ErrBadAccount) {
		t.Fatalf("secp256k1 account: err = %v, want ErrBadAccount", err)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	c := newChain(t, "alice", time.Unix(1700000000, 123456789))
	for _, body := range sampleBodies(t) {
		t.Run(body.Kind().String(), func(t *testing.T) {
			raw := c.next(t, body)
			e, err := DecodeEntry(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(e.Encode(), raw) {
				t.Fatal("re-encoding differs")
			}
			if e.Kind() != body.Kind() || !reflect.DeepEqual(e.Body, body) {
				t.Fatalf("body %#v, want %#v", e.Body, body)
			}
			if err := e.VerifySignature(testNet); err != nil {
				t.Fatal(err)
			}
			if err := e.VerifySignature("other"); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("other network: err = %v", err)
			}
		})
	}
}

func TestDecodeEntryRejects(t *testing.T) {
	c := newChain(t, "alice", time.Unix(1700000000, 0))
	_, p := testKey(t, "p")
	good := c.entry(t, HoldBody{Job: job("x"), Provider: p, Amount: 5, Expiry: farExpiry, Replicas: 1})
	raw := good.Encode()
	with := func(f func(e *Entry)) []byte {
		e := good
		f(&e)
		return e.Encode()
	}
	// bodyAt returns where the body's length prefix sits.
	bodyAt := 1 + 2 + len(good.Account) + 8 + 32 + 1 + 8
	cases := map[string][]byte{
		"empty":                     nil,
		"truncated":                 raw[:len(raw)-1],
		"trailing":                  append(bytes.Clone(raw), 0),
		"version":                   append([]byte{4}, raw[1:]...),
		"version zero":              append([]byte{0}, raw[1:]...),
		"oversized":                 append(bytes.Clone(raw), make([]byte, MaxEntrySize)...),
		"seq zero":                  with(func(e *Entry) { e.Seq = 0 }),
		"seq one, prev":             with(func(e *Entry) { e.Seq, e.Prev = 1, job("p") }),
		"before 1970":               with(func(e *Entry) { e.Time = time.Unix(-5, 0) }),
		"no body":                   with(func(e *Entry) { e.Body = nil }),
		"zero hold":                 with(func(e *Entry) { e.Body = HoldBody{Job: job("x"), Provider: p, Expiry: farExpiry, Replicas: 1} }),
		"named hold without expiry": with(func(e *Entry) { e.Body = HoldBody{Job: job("x"), Provider: p, Amount: 1, Replicas: 1} }),
		"named hold expired": with(func(e *Entry) {
			e.Body = HoldBody{Job: job("x"), Provider: p, Amount: 1, Replicas: 1, Expiry: e.Time.UnixNano()}
		}),
		"named hold, no replicas": with(func(e *Entry) { e.Body = HoldBody{Job: job("x"), Provider: p, Amount: 1, Expiry: farExpiry} }),
		"six replicas": with(func(e *Entry) {
			e.Body = HoldBody{Job: job("x"), Provider: p, Amount: 1, Expiry: farExpiry, Replicas: 6}
		}),
		"posting hold with expiry": with(func(e *Entry) { e.Body = HoldBody{Job: job("x"), Amount: 1, Expiry: farExpiry} }),
		"claim, short acceptance":  with(func(e *Entry) { e.Body = ClaimBody{Requester: p, Acceptance: make([]byte, AcceptanceSize-1)} }),
		"claim, no requester":      with(func(e *Entry) { e.Body = ClaimBody{Acceptance: make([]byte, AcceptanceSize)} }),
		"claim, final flag 2": func() []byte {
			b := with(func(e *Entry) { e.Body = ClaimBody{Requester: p, Acceptance: make([]byte, AcceptanceSize)} })
			b[bodyAt+2+32+2+len(p)+16] = 2
			return b
		}(),
		"claim of version 2": func() []byte {
			e := good
			e.version = entryVersion2
			e.Body = WaiveBody{Requester: p}
			return e.Encode()
		}(),
		"verdict quoting none": with(func(e *Entry) { e.Body = MajorityReleaseBody{Loser: ReceiptRef{Provider: p, Seq: 1}} }),
		"verdict quoting five": with(func(e *Entry) {
			e.Body = MajorityClaimBody{Requester: p, Receipt: 1, Majority: slices.Repeat([]ReceiptRef{{Provider: p, Seq: 1}}, MaxReplicas)}
		}),
		"verdict quoting seq 0": with(func(e *Entry) {
			e.Body = MajorityReleaseBody{Loser: ReceiptRef{Provider: p, Seq: 1}, Majority: []ReceiptRef{{Provider: p}}}
		}),
		"majority claim of receipt 0": with(func(e *Entry) {
			e.Body = MajorityClaimBody{Requester: p, Majority: []ReceiptRef{{Provider: p, Seq: 1}}}
		}),
		"verdict of version 2": func() []byte {
			e := good
			e.version = entryVersion2
			e.Body = MajorityReleaseBody{Loser: ReceiptRef{Provider: p, Seq: 1}, Majority: []ReceiptRef{{Provider: p, Seq: 2}}}
			return e.Encode()
		}(),
		"non-UTF-8 outputs": with(func(e *Entry) { e.Body = ReceiptBody{Outputs: "\xff"} }),
		"zero grant":        with(func(e *Entry) { e.Body = GrantBody{} }),
		"bad provider":      with(func(e *Entry) { e.Body = HoldBody{Job: job("x"), Provider: "nope", Amount: 1} }),
		"bad account":       with(func(e *Entry) { e.Account = peer.ID("not a peer id at all") }),
		"short signature":   with(func(e *Entry) { e.Signature = e.Signature[:63] }),
		"long signature":    with(func(e *Entry) { e.Signature = append(bytes.Clone(e.Signature), 1) }),
		"non-UTF-8 result":  with(func(e *Entry) { e.Body = ReceiptBody{Result: "\xff"} }),
		"long result":       with(func(e *Entry) { e.Body = ReceiptBody{Result: strings.Repeat("x", maxResultLen+1)} }),
		"no grant":          with(func(e *Entry) { e.Body = LeaseBody{Requester: p, Price: 1} }),
		"short grant":       with(func(e *Entry) { e.Body = LeaseBody{Requester: p, Price: 1, Grant: make([]byte, GrantSize-1)} }),
		"long grant":        with(func(e *Entry) { e.Body = LeaseBody{Requester: p, Price: 1, Grant: make([]byte, GrantSize+1)} }),
		"lease of version 1 with a grant": func() []byte {
			b := with(func(e *Entry) { e.Body = LeaseBody{Requester: p, Price: 1, Grant: make([]byte, GrantSize)} })
			b[0] = entryVersion1
			return b
		}(),
		"lease of version 2 without one": func() []byte {
			e := good
			e.version = entryVersion1
			e.Body = LeaseBody{Requester: p, Price: 1}
			b := e.Encode()
			b[0] = entryVersion2
			return b
		}(),
		"unknown kind": func() []byte {
			b := bytes.Clone(raw)
			b[bodyAt-9] = 99
			return b
		}(),
		"body length past end": func() []byte {
			b := bytes.Clone(raw)
			binary.BigEndian.PutUint16(b[bodyAt:], 4000)
			return b
		}(),
		"body trailing byte": func() []byte {
			e := good
			body := append(EncodeBody(e.Body), 0)
			b := e.appendUnsigned(nil)[:bodyAt]
			b = appendField(b, body)
			return appendField(b, e.Signature)
		}(),
	}
	if _, err := DecodeEntry(raw); err != nil {
		t.Fatalf("good entry: %v", err)
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeEntry(b); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

// TestEntryOfVersion1 checks the history a ledger stored before leases
// carried grants: an entry of version 1 decodes and encodes back to its
// bytes, its signature checks, and a lease of version 1 (which has no
// grant) is never valid.
func TestEntryOfVersion1(t *testing.T) {
	c := newChain(t, "alice", time.Unix(1700000000, 0))
	_, p := testKey(t, "provider")
	for _, body := range append(sampleBodies(t), LeaseBody{Job: job("old"), Requester: p, Price: 3}) {
		if body = olderBody(body); body == nil {
			continue
		}
		t.Run(body.Kind().String(), func(t *testing.T) {
			if l, ok := body.(LeaseBody); ok {
				body = LeaseBody{Job: l.Job, Requester: l.Requester, Price: l.Price}
			}
			e := Entry{Account: c.id, Seq: 1, Time: c.at, Body: body, version: entryVersion1}
			if err := e.Sign(testNet, c.priv); err != nil {
				t.Fatal(err)
			}
			raw := e.Encode()
			if raw[0] != entryVersion1 {
				t.Fatalf("version %d", raw[0])
			}
			d, err := DecodeEntry(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(d.Encode(), raw) || !reflect.DeepEqual(d.Body, body) || d.Version() != entryVersion1 {
				t.Fatalf("decoded %#v, re-encodes equal: %v", d, bytes.Equal(d.Encode(), raw))
			}
			err = d.VerifySignature(testNet)
			if body.Kind() == KindLease {
				if !errors.Is(err, ErrBadLeaseGrant) {
					t.Fatalf("lease of version 1: err = %v, want ErrBadLeaseGrant", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEntryOfVersion2 checks the history a ledger stored before claims:
// an entry of version 2 decodes and encodes back to its bytes (a hold
// without expiry, a release without provider), and its signature checks.
func TestEntryOfVersion2(t *testing.T) {
	c := newChain(t, "alice", time.Unix(1700000000, 0))
	for _, body := range sampleBodies(t) {
		if body = olderBody(body); body == nil {
			continue
		}
		t.Run(body.Kind().String(), func(t *testing.T) {
			e := Entry{Account: c.id, Seq: 1, Time: c.at, Body: body}.AsVersion2()
			if err := e.Sign(testNet, c.priv); err != nil {
				t.Fatal(err)
			}
			raw := e.Encode()
			if raw[0] != entryVersion2 {
				t.Fatalf("version %d", raw[0])
			}
			d, err := DecodeEntry(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(d.Encode(), raw) || !reflect.DeepEqual(d.Body, body) || d.Version() != entryVersion2 {
				t.Fatalf("decoded %#v, re-encodes equal: %v", d, bytes.Equal(d.Encode(), raw))
			}
			if err := d.VerifySignature(testNet); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// FuzzDecodeEntry checks that decoding is strict and canonical (what
// decodes re-encodes to the same bytes), that a lease has a grant exactly
// when it is of version 2, and that a lease whose signatures check has a
// grant that LeaseGrant.Verify, the provider's check of an award, accepts.
func FuzzDecodeEntry(f *testing.F) {
	c := newChain(f, "alice", time.Unix(1700000000, 0))
	for _, body := range sampleBodies(f) {
		f.Add(c.next(f, body))
	}
	old := Entry{Account: c.id, Seq: 1, Time: c.at, Body: LeaseBody{Job: job("old"), Requester: c.id, Price: 3}, version: entryVersion1}
	if err := old.Sign(testNet, c.priv); err != nil {
		f.Fatal(err)
	}
	f.Add(old.Encode())
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEntry(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		// The encoding is canonical: what decodes re-encodes to the same
		// bytes, so an entry has one hash.
		if !bytes.Equal(e.Encode(), data) {
			t.Fatalf("decoded entry re-encodes differently")
		}
		sigErr := e.VerifySignature(testNet)
		if l, ok := e.Body.(LeaseBody); ok {
			v1 := e.Version() == entryVersion1
			if v1 != (l.Grant == nil) || !v1 && len(l.Grant) != GrantSize || v1 && l.Attempt != 0 {
				t.Fatalf("lease of version %d with a grant of %d bytes, attempt %d", data[0], len(l.Grant), l.Attempt)
			}
			if sigErr == nil {
				if err := l.grantOf(e.Account).Verify(testNet, l.Grant); err != nil {
					t.Fatalf("signatures check, the grant does not: %v", err)
				}
			}
		}
		if _, err := DecodeFraudProof(data); err == nil {
			t.Log("also a fraud proof")
		}
	})
}
