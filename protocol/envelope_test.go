package protocol

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"

	"github.com/mira-market/mira/protocol/pb"
)

// openAgreesWithRecord fails t unless open and core/record's
// ConsumeTypedEnvelope accept data alike and, where both accept, name the
// same signer.
func openAgreesWithRecord(t *testing.T, data []byte) {
	t.Helper()
	signer, err := open(data, len(data), marketDomain, marketCodec, &pb.MarketMessage{})
	env, rerr := record.ConsumeTypedEnvelope(data, &signed{domain: marketDomain, codec: marketCodec, msg: &pb.MarketMessage{}})
	if rerr == nil && !bytes.Equal(env.PayloadType, marketCodec) {
		rerr = ErrBadMessage
	}
	if (err == nil) != (rerr == nil) {
		t.Fatalf("open says %v, core/record says %v, for %x", err, rerr, data)
	}
	if errors.Is(err, ErrSignature) != errors.Is(rerr, record.ErrInvalidSignature) {
		t.Fatalf("open says %v, core/record says %v, for %x: not the same signature verdict", err, rerr, data)
	}
	if err == nil {
		if want, _ := peer.IDFromPublicKey(env.PublicKey); signer != want {
			t.Fatalf("open names %s, the envelope's key is %s's", signer, want)
		}
	}
}

// TestOpenAgreesWithRecord checks open against core/record on a sealed
// message and on every one-byte change and every truncation of it.
func TestOpenAgreesWithRecord(t *testing.T) {
	k, id := newKey(t)
	raw, err := SealMarket(k, "lab", testNow.Add(time.Minute), sampleOffer(id))
	if err != nil {
		t.Fatal(err)
	}
	openAgreesWithRecord(t, raw)
	if _, err := open(raw, len(raw), marketDomain, marketCodec, &pb.MarketMessage{}); err != nil {
		t.Fatalf("a sealed message does not open: %v", err)
	}
	for i := range raw {
		for _, flip := range []byte{1, 0x80, 0xff} {
			b := bytes.Clone(raw)
			b[i] ^= flip
			openAgreesWithRecord(t, b)
		}
		openAgreesWithRecord(t, raw[:i])
	}
	// Another domain's signature over the same payload does not pass.
	other, err := seal(k, "another-domain", marketCodec, sampleOffer(id))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open(other, len(other), marketDomain, marketCodec, &pb.MarketMessage{}); err == nil {
		t.Fatal("a signature of another domain opened")
	}
}

// FuzzOpenAgreesWithRecord is TestOpenAgreesWithRecord on any bytes.
func FuzzOpenAgreesWithRecord(f *testing.F) {
	k, id := newKey(f)
	raw, err := SealMarket(k, "lab", testNow.Add(time.Minute), sampleOffer(id))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Fuzz(func(t *testing.T, data []byte) { openAgreesWithRecord(t, data) })
}
