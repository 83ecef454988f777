// Package riblt reconciles sets of 32-byte hashes (ledger entry hashes)
// with a rateless invertible Bloom lookup table (Yang, Gilad, Alizadeh:
// "Practical Rateless Set Reconciliation", SIGCOMM 2024).
//
// # The algorithm
//
// Every item (a 32-byte entry hash) is mapped to an infinite, pseudo-random,
// increasing sequence of coded-symbol indices: index 0 always, then gaps drawn
// from a generator seeded by the item's checksum, so that symbol j holds a
// given item with probability about 1/(1+j/2). A coded symbol is the XOR of
// its items, the XOR of their 64-bit checksums and their count. The sequence
// of coded symbols of a set is rateless: any prefix of it works, and a prefix
// of about 1.35·d symbols (more for d below ~10) lets a peer recover a
// symmetric difference of d items, whatever the size of the sets.
//
// The decoding side subtracts its own symbols from the peer's, which leaves
// the symbols of the difference only, and peels: a symbol whose count is ±1
// and whose checksum is the checksum of its sum holds exactly one item; the
// item is recovered (the sign says which side holds it) and removed from every
// symbol it maps to, which can make more symbols pure. Every item maps to
// symbol 0, so the difference is fully known once symbol 0 is empty.
//
// # Why this design
//
//   - Traffic grows with the difference, not with the ledger: a coded symbol
//     is ~43 bytes and a difference of d needs ~1.35·d of them (with the
//     margin the protocol adds for its estimate of d, ~2.3·d at d = 100).
//     Measured at 10^6 entries a side, 100 differing: ~13 KB in all, two
//     round trips, under 1 ms of CPU. Two ledgers that agree exchange one
//     frame each way (~2.7 KB).
//   - Range-based reconciliation (Negentropy) was the alternative: it would
//     need the timestamps and a sorted index, ~3 round trips and ~1.5–2 KB
//     per difference (~150–200 KB here). No hybrid is needed: the rateless
//     code is an order of magnitude smaller at every d it can decode, and
//     timestamps are not used at all.
//   - A set's symbol prefix is maintained incrementally (Set.Add
//     updates ~2·ln(capacity) ≈ 22 symbols, ~1.3 µs), so a session never
//     walks the ledger: its cost is O(d·log d), not O(N).
//
// Its limit: a prefix of Capacity symbols decodes at most ~Capacity/1.4
// differences (~46,000 by default). Beyond that a session ends with
// ErrDifferenceTooLarge, usually after the first frame (symbol 0's count is
// the difference of the set sizes, and the other counts estimate d), and the
// caller falls back to a full listing.
//
// The checksum is a fixed, unkeyed 64-bit hash (a shared symbol prefix cannot
// use a per-session key). A peer that can choose entry hashes could craft two
// with equal checksums and keep one pair of honest nodes from decoding; they
// then fall back to listing. Recovered hashes are only hints: entries are
// fetched by hash and verified on arrival.
//
// Everything here is pure: no I/O, no goroutines, no clock. The session types
// (Initiator, Responder) turn frames into frames, with hard
// bounds on frame size, symbols, rounds and peeling work, so a peer sending
// garbage gets an error, never a loop or an unbounded allocation.
package riblt

import (
	"encoding/binary"
	"math"
	"slices"
	"sync/atomic"
)

const (
	// DefaultCapacity is the number of coded symbols a
	// Set keeps when asked for none: 3 MiB, enough to decode about
	// 46,000 differing entries.
	DefaultCapacity = 1 << 16
	// MaxCapacity bounds a Set's capacity (192 MiB).
	MaxCapacity = 1 << 22

	// chunkShift sets the unit in which a set takes memory: 64 symbols
	// (3 KiB), so that a set with few items does not hold its whole
	// capacity.
	chunkShift = 6
	chunkSize  = 1 << chunkShift

	// checksumSeed keeps the checksum of the all-zero hash non-zero, so an
	// empty symbol never passes for a pure one.
	checksumSeed = 0x6d697261_72626c74 // "mirarblt"
	// golden is splitmix64's increment.
	golden = 0x9e3779b97f4a7c15
)

// symbol is a coded symbol: the XOR of its items, the XOR of their
// checksums, and how many items it holds (negative once a peer's symbol has
// been subtracted from it).
type symbol struct {
	sum   [4]uint64
	check uint64
	count int64
}

// words reads a hash as four little-endian words, the form symbols XOR.
func words(h *[32]byte) [4]uint64 {
	return [4]uint64{
		binary.LittleEndian.Uint64(h[0:]),
		binary.LittleEndian.Uint64(h[8:]),
		binary.LittleEndian.Uint64(h[16:]),
		binary.LittleEndian.Uint64(h[24:]),
	}
}

// hashOf is the inverse of words.
func hashOf(w *[4]uint64) [32]byte {
	var h [32]byte
	for i, x := range w {
		binary.LittleEndian.PutUint64(h[8*i:], x)
	}
	return h
}

// mix is splitmix64's finalizer: a bijection whose multiplications make the
// checksum non-linear, so the XOR of two items' checksums is not the
// checksum of their XOR.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// checksum is an item's 64-bit checksum; it also seeds the item's index
// sequence.
func checksum(w *[4]uint64) uint64 {
	h := uint64(checksumSeed)
	for _, x := range w {
		h = mix(h ^ x)
	}
	return h
}

// xor adds (or removes: it is its own inverse) an item to s's sum and check;
// the caller adjusts count.
func (s *symbol) xor(sum *[4]uint64, check uint64) {
	s.sum[0] ^= sum[0]
	s.sum[1] ^= sum[1]
	s.sum[2] ^= sum[2]
	s.sum[3] ^= sum[3]
	s.check ^= check
}

// subtract makes s the difference s − o.
func (s *symbol) subtract(o *symbol) {
	s.xor(&o.sum, o.check)
	s.count -= o.count
}

// pure reports whether s holds exactly one item (up to a 2^-64 chance).
func (s *symbol) pure() bool {
	return (s.count == 1 || s.count == -1) && s.check == checksum(&s.sum)
}

// empty reports whether s holds nothing.
func (s *symbol) empty() bool {
	return s.count == 0 && s.check == 0 && s.sum == [4]uint64{}
}

// mapping walks an item's coded-symbol indices.
type mapping struct {
	state uint64 // generator state, seeded by the item's checksum
	idx   uint64 // current index; math.MaxUint64 once the sequence ends
}

// newMapping starts an item's walk at index 0, which every item maps to.
func newMapping(check uint64) mapping {
	return mapping{state: check}
}

// next advances to the item's next index. With u = r/2^64 uniform, the gap
// from index i is ⌈(i+1.5)·(1/√u − 1)⌉ (the paper's reference mapping), so
// that index j is hit with probability ~1/(1+j/2). It is computed in integers
// (s = ⌊√r⌋ < 2^32) so that every platform, with or without fused
// multiply-add, derives the same sequence. Callers stop before idx reaches
// MaxCapacity, which keeps the products below 2^58.
func (m *mapping) next() {
	m.state += golden
	s := isqrt(mix(m.state))
	if s == 0 {
		m.idx = math.MaxUint64
		return
	}
	num := (2*m.idx + 3) * (1<<32 - s)
	den := 2 * s
	m.idx += (num + den - 1) / den // ≥ 1: num ≥ 3 since s < 2^32
}

// isqrt is ⌊√r⌋, exact: the float estimate is corrected in integers.
func isqrt(r uint64) uint64 {
	const maxRoot = 1<<32 - 1
	s := uint64(math.Sqrt(float64(r)))
	if s > maxRoot {
		s = maxRoot
	}
	for s*s > r {
		s--
	}
	for s < maxRoot && (s+1)*(s+1) <= r {
		s++
	}
	return s
}

// Set summarises a set of 32-byte hashes as the first Capacity coded
// symbols of its rateless IBLT. A node keeps one for its ledger, adding each
// entry's hash as it is stored, and hands a Snapshot to each session.
//
// A Set is not safe for concurrent use. Snapshot (under the
// caller's lock) gives a session a frozen view in O(1) that is safe to read
// from another goroutine while the set keeps changing: while any snapshot
// is live, the set leaves its symbols as they are and queues its updates,
// and the first update after the last Release applies the queue. A
// snapshot reads the symbols plus the updates queued when it was taken,
// folding them into a copy of just the prefix its session reads, which for
// two ledgers that nearly agree is a few hundred symbols.
type Set struct {
	chunks   [][]symbol // chunks[i] holds symbols [i·64, (i+1)·64); nil: all empty
	n        int64
	capacity int
	// pending are the updates made while snapshots were reading chunks,
	// in order; they are applied once none is.
	pending []change
	// readers counts the live snapshots that read chunks. While it is 0
	// no snapshot can, so an update writes in place. The set replaces it
	// when it stops sharing its chunks (fork).
	readers *atomic.Int64
	// view is set in a snapshot: what it reads instead of chunks.
	view *frozenView
}

// change is an Add (sign 1) or Remove (sign −1) of one item.
type change struct {
	sum   [4]uint64
	check uint64
	sign  int64
}

// maxPending bounds the updates queued behind live snapshots (48 bytes
// each). A peer that keeps sessions open back to back would otherwise grow
// the queue without end; past the bound the set forks (copies its symbols
// once) and writes its own copy in place again. The queue is applied by
// the update that finds no snapshot live, under the caller's lock: at
// about 1.3 µs an update, 4,096 keep that under ~6 ms.
const maxPending = 1 << 12

// frozenView is a snapshot's frozen state: the original set's chunks, which the
// original leaves alone while readers counts this snapshot, and the updates
// queued then, folded into syms, the prefix of symbols read so far.
type frozenView struct {
	chunks  [][]symbol
	pending []change
	walks   []mapping // walks[i]: pending[i]'s first index not yet in syms
	syms    []symbol
	readers *atomic.Int64 // nil once released
}

// NewSet returns an empty set keeping capacity coded symbols.
// Capacity ≤ 0 means DefaultCapacity; it is rounded up to a multiple
// of 64 and capped at MaxCapacity. Memory (48 bytes a symbol) is
// taken as symbols are first written.
func NewSet(capacity int) *Set {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	capacity = min(capacity, MaxCapacity)
	nchunks := (capacity + chunkSize - 1) >> chunkShift
	return &Set{
		chunks:   make([][]symbol, nchunks),
		capacity: nchunks << chunkShift,
		readers:  new(atomic.Int64),
	}
}

// Add puts hash h in the set. Adding a hash already present corrupts the
// summary (its count goes to 2): callers add each entry once.
func (s *Set) Add(h [32]byte) { s.update(&h, 1) }

// Remove takes hash h out of the set; h must have been added.
func (s *Set) Remove(h [32]byte) { s.update(&h, -1) }

// Len is the number of hashes in the set (adds minus removes).
func (s *Set) Len() int { return int(s.n) }

// Capacity is the number of coded symbols the set keeps: a session with it
// decodes at most about Capacity/1.4 differences.
func (s *Set) Capacity() int { return s.capacity }

// Snapshot returns a frozen view of the set for one session, to be
// released when the session ends; until then the set's later updates wait
// in a queue. The view costs O(1) now; its reads fold the queued updates
// into a copy of the prefix they reach. It is safe to read from another
// goroutine while s keeps changing, but is itself for one goroutine. A
// snapshot may be snapshotted in turn, or changed (it then copies all
// its symbols first), but not used at all after its Release.
func (s *Set) Snapshot() *Set {
	if v := s.view; v != nil {
		if v.readers != nil {
			v.readers.Add(1) // the chunks to keep are the original set's
		}
		return &Set{n: s.n, capacity: s.capacity, view: &frozenView{
			chunks: v.chunks, pending: v.pending, readers: v.readers,
		}}
	}
	if s.readers.Load() == 0 {
		s.flush()
	}
	s.readers.Add(1)
	p := s.pending[:len(s.pending):len(s.pending)] // later appends do not show
	return &Set{n: s.n, capacity: s.capacity, view: &frozenView{
		chunks: s.chunks, pending: p, readers: s.readers,
	}}
}

// Release ends a snapshot's claim on the symbols it shares with the set it
// came from; the snapshot must not be used after it. Releasing a set that
// is not a snapshot, or releasing twice, does nothing.
func (s *Set) Release() {
	if v := s.view; v != nil && v.readers != nil {
		v.readers.Add(-1)
		v.readers = nil
	}
}

// update adds (sign 1) or removes (sign −1) an item: in place if no
// snapshot reads the chunks, else to the queue.
func (s *Set) update(h *[32]byte, sign int64) {
	if s.view != nil {
		s.detach()
	}
	w := words(h)
	u := change{sum: w, check: checksum(&w), sign: sign}
	s.n += sign
	switch {
	case s.readers.Load() == 0:
		// The atomic load orders every read of a released snapshot
		// before the writes that follow here.
		s.flush()
		s.apply(&u)
	case len(s.pending) < maxPending:
		s.pending = append(s.pending, u)
	default:
		s.fork()
		s.apply(&u)
	}
}

// flush applies the queued updates; no snapshot may be reading the chunks.
func (s *Set) flush() {
	for i := range s.pending {
		s.apply(&s.pending[i])
	}
	s.pending = s.pending[:0]
}

// fork gives the set a copy of its chunks of its own, with the queue
// applied, and leaves the old chunks to the snapshots still reading them.
func (s *Set) fork() {
	own := make([][]symbol, len(s.chunks))
	for i, c := range s.chunks {
		if c != nil {
			own[i] = append([]symbol(nil), c...)
		}
	}
	queued := s.pending
	s.chunks, s.readers = own, new(atomic.Int64)
	s.pending = nil // the queue's array may be a snapshot's
	for i := range queued {
		s.apply(&queued[i])
	}
}

// apply writes an update into every symbol its item maps to.
func (s *Set) apply(u *change) {
	for m := newMapping(u.check); m.idx < uint64(s.capacity); m.next() {
		c := m.idx >> chunkShift
		if s.chunks[c] == nil {
			s.chunks[c] = make([]symbol, chunkSize)
		}
		sym := &s.chunks[c][m.idx&(chunkSize-1)]
		sym.xor(&u.sum, u.check)
		sym.count += u.sign
	}
}

// detach turns a snapshot that is about to change into a set of its own:
// every symbol read, the copy's own chunks, the original released.
func (s *Set) detach() {
	v := s.view
	own := make([][]symbol, len(v.chunks))
	for c := range own {
		own[c] = make([]symbol, chunkSize)
		for i := range own[c] {
			own[c][i] = s.symbol(c<<chunkShift + i)
		}
	}
	s.Release()
	s.chunks, s.readers, s.view = own, new(atomic.Int64), nil
}

// symbol returns coded symbol j (j < Capacity).
func (s *Set) symbol(j int) symbol {
	if v := s.view; v != nil {
		if j >= len(v.syms) {
			v.extend(j+1, s.capacity)
		}
		return v.syms[j]
	}
	if len(s.pending) > 0 && s.readers.Load() == 0 {
		s.flush()
	}
	sym := chunkSymbol(s.chunks, j)
	for i := range s.pending { // a live set read under live snapshots: rare
		u := &s.pending[i]
		m := newMapping(u.check)
		for m.idx < uint64(j) {
			m.next()
		}
		if m.idx == uint64(j) {
			sym.xor(&u.sum, u.check)
			sym.count += u.sign
		}
	}
	return sym
}

// chunkSymbol reads symbol j out of chunks.
func chunkSymbol(chunks [][]symbol, j int) symbol {
	c := chunks[j>>chunkShift]
	if c == nil {
		return symbol{}
	}
	return c[j&(chunkSize-1)]
}

// extend makes syms hold symbols [0, to) at least: it copies the next
// symbols (at least as many again as it holds, to fold the queue in few
// passes) and folds in the queued updates that map to them.
func (v *frozenView) extend(to, capacity int) {
	from := len(v.syms)
	to = min(max(to, 2*from, chunkSize), capacity)
	v.syms = slices.Grow(v.syms, to-from)[:to]
	for j := from; j < to; j++ {
		v.syms[j] = chunkSymbol(v.chunks, j)
	}
	if v.walks == nil && len(v.pending) > 0 {
		v.walks = make([]mapping, len(v.pending))
		for i := range v.pending {
			v.walks[i] = newMapping(v.pending[i].check)
		}
	}
	for i := range v.pending {
		u, m := &v.pending[i], &v.walks[i]
		for ; m.idx < uint64(to); m.next() {
			sym := &v.syms[m.idx]
			sym.xor(&u.sum, u.check)
			sym.count += u.sign
		}
	}
}
