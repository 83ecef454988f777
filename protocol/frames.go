package protocol

import (
	"encoding/binary"
	"fmt"
)

// Limits of a market gossip message: several signed offers or taken
// notices travel together, so a burst of jobs costs the network one
// message per batch instead of one per job.
const (
	// MaxGossipMarketMessages bounds the signed messages in one gossip
	// message.
	MaxGossipMarketMessages = 128
	// MaxGossipMarketSize bounds a market gossip message in bytes.
	MaxGossipMarketSize = 512 << 10
)

// AppendFrame appends msg to b with its length as a uvarint before it.
func AppendFrame(b, msg []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(msg))), msg...)
}

// Frame returns b with its length as a uvarint before it.
func Frame(b []byte) []byte { return AppendFrame(nil, b) }

// SplitFrames splits b, a sequence of uvarint-length-prefixed messages, into
// at least one and at most maxFrames messages of 1..maxSize bytes each.
// Lengths must be minimally encoded and nothing may trail, so the same
// messages have one encoding: a repeat is recognised by its bytes. The
// messages alias b.
func SplitFrames(b []byte, maxFrames, maxSize int) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		size, k := binary.Uvarint(b)
		switch {
		case k <= 0 || size == 0 || size > uint64(maxSize) || size > uint64(len(b)-k):
			return nil, fmt.Errorf("%w: frame %d: bad length", ErrBadMessage, len(out))
		case k != binary.PutUvarint(make([]byte, binary.MaxVarintLen64), size):
			return nil, fmt.Errorf("%w: frame %d: length not minimally encoded", ErrBadMessage, len(out))
		case len(out) == maxFrames:
			return nil, fmt.Errorf("%w: more than %d frames", ErrTooLarge, maxFrames)
		}
		out = append(out, b[k:k+int(size)])
		b = b[k+int(size):]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no frames", ErrBadMessage)
	}
	return out, nil
}

// SplitMarketGossip splits a market gossip message into its signed
// messages (not yet opened).
func SplitMarketGossip(b []byte) ([][]byte, error) {
	if len(b) > MaxGossipMarketSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxGossipMarketSize)
	}
	return SplitFrames(b, MaxGossipMarketMessages, MaxMarketMessageSize)
}

// JoinMarketGossip packs signed market messages into as few gossip
// messages as the limits allow.
func JoinMarketGossip(msgs [][]byte) [][]byte {
	var out [][]byte
	var cur []byte
	count := 0
	for _, m := range msgs {
		framed := len(m) + binary.MaxVarintLen64
		if count > 0 && (count == MaxGossipMarketMessages || len(cur)+framed > MaxGossipMarketSize) {
			out, cur, count = append(out, cur), nil, 0
		}
		cur = AppendFrame(cur, m)
		count++
	}
	if count > 0 {
		out = append(out, cur)
	}
	return out
}
