package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func sampleBodies(t testing.TB) []Body {
	_, p := testKey(t, "provider")
	return []Body{
		GrantBody{Amount: 1_000_000},
		HoldBody{Job: job("a"), Provider: p, Amount: 42},
		HoldBody{Job: job("b"), Amount: 42}, // any provider
		ReleaseBody{Job: job("a")},
		PaymentBody{Job: job("a"), To: p, Receipt: job("receipt"), Amount: 41},
		LeaseBody{Job: job("a"), Requester: p, Price: 7},
		ReceiptBody{Job: job("a"), Receipt: job("r"), Result: "bafkreigh2akiscaildc", Usage: Usage{WallMS: 1500, GPUMS: 1200, ExitCode: -1}},
	}
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
			if e.Kind() != body.Kind() || e.Body != body {
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
	good := c.entry(t, HoldBody{Job: job("x"), Provider: p, Amount: 5})
	raw := good.Encode()
	with := func(f func(e *Entry)) []byte {
		e := good
		f(&e)
		return e.Encode()
	}
	// bodyAt returns where the body's length prefix sits.
	bodyAt := 1 + 2 + len(good.Account) + 8 + 32 + 1 + 8
	cases := map[string][]byte{
		"empty":            nil,
		"truncated":        raw[:len(raw)-1],
		"trailing":         append(bytes.Clone(raw), 0),
		"version":          append([]byte{2}, raw[1:]...),
		"oversized":        append(bytes.Clone(raw), make([]byte, MaxEntrySize)...),
		"seq zero":         with(func(e *Entry) { e.Seq = 0 }),
		"seq one, prev":    with(func(e *Entry) { e.Seq, e.Prev = 1, job("p") }),
		"before 1970":      with(func(e *Entry) { e.Time = time.Unix(-5, 0) }),
		"no body":          with(func(e *Entry) { e.Body = nil }),
		"zero hold":        with(func(e *Entry) { e.Body = HoldBody{Job: job("x"), Provider: p} }),
		"zero grant":       with(func(e *Entry) { e.Body = GrantBody{} }),
		"bad provider":     with(func(e *Entry) { e.Body = HoldBody{Job: job("x"), Provider: "nope", Amount: 1} }),
		"bad account":      with(func(e *Entry) { e.Account = peer.ID("not a peer id at all") }),
		"short signature":  with(func(e *Entry) { e.Signature = e.Signature[:63] }),
		"long signature":   with(func(e *Entry) { e.Signature = append(bytes.Clone(e.Signature), 1) }),
		"non-UTF-8 result": with(func(e *Entry) { e.Body = ReceiptBody{Result: "\xff"} }),
		"long result":      with(func(e *Entry) { e.Body = ReceiptBody{Result: strings.Repeat("x", maxResultLen+1)} }),
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

func FuzzDecodeEntry(f *testing.F) {
	c := newChain(f, "alice", time.Unix(1700000000, 0))
	for _, body := range sampleBodies(f) {
		f.Add(c.next(f, body))
	}
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
		_ = e.VerifySignature(testNet)
		if _, err := DecodeFraudProof(data); err == nil {
			t.Log("also a fraud proof")
		}
	})
}
