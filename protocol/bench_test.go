package protocol

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"
)

// BenchmarkEd25519Verify is the floor OpenMarket stands beside: one raw
// signature check.
func BenchmarkEd25519Verify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 300)
	sig := ed25519.Sign(priv, msg)
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("verify failed")
		}
	}
}

// BenchmarkOpenMarket verifies and decodes a signed offer.
func BenchmarkOpenMarket(b *testing.B) {
	k, id := newKey(b)
	raw, err := SealMarket(k, "lab", testNow.Add(time.Minute), sampleOffer(id))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := OpenMarket(raw, "lab", testNow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSealMarket signs an offer.
func BenchmarkSealMarket(b *testing.B) {
	k, id := newKey(b)
	m := sampleOffer(id)
	for b.Loop() {
		if _, err := SealMarket(k, "lab", testNow.Add(time.Minute), m); err != nil {
			b.Fatal(err)
		}
	}
}
