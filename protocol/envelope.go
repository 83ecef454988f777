package protocol

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
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
func open(data []byte, maxSize int, domain string, codec []byte, msg proto.Message) (peer.ID, error) {
	if len(data) > maxSize {
		return "", fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), maxSize)
	}
	env, err := record.ConsumeTypedEnvelope(data, &signed{domain: domain, codec: codec, msg: msg})
	if err != nil {
		if env != nil {
			return "", fmt.Errorf("%w: %v", ErrSignature, err)
		}
		return "", fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	if !bytes.Equal(env.PayloadType, codec) {
		return "", fmt.Errorf("%w: payload type %q, want %q", ErrBadMessage, env.PayloadType, codec)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return "", fmt.Errorf("%w: signer key: %v", ErrBadMessage, err)
	}
	return signer, nil
}
