package riblt

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Wire format of the reconciliation frames. Each frame is one message of the
// stream (the stream layer delimits frames, e.g. with a varint length): a
// type byte, then fields in uvarints and fixed-size byte strings. Decoding is
// strict: canonical varints, ranges and counts checked against the bytes that
// are left before anything is allocated, no trailing bytes.
//
//	symbols  1 | from | n | n × (sum 32 B | check 8 B little-endian | count zigzag varint)
//	request  2 | from | to                       ask for symbols [from, to)
//	diff     3 | flags | nHave | nHave × 32 B | nWant | nWant × 32 B
//	         flags bit 0: last frame; each list strictly ascending
//	abort    4 | reason                          1 too large, 2 protocol, 3 limit
const (
	// MaxFrame bounds every frame, on encode and on decode.
	MaxFrame = 64 << 10

	msgSymbols byte = 1
	msgRequest byte = 2
	msgDiff    byte = 3
	msgAbort   byte = 4

	flagLast byte = 1

	reasonTooLarge byte = 1
	reasonProtocol byte = 2
	reasonLimit    byte = 3

	// symbolMinSize and symbolMaxSize bound one encoded symbol.
	symbolMinSize = 32 + 8 + 1
	symbolMaxSize = 32 + 8 + binary.MaxVarintLen64
	// frameOverhead bounds a frame's bytes other than its symbols or
	// hashes: type, flags and up to two uvarints below 2^32.
	frameOverhead = 2 + 2*binary.MaxVarintLen32
	// hashesPerFrame is how many hashes a diff frame carries at most.
	hashesPerFrame = (MaxFrame - frameOverhead) / 32
)

// message is a decoded frame; kind says which fields are meaningful.
type message struct {
	kind       byte
	from, to   uint64     // symbols: from; request: [from, to)
	syms       []symbol   // symbols
	last       bool       // diff
	have, want [][32]byte // diff: hashes the sender has that the receiver lacks, and the reverse
	reason     byte       // abort
}

// encodeFrame encodes m, refusing a frame over MaxFrame.
func encodeFrame(m *message) ([]byte, error) {
	b := []byte{m.kind}
	switch m.kind {
	case msgSymbols:
		b = binary.AppendUvarint(b, m.from)
		b = binary.AppendUvarint(b, uint64(len(m.syms)))
		for i := range m.syms {
			b = appendSymbol(b, &m.syms[i])
		}
	case msgRequest:
		b = binary.AppendUvarint(b, m.from)
		b = binary.AppendUvarint(b, m.to)
	case msgDiff:
		b = append(b, flagsOf(m.last))
		b = appendHashes(b, m.have)
		b = appendHashes(b, m.want)
	case msgAbort:
		b = append(b, m.reason)
	default:
		return nil, fmt.Errorf("%w: encode unknown type %d", ErrFrame, m.kind)
	}
	if len(b) > MaxFrame {
		return nil, fmt.Errorf("%w: frame of %d bytes over %d", ErrFrame, len(b), MaxFrame)
	}
	return b, nil
}

func flagsOf(last bool) byte {
	if last {
		return flagLast
	}
	return 0
}

// symbolSize is the encoded size of s, so frames can be packed to the limit.
func symbolSize(s *symbol) int {
	var tmp [binary.MaxVarintLen64]byte
	return 40 + binary.PutVarint(tmp[:], s.count)
}

func appendSymbol(b []byte, s *symbol) []byte {
	for _, w := range s.sum {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	b = binary.LittleEndian.AppendUint64(b, s.check)
	return binary.AppendVarint(b, s.count)
}

func appendHashes(b []byte, hs [][32]byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(hs)))
	for i := range hs {
		b = append(b, hs[i][:]...)
	}
	return b
}

// decodeFrame decodes one frame strictly.
func decodeFrame(b []byte) (message, error) {
	if len(b) == 0 || len(b) > MaxFrame {
		return message{}, fmt.Errorf("%w: frame of %d bytes", ErrFrame, len(b))
	}
	r := frameReader{b: b[1:]}
	m := message{kind: b[0]}
	switch m.kind {
	case msgSymbols:
		r.symbols(&m)
	case msgRequest:
		r.request(&m)
	case msgDiff:
		r.diff(&m)
	case msgAbort:
		m.reason = r.byte()
		if r.err == nil && (m.reason < reasonTooLarge || m.reason > reasonLimit) {
			r.fail("unknown abort reason %d", m.reason)
		}
	default:
		r.fail("unknown message type %d", m.kind)
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return message{}, r.err
	}
	return m, nil
}

// frameReader consumes a frame's body; the first error sticks and later reads
// return zero values.
type frameReader struct {
	b   []byte
	err error
}

func (r *frameReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrFrame}, args...)...)
	}
}

func (r *frameReader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// uvarint reads a canonical (shortest-form) uvarint.
func (r *frameReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || (n > 1 && r.b[n-1] == 0) {
		r.fail("bad uvarint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// varint reads a canonical zigzag varint.
func (r *frameReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 || (n > 1 && r.b[n-1] == 0) {
		r.fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a uvarint count of elements of at least minSize bytes each,
// refusing one the rest of the frame cannot hold.
func (r *frameReader) count(minSize int) int {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)/minSize) {
		r.fail("count %d exceeds frame", n)
		return 0
	}
	return int(n)
}

func (r *frameReader) fixed(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.fail("truncated")
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *frameReader) symbols(m *message) {
	m.from = r.uvarint()
	n := r.count(symbolMinSize)
	if r.err == nil && (n == 0 || m.from > MaxCapacity || uint64(n) > MaxCapacity-m.from) {
		r.fail("symbols [%d, +%d) out of range", m.from, n)
	}
	if r.err != nil {
		return
	}
	m.syms = make([]symbol, n)
	for i := range m.syms {
		s := &m.syms[i]
		p := r.fixed(40)
		if p == nil {
			return
		}
		for k := range s.sum {
			s.sum[k] = binary.LittleEndian.Uint64(p[8*k:])
		}
		s.check = binary.LittleEndian.Uint64(p[32:])
		s.count = r.varint()
	}
}

func (r *frameReader) request(m *message) {
	m.from = r.uvarint()
	m.to = r.uvarint()
	if r.err == nil && (m.from >= m.to || m.to > MaxCapacity) {
		r.fail("request [%d, %d) out of range", m.from, m.to)
	}
}

func (r *frameReader) diff(m *message) {
	switch flags := r.byte(); {
	case r.err != nil:
		return
	case flags&^flagLast != 0:
		r.fail("unknown flags %#x", flags)
		return
	default:
		m.last = flags == flagLast
	}
	m.have = r.hashes()
	m.want = r.hashes()
}

// hashes reads a strictly ascending list of hashes.
func (r *frameReader) hashes() [][32]byte {
	n := r.count(32)
	if r.err != nil || n == 0 {
		return nil
	}
	hs := make([][32]byte, n)
	for i := range hs {
		copy(hs[i][:], r.fixed(32))
		if i > 0 && bytes.Compare(hs[i-1][:], hs[i][:]) >= 0 {
			r.fail("hashes not strictly ascending")
			return nil
		}
	}
	return hs
}
