package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ed25519PeerPrefix is how every Ed25519 peer ID starts: an identity
// multihash (0x00, length 36) of the protobuf PublicKey{Type: Ed25519,
// Data: 32 bytes}. The public key is the 32 bytes that follow.
const ed25519PeerPrefix = "\x00\x24\x08\x01\x12\x20"

const AccountIDLen = 38

// accountKey returns the Ed25519 public key inside an Ed25519 peer ID.
func accountKey(id peer.ID) (ed25519.PublicKey, error) {
	if !isEd25519Peer([]byte(id)) {
		return nil, fmt.Errorf("%w: %q", ErrBadAccount, id)
	}
	return ed25519.PublicKey(id[len(ed25519PeerPrefix):]), nil
}

func isEd25519Peer(b []byte) bool {
	return len(b) == AccountIDLen && string(b[:len(ed25519PeerPrefix)]) == ed25519PeerPrefix
}

// AccountOf returns the account (peer ID) of an Ed25519 private key.
func AccountOf(priv crypto.PrivKey) (peer.ID, error) {
	if priv == nil || priv.Type() != crypto.Ed25519 {
		return "", fmt.Errorf("%w: ledger keys are Ed25519", ErrBadAccount)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("peer ID of key: %w", err)
	}
	if !isEd25519Peer([]byte(id)) {
		return "", fmt.Errorf("%w: %s", ErrBadAccount, id)
	}
	return id, nil
}

func appendField(out, f []byte) []byte {
	out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
	return append(out, f...)
}

// reader decodes fixed and length-prefixed fields; the first error sticks
// and later reads return zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
	}
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail("truncated")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) hash() (h Hash) {
	copy(h[:], r.take(len(h)))
	return h
}

// field reads a length-prefixed field of at most max bytes; the result is
// a copy.
func (r *reader) field(max int) []byte {
	v := r.take(2)
	if v == nil {
		return nil
	}
	n := int(binary.BigEndian.Uint16(v))
	if n > max {
		r.fail("field of %d bytes, limit %d", n, max)
		return nil
	}
	return bytes.Clone(r.take(n))
}

// peer reads a length-prefixed Ed25519 peer ID.
func (r *reader) peer() peer.ID {
	p := r.optionalPeer()
	if r.err == nil && p == "" {
		r.fail("peer is not an Ed25519 peer ID")
	}
	return p
}

// optionalPeer reads a length-prefixed Ed25519 peer ID or an empty field.
func (r *reader) optionalPeer() peer.ID {
	v := r.field(AccountIDLen)
	if r.err == nil && len(v) > 0 && !isEd25519Peer(v) {
		r.fail("peer is not an Ed25519 peer ID")
	}
	return peer.ID(v)
}

func (r *reader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	return r.err
}
