package storage

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
	// ReconcileMaxFrame bounds every frame, on encode and on decode.
	ReconcileMaxFrame = 64 << 10

	rcMsgSymbols byte = 1
	rcMsgRequest byte = 2
	rcMsgDiff    byte = 3
	rcMsgAbort   byte = 4

	rcFlagLast byte = 1

	rcReasonTooLarge byte = 1
	rcReasonProtocol byte = 2
	rcReasonLimit    byte = 3

	// rcSymbolMinSize and rcSymbolMaxSize bound one encoded symbol.
	rcSymbolMinSize = 32 + 8 + 1
	rcSymbolMaxSize = 32 + 8 + binary.MaxVarintLen64
	// rcFrameOverhead bounds a frame's bytes other than its symbols or
	// hashes: type, flags and up to two uvarints below 2^32.
	rcFrameOverhead = 2 + 2*binary.MaxVarintLen32
	// rcHashesPerFrame is how many hashes a diff frame carries at most.
	rcHashesPerFrame = (ReconcileMaxFrame - rcFrameOverhead) / 32
)

// rcMessage is a decoded frame; kind says which fields are meaningful.
type rcMessage struct {
	kind       byte
	from, to   uint64     // symbols: from; request: [from, to)
	syms       []rcSymbol // symbols
	last       bool       // diff
	have, want [][32]byte // diff: hashes the sender has that the receiver lacks, and the reverse
	reason     byte       // abort
}

// rcEncode encodes m, refusing a frame over ReconcileMaxFrame.
func rcEncode(m *rcMessage) ([]byte, error) {
	b := []byte{m.kind}
	switch m.kind {
	case rcMsgSymbols:
		b = binary.AppendUvarint(b, m.from)
		b = binary.AppendUvarint(b, uint64(len(m.syms)))
		for i := range m.syms {
			b = rcAppendSymbol(b, &m.syms[i])
		}
	case rcMsgRequest:
		b = binary.AppendUvarint(b, m.from)
		b = binary.AppendUvarint(b, m.to)
	case rcMsgDiff:
		b = append(b, rcFlags(m.last))
		b = rcAppendHashes(b, m.have)
		b = rcAppendHashes(b, m.want)
	case rcMsgAbort:
		b = append(b, m.reason)
	default:
		return nil, fmt.Errorf("%w: encode unknown type %d", ErrReconcileFrame, m.kind)
	}
	if len(b) > ReconcileMaxFrame {
		return nil, fmt.Errorf("%w: frame of %d bytes over %d", ErrReconcileFrame, len(b), ReconcileMaxFrame)
	}
	return b, nil
}

func rcFlags(last bool) byte {
	if last {
		return rcFlagLast
	}
	return 0
}

// rcSymbolSize is the encoded size of s, so frames can be packed to the limit.
func rcSymbolSize(s *rcSymbol) int {
	var tmp [binary.MaxVarintLen64]byte
	return 40 + binary.PutVarint(tmp[:], s.count)
}

func rcAppendSymbol(b []byte, s *rcSymbol) []byte {
	for _, w := range s.sum {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	b = binary.LittleEndian.AppendUint64(b, s.check)
	return binary.AppendVarint(b, s.count)
}

func rcAppendHashes(b []byte, hs [][32]byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(hs)))
	for i := range hs {
		b = append(b, hs[i][:]...)
	}
	return b
}

// rcDecode decodes one frame strictly.
func rcDecode(b []byte) (rcMessage, error) {
	if len(b) == 0 || len(b) > ReconcileMaxFrame {
		return rcMessage{}, fmt.Errorf("%w: frame of %d bytes", ErrReconcileFrame, len(b))
	}
	r := rcReader{b: b[1:]}
	m := rcMessage{kind: b[0]}
	switch m.kind {
	case rcMsgSymbols:
		r.symbols(&m)
	case rcMsgRequest:
		r.request(&m)
	case rcMsgDiff:
		r.diff(&m)
	case rcMsgAbort:
		m.reason = r.byte()
		if r.err == nil && (m.reason < rcReasonTooLarge || m.reason > rcReasonLimit) {
			r.fail("unknown abort reason %d", m.reason)
		}
	default:
		r.fail("unknown message type %d", m.kind)
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return rcMessage{}, r.err
	}
	return m, nil
}

// rcReader consumes a frame's body; the first error sticks and later reads
// return zero values.
type rcReader struct {
	b   []byte
	err error
}

func (r *rcReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrReconcileFrame}, args...)...)
	}
}

func (r *rcReader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// uvarint reads a canonical (shortest-form) uvarint.
func (r *rcReader) uvarint() uint64 {
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
func (r *rcReader) varint() int64 {
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
func (r *rcReader) count(minSize int) int {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)/minSize) {
		r.fail("count %d exceeds frame", n)
		return 0
	}
	return int(n)
}

func (r *rcReader) fixed(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.fail("truncated")
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *rcReader) symbols(m *rcMessage) {
	m.from = r.uvarint()
	n := r.count(rcSymbolMinSize)
	if r.err == nil && (n == 0 || m.from > MaxReconcileCapacity || uint64(n) > MaxReconcileCapacity-m.from) {
		r.fail("symbols [%d, +%d) out of range", m.from, n)
	}
	if r.err != nil {
		return
	}
	m.syms = make([]rcSymbol, n)
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

func (r *rcReader) request(m *rcMessage) {
	m.from = r.uvarint()
	m.to = r.uvarint()
	if r.err == nil && (m.from >= m.to || m.to > MaxReconcileCapacity) {
		r.fail("request [%d, %d) out of range", m.from, m.to)
	}
}

func (r *rcReader) diff(m *rcMessage) {
	switch flags := r.byte(); {
	case r.err != nil:
		return
	case flags&^rcFlagLast != 0:
		r.fail("unknown flags %#x", flags)
		return
	default:
		m.last = flags == rcFlagLast
	}
	m.have = r.hashes()
	m.want = r.hashes()
}

// hashes reads a strictly ascending list of hashes.
func (r *rcReader) hashes() [][32]byte {
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
