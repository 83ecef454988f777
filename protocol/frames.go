package protocol

import (
	"encoding/binary"
	"fmt"
	"io"
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

// WriteFrame writes b to w with its length as a uvarint before it, in one
// Write.
func WriteFrame(w io.Writer, b []byte) error {
	_, err := w.Write(Frame(b))
	return err
}

// FrameReader is what ReadFrame reads from: a bufio.Reader or a
// bytes.Reader.
type FrameReader interface {
	io.Reader
	io.ByteReader
}

// ReadFrame reads one frame of at most limit bytes: a uvarint length,
// then that many bytes. An empty frame is returned as such (some
// protocols end a list with one). A length past limit is ErrTooLarge;
// a bad length or a short frame is ErrBadMessage, wrapping the read's
// error (io.EOF at the end of a stream).
func ReadFrame(r FrameReader, limit uint64) ([]byte, error) {
	size, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("%w: frame length: %w", ErrBadMessage, err)
	}
	if size > limit {
		return nil, fmt.Errorf("%w: frame of %d bytes, limit %d", ErrTooLarge, size, limit)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: short frame: %w", ErrBadMessage, err)
	}
	return b, nil
}

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
