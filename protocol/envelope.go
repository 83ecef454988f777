package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	recordpb "github.com/libp2p/go-libp2p/core/record/pb"
	voied "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"google.golang.org/protobuf/proto"
)

// Errors that validators report; wrap-checkable with errors.Is.
var (
	ErrTooLarge   = errors.New("message too large")
	ErrBadMessage = errors.New("malformed message")
	ErrSignature  = errors.New("bad signature")
	ErrExpired    = errors.New("expired")
	ErrSigner     = errors.New("signed by the wrong peer")
)

// signed wraps a protobuf message as a libp2p record, so it travels in a
// signed envelope (core/record) with its own signature domain and payload
// type: a signature over one kind of message can never pass as another.
type signed struct {
	domain string
	codec  []byte
	msg    proto.Message
}

func (s *signed) Domain() string                 { return s.domain }
func (s *signed) Codec() []byte                  { return s.codec }
func (s *signed) MarshalRecord() ([]byte, error) { return proto.Marshal(s.msg) }
func (s *signed) UnmarshalRecord(b []byte) error { return proto.Unmarshal(b, s.msg) }

// seal signs msg with key and returns the envelope's bytes.
func seal(key crypto.PrivKey, domain string, codec []byte, msg proto.Message) ([]byte, error) {
	env, err := record.Seal(&signed{domain: domain, codec: codec, msg: msg}, key)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", domain, err)
	}
	b, err := env.Marshal()
	if err != nil {
		return nil, fmt.Errorf("marshal %s envelope: %w", domain, err)
	}
	return b, nil
}

// open checks size, signature and payload type of an envelope, decodes its
// payload into msg, and returns the signer.
//
// It reads the envelope as core/record does (ConsumeTypedEnvelope: the
// same bytes are signed, and the same envelopes pass and fail), but checks
// an Ed25519 signature with curve25519-voi under the standard library's
// rules: a third faster than crypto/ed25519, on a path that every gossiped
// offer takes on every node. One verdict is named better: a soundly signed
// envelope whose payload does not decode is ErrBadMessage, not
// ErrSignature.
func open(data []byte, maxSize int, domain string, codec []byte, msg proto.Message) (peer.ID, error) {
	if len(data) > maxSize {
		return "", fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), maxSize)
	}
	var env recordpb.Envelope
	if err := proto.Unmarshal(data, &env); err != nil {
		return "", fmt.Errorf("%w: envelope: %v", ErrBadMessage, err)
	}
	key, err := crypto.PublicKeyFromProto(env.GetPublicKey())
	if err != nil {
		return "", fmt.Errorf("%w: signer key: %v", ErrBadMessage, err)
	}
	ok, err := verifyEnvelope(key, signedBytes(domain, env.GetPayloadType(), env.GetPayload()), env.GetSignature())
	if err != nil {
		return "", fmt.Errorf("%w: %s envelope: %v", ErrSignature, domain, err)
	}
	if !ok {
		return "", fmt.Errorf("%w: %s envelope", ErrSignature, domain)
	}
	if !bytes.Equal(env.GetPayloadType(), codec) {
		return "", fmt.Errorf("%w: payload type %q, want %q", ErrBadMessage, env.GetPayloadType(), codec)
	}
	if err := proto.Unmarshal(env.GetPayload(), msg); err != nil {
		return "", fmt.Errorf("%w: payload: %v", ErrBadMessage, err)
	}
	signer, err := peer.IDFromPublicKey(key)
	if err != nil {
		return "", fmt.Errorf("%w: signer key: %v", ErrBadMessage, err)
	}
	return signer, nil
}

// stdlibRule makes curve25519-voi accept exactly the signatures that
// crypto/ed25519 (which core/crypto uses) accepts.
var stdlibRule = &voied.Options{Verify: voied.VerifyOptionsStdLib}

// verifyEnvelope checks sig over b: an Ed25519 key with curve25519-voi,
// any other key type as core/crypto does.
func verifyEnvelope(key crypto.PubKey, b, sig []byte) (bool, error) {
	if _, ok := key.(*crypto.Ed25519PublicKey); !ok {
		return key.Verify(b, sig)
	}
	raw, err := key.Raw()
	if err != nil {
		return false, err
	}
	return len(sig) == voied.SignatureSize && voied.VerifyWithOptions(voied.PublicKey(raw), b, sig, stdlibRule), nil
}

// signedBytes is what an envelope's signature covers (core/record's
// makeUnsigned): the domain, payload type and payload, each after its
// length as an unsigned varint.
func signedBytes(domain string, payloadType, payload []byte) []byte {
	b := make([]byte, 0, len(domain)+len(payloadType)+len(payload)+3*binary.MaxVarintLen64)
	b = binary.AppendUvarint(b, uint64(len(domain)))
	b = append(b, domain...)
	b = binary.AppendUvarint(b, uint64(len(payloadType)))
	b = append(b, payloadType...)
	b = binary.AppendUvarint(b, uint64(len(payload)))
	return append(b, payload...)
}
