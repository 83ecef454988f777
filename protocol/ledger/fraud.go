package ledger

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrBadFraudProof marks a fraud proof that proves nothing.
var ErrBadFraudProof = errors.New("invalid fraud proof")

// FraudProof is two different entries, both validly signed, for the same
// account and seq: proof that the account equivocated. A and B are the
// entries' wire forms, in byte order.
type FraudProof struct {
	A, B []byte
}

// NewFraudProof is the proof made of a and b, two entries' wire forms
// (copied), in byte order.
func NewFraudProof(a, b []byte) FraudProof {
	if bytes.Compare(a, b) > 0 {
		a, b = b, a
	}
	return FraudProof{A: bytes.Clone(a), B: bytes.Clone(b)}
}

// Verify checks the proof for network and returns the account it convicts.
// Errors wrap ErrBadFraudProof.
func (p FraudProof) Verify(network string) (peer.ID, error) {
	a, err := DecodeEntry(p.A)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadFraudProof, err)
	}
	b, err := DecodeEntry(p.B)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadFraudProof, err)
	}
	if a.Account != b.Account || a.Seq != b.Seq {
		return "", fmt.Errorf("%w: entries of different slots", ErrBadFraudProof)
	}
	if bytes.Equal(p.A, p.B) {
		return "", fmt.Errorf("%w: the same entry twice", ErrBadFraudProof)
	}
	for _, e := range []Entry{a, b} {
		if err := e.verifyAccountSignature(network); err != nil {
			return "", fmt.Errorf("%w: %w", ErrBadFraudProof, err)
		}
	}
	return a.Account, nil
}

// Encode returns the proof's wire form: a version byte, then A and B,
// each with a 2-byte length.
func (p FraudProof) Encode() []byte {
	out := make([]byte, 0, 5+len(p.A)+len(p.B))
	out = append(out, 1)
	out = appendField(out, p.A)
	return appendField(out, p.B)
}

// DecodeFraudProof parses a proof's wire form (without verifying it).
func DecodeFraudProof(data []byte) (FraudProof, error) {
	r := reader{b: data}
	if v := r.u8(); r.err == nil && v != 1 {
		return FraudProof{}, fmt.Errorf("%w: fraud proof version %d", ErrMalformed, v)
	}
	p := FraudProof{A: r.field(MaxEntrySize), B: r.field(MaxEntrySize)}
	if err := r.end(); err != nil {
		return FraudProof{}, fmt.Errorf("fraud proof: %w", err)
	}
	return p, nil
}

// EquivocationError is the error of an entry that conflicts with a stored
// one: it wraps ErrEquivocation and holds the proof, to gossip.
type EquivocationError struct {
	Account peer.ID
	Seq     uint64
	Proof   FraudProof
}

// Error implements error.
func (e *EquivocationError) Error() string {
	return fmt.Sprintf("%v: %s wrote two entries with seq %d; account frozen", ErrEquivocation, e.Account, e.Seq)
}

// Unwrap returns ErrEquivocation.
func (e *EquivocationError) Unwrap() error { return ErrEquivocation }
