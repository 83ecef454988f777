package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
)

// rcRandHashes returns n distinct pseudo-random hashes.
func rcRandHashes(rng *rand.Rand, n int) [][32]byte {
	hs := make([][32]byte, n)
	for i := range hs {
		for k := 0; k < 4; k++ {
			binary.LittleEndian.PutUint64(hs[i][8*k:], rng.Uint64())
		}
	}
	return hs
}

// rcFixture is two sets built from shared hashes plus hashes only one of
// them holds.
type rcFixture struct {
	a, b         *ReconcileSet
	onlyA, onlyB [][32]byte // sorted
}

// newRcFixture builds sets of `shared` common hashes, with dA hashes only in
// a and dB only in b.
func newRcFixture(seed uint64, capacity, shared, dA, dB int) *rcFixture {
	rng := rand.New(rand.NewPCG(seed, 0x6d697261))
	hs := rcRandHashes(rng, shared+dA+dB)
	f := &rcFixture{a: NewReconcileSet(capacity), b: NewReconcileSet(capacity)}
	for _, h := range hs[:shared] {
		f.a.Add(h)
		f.b.Add(h)
	}
	f.onlyA = slices.Clone(hs[shared : shared+dA])
	f.onlyB = slices.Clone(hs[shared+dA:])
	for _, h := range f.onlyA {
		f.a.Add(h)
	}
	for _, h := range f.onlyB {
		f.b.Add(h)
	}
	slices.SortFunc(f.onlyA, rcCompare)
	slices.SortFunc(f.onlyB, rcCompare)
	return f
}

// rcResult is the outcome of an in-memory session.
type rcResult struct {
	ini     *ReconcileInitiator
	res     *ReconcileResponder
	trips   int   // round trips: batches the responder answered
	err     error // the first side's error, with the side named
	peerErr error // what the other side made of its abort frame
}

// rcRun runs a session in memory between an initiator over a and a responder
// over b, delivering every frame, abort frames included.
func rcRun(a, b *ReconcileSet, cfg ReconcileConfig) rcResult {
	r := rcResult{ini: NewReconcileInitiator(a, cfg), res: NewReconcileResponder(b, cfg)}
	toRes := [][]byte{r.ini.Start()}
	for r.trips = 1; r.trips <= 64; r.trips++ {
		toIni, resDone, err := rcDeliver(r.res, toRes)
		if err != nil {
			r.err = fmt.Errorf("responder: %w", err)
			_, _, r.peerErr = rcDeliver(r.ini, toIni)
			return r
		}
		toRes = nil
		for k, f := range toIni {
			out, done, err := r.ini.Step(f)
			toRes = append(toRes, out...)
			if err != nil {
				r.err = fmt.Errorf("initiator: %w", err)
				_, _, r.peerErr = rcDeliver(r.res, toRes)
				return r
			}
			if done != (resDone && k == len(toIni)-1) {
				r.err = fmt.Errorf("initiator done=%v, responder done=%v", done, resDone)
				return r
			}
		}
		if resDone {
			return r
		}
	}
	r.err = errors.New("session did not end")
	return r
}

// rcStepper is either side of a session.
type rcStepper interface {
	Step([]byte) ([][]byte, bool, error)
}

// rcDeliver steps s with frames in order, collecting its answers.
func rcDeliver(s rcStepper, frames [][]byte) (out [][]byte, done bool, err error) {
	for _, f := range frames {
		o, d, err := s.Step(f)
		out = append(out, o...)
		done = done || d
		if err != nil {
			return out, done, err
		}
	}
	return out, done, nil
}

// check verifies that both sides of a finished session found the fixture's
// difference.
func (f *rcFixture) check(t *testing.T, r rcResult) {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	ini, res := r.ini, r.res
	rcEqual(t, "initiator missing", ini.Missing(), f.onlyB)
	rcEqual(t, "initiator extra", ini.Extra(), f.onlyA)
	rcEqual(t, "responder missing", res.Missing(), f.onlyA)
	rcEqual(t, "responder extra", res.Extra(), f.onlyB)
}

func rcEqual(t *testing.T, what string, got, want [][32]byte) {
	t.Helper()
	if len(got) != len(want) || !slices.Equal(got, want) {
		t.Errorf("%s: got %d hashes, want %d (equal=%v)", what, len(got), len(want), slices.Equal(got, want))
	}
}

func TestReconcileSizes(t *testing.T) {
	tests := []struct {
		name              string
		shared, dA, dB    int
		maxTrips, maxSyms int // expectations for the honest path
	}{
		{"empty vs empty", 0, 0, 0, 1, DefaultReconcileInitialSymbols},
		{"identical 1e4", 10000, 0, 0, 1, DefaultReconcileInitialSymbols},
		{"one side empty", 0, 0, 300, 3, 1000},
		{"other side empty", 0, 300, 0, 3, 1000},
		{"disjoint small", 0, 7, 9, 2, 100},
		{"d=1 N=1e4", 10000, 1, 0, 1, DefaultReconcileInitialSymbols},
		{"d=2 N=1e4", 10000, 1, 1, 1, DefaultReconcileInitialSymbols},
		{"d=10 N=1e4", 10000, 5, 5, 2, 100},
		{"d=100 N=1e4", 10000, 50, 50, 3, 400},
		{"d=100 one-sided N=1e4", 10000, 100, 0, 3, 400},
		{"d=1000 N=1e4", 10000, 500, 500, 3, 4000},
		{"d=100 N=1e5", 100000, 50, 50, 3, 400},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRcFixture(uint64(i), 0, tt.shared, tt.dA, tt.dB)
			r := rcRun(f.a.Snapshot(), f.b.Snapshot(), ReconcileConfig{})
			f.check(t, r)
			st := r.ini.Stats()
			if trips := r.trips; trips > tt.maxTrips || st.SymbolsSent > tt.maxSyms {
				t.Errorf("%d round trips, %d symbols; want ≤ %d, ≤ %d", trips, st.SymbolsSent, tt.maxTrips, tt.maxSyms)
			}
			rs := r.res.Stats()
			if st.BytesSent != rs.BytesReceived || st.BytesReceived != rs.BytesSent || st.SymbolsSent != rs.SymbolsReceived {
				t.Errorf("stats disagree: initiator %+v, responder %+v", st, rs)
			}
		})
	}
}

// TestReconcileSweep reconciles d = 1…1000 differences, split in various
// ways, on top of 10^4 shared entries (snapshots of one base pair of sets).
func TestReconcileSweep(t *testing.T) {
	base := newRcFixture(20, 0, 10000, 0, 0)
	rng := rand.New(rand.NewPCG(20, 20))
	for _, d := range []int{1, 2, 3, 4, 5, 7, 10, 15, 25, 40, 70, 150, 300, 600, 1000} {
		for _, split := range []int{0, d / 3, d} {
			hs := rcRandHashes(rng, d)
			f := &rcFixture{a: base.a.Snapshot(), b: base.b.Snapshot()}
			f.onlyA, f.onlyB = slices.Clone(hs[:split]), slices.Clone(hs[split:])
			for _, h := range f.onlyA {
				f.a.Add(h)
			}
			for _, h := range f.onlyB {
				f.b.Add(h)
			}
			slices.SortFunc(f.onlyA, rcCompare)
			slices.SortFunc(f.onlyB, rcCompare)
			r := rcRun(f.a, f.b, ReconcileConfig{})
			if r.err != nil {
				t.Fatalf("d=%d split=%d: %v", d, split, r.err)
			}
			f.check(t, r)
			if r.trips > 3 {
				t.Errorf("d=%d split=%d: %d round trips", d, split, r.trips)
			}
		}
	}
}

// TestReconcileRandomSets is a property test: random sets of random sizes
// and overlaps reconcile exactly, whichever side initiates.
func TestReconcileRandomSets(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 60 {
		shared, dA, dB := rng.IntN(3000), rng.IntN(200), rng.IntN(200)
		if i%5 == 0 {
			dA, dB = rng.IntN(4), rng.IntN(4)
		}
		f := newRcFixture(uint64(100+i), 1<<12, shared, dA, dB)
		r := rcRun(f.a, f.b, ReconcileConfig{InitialSymbols: 1 + rng.IntN(64)})
		if r.err != nil {
			t.Fatalf("shared=%d dA=%d dB=%d: %v", shared, dA, dB, r.err)
		}
		f.check(t, r)
	}
}

func TestReconcileDifferenceTooLarge(t *testing.T) {
	// 600 differences with 512 symbols allowed: the set sizes already say
	// it cannot decode, so the first answer is an abort.
	f := newRcFixture(1, 512, 100, 600, 0)
	r := rcRun(f.a, f.b, ReconcileConfig{})
	if !errors.Is(r.err, ErrDifferenceTooLarge) || r.trips != 1 {
		t.Fatalf("got %v after %d trips, want ErrDifferenceTooLarge after 1", r.err, r.trips)
	}
	// Balanced sizes: only running out of symbols tells.
	f = newRcFixture(2, 512, 100, 300, 300)
	r = rcRun(f.a, f.b, ReconcileConfig{})
	if !errors.Is(r.err, ErrDifferenceTooLarge) {
		t.Fatalf("got %v, want ErrDifferenceTooLarge", r.err)
	}
	// Far beyond: the estimate from the first frame already tells.
	f = newRcFixture(3, 512, 100, 1000, 1000)
	if r := rcRun(f.a, f.b, ReconcileConfig{}); !errors.Is(r.err, ErrDifferenceTooLarge) || r.trips != 1 {
		t.Fatalf("got %v after %d trips, want ErrDifferenceTooLarge after 1", r.err, r.trips)
	}
	// The initiator learns why from the abort frame.
	if !errors.Is(r.peerErr, ErrReconcileAborted) || !errors.Is(r.peerErr, ErrDifferenceTooLarge) {
		t.Errorf("initiator after abort: %v", r.peerErr)
	}
	if r.res.Missing() != nil || r.ini.Missing() != nil {
		t.Errorf("aborted session has a result")
	}
}

// TestReconcileRoundLimit feeds a responder symbols that never decode: it
// gives up after MaxRounds requests.
func TestReconcileRoundLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	res := NewReconcileResponder(NewReconcileSet(1<<12), ReconcileConfig{MaxRounds: 3})
	got := 8
	frame := rcGarbageSymbols(rng, 0, got)
	for requests := 0; ; requests++ {
		out, _, err := res.Step(frame)
		if err != nil {
			if !errors.Is(err, ErrDifferenceTooLarge) || requests != 3 {
				t.Fatalf("after %d requests: %v", requests, err)
			}
			return
		}
		m, err := rcDecode(out[0])
		if err != nil || m.kind != rcMsgRequest || m.from != uint64(got) {
			t.Fatalf("answer %v: %+v", err, m)
		}
		frame = rcGarbageSymbols(rng, got, int(m.to)-got)
		got = int(m.to)
	}
}

// TestReconcileAdversarialPeer answers every request with symbols that all
// look pure, so the responder recovers a fake item from each and walks it
// through the others: the session must still end in an error within its
// round cap, with bounded memory.
func TestReconcileAdversarialPeer(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	res := NewReconcileResponder(newRcFixture(4, 0, 1000, 0, 0).b, ReconcileConfig{})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, n := 0, DefaultReconcileInitialSymbols
	var err error
	for requests := 0; err == nil; requests++ {
		if requests > DefaultReconcileMaxRounds {
			t.Fatalf("still going after %d requests", requests)
		}
		var out [][]byte
		for _, f := range rcPureGarbage(rng, got, n) {
			if out, _, err = res.Step(f); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
		m, derr := rcDecode(out[0])
		if derr != nil || m.kind != rcMsgRequest {
			t.Fatalf("answer %v: %+v", derr, m)
		}
		got, n = int(m.from), int(m.to-m.from)
	}
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrReconcileProtocol) && !errors.Is(err, ErrDifferenceTooLarge) && !errors.Is(err, ErrReconcileLimit) {
		t.Errorf("ended with %v", err)
	}
	t.Logf("ended after %d symbols: %v (%d KiB)", got, err, (after.TotalAlloc-before.TotalAlloc)>>10)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("allocated %d MiB", alloc>>20)
	}
}

// rcPureGarbage encodes n symbols from index from, each a random item with
// count ±1 and its true checksum, in as many frames as they take.
func rcPureGarbage(rng *rand.Rand, from, n int) [][]byte {
	var frames [][]byte
	for n > 0 {
		k := min(n, 1000)
		m := rcMessage{kind: rcMsgSymbols, from: uint64(from), syms: make([]rcSymbol, k)}
		for i := range m.syms {
			s := &m.syms[i]
			s.sum = [4]uint64{rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64()}
			s.check = rcChecksum(&s.sum)
			s.count = int64(1 - 2*rng.IntN(2))
		}
		b, err := rcEncode(&m)
		if err != nil {
			panic(err)
		}
		frames = append(frames, b)
		from, n = from+k, n-k
	}
	return frames
}

// rcGarbageSymbols is a symbols frame of n random symbols from index from,
// with count 0 so that nothing ever peels.
func rcGarbageSymbols(rng *rand.Rand, from, n int) []byte {
	m := rcMessage{kind: rcMsgSymbols, from: uint64(from), syms: make([]rcSymbol, n)}
	for i := range m.syms {
		m.syms[i].sum = [4]uint64{rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64()}
		m.syms[i].check = rng.Uint64()
	}
	b, err := rcEncode(&m)
	if err != nil {
		panic(err)
	}
	return b
}

// TestReconcileSnapshot checks that a snapshot stays frozen while the set
// it came from changes, and that both decode against the right contents.
func TestReconcileSnapshot(t *testing.T) {
	f := newRcFixture(4, 1<<10, 2000, 20, 20)
	snap := f.a.Snapshot()
	extra := rcRandHashes(rand.New(rand.NewPCG(9, 9)), 50)
	for _, h := range extra {
		f.a.Add(h)
	}
	f.check(t, rcRun(snap, f.b, ReconcileConfig{}))

	// The live set has the 50 new hashes on top.
	f.onlyA = append(f.onlyA, extra...)
	slices.SortFunc(f.onlyA, rcCompare)
	f.check(t, rcRun(f.a, f.b, ReconcileConfig{}))

	// Removing them restores the snapshot's symbols exactly.
	for _, h := range extra {
		f.a.Remove(h)
	}
	for j := range f.a.Capacity() {
		if f.a.symbol(j) != snap.symbol(j) {
			t.Fatalf("symbol %d differs after add+remove", j)
		}
	}
	if f.a.Len() != snap.Len() {
		t.Errorf("Len %d, snapshot %d", f.a.Len(), snap.Len())
	}
}

// TestReconcileSnapshotRelease checks that updates under live snapshots
// wait in the queue, leaving the symbols the snapshots read alone, and that
// the first update after the last Release applies the queue in place.
func TestReconcileSnapshotRelease(t *testing.T) {
	f := newRcFixture(4, 1<<10, 2000, 20, 20)
	h := rcRandHashes(rand.New(rand.NewPCG(7, 7)), 2)
	first, second := f.a.Snapshot(), f.a.Snapshot()
	chunk := &f.a.chunks[0][0]
	before := slices.Clone(f.a.chunks[0])
	f.a.Add(h[0])
	if !slices.Equal(f.a.chunks[0], before) || len(f.a.pending) != 1 {
		t.Fatal("an Add under live snapshots wrote the symbols they read")
	}
	if first.symbol(0) != second.symbol(0) || first.Len() != f.a.Len()-1 {
		t.Fatal("a snapshot changed with the set")
	}
	first.Release()
	first.Release()         // twice: still one release
	third := f.a.Snapshot() // sees h[0], from the queue
	f.a.Add(h[1])
	if len(f.a.pending) != 2 {
		t.Fatalf("%d updates queued with one snapshot still live, want 2", len(f.a.pending))
	}
	if got, want := third.symbol(0).count, int64(f.a.Len()-1); got != want || third.Len() != f.a.Len()-1 {
		t.Fatalf("third snapshot: symbol 0 holds %d, Len %d; want %d", got, third.Len(), want)
	}
	if got, want := second.symbol(0).count, int64(f.a.Len()-2); got != want {
		t.Fatalf("second snapshot: symbol 0 holds %d, want %d", got, want)
	}
	second.Release()
	third.Release()
	if got := f.a.readers.Load(); got != 0 {
		t.Fatalf("live snapshots = %d after releasing all", got)
	}
	f.a.Remove(h[1])
	if len(f.a.pending) != 0 || &f.a.chunks[0][0] != chunk {
		t.Fatal("the first update with every snapshot released did not apply the queue in place")
	}
	if got := f.a.symbol(0).count; got != int64(f.a.Len()) {
		t.Fatalf("symbol 0 holds %d, set has %d", got, f.a.Len())
	}
}

// TestReconcileSnapshotFork checks that the queue behind a snapshot that
// is never released stays bounded: the set forks its own copy of the
// symbols, which then matches a set that never had a snapshot, while the
// snapshot still reads what it was given.
func TestReconcileSnapshotFork(t *testing.T) {
	f := newRcFixture(4, 1<<10, 2000, 20, 20)
	ref := newRcFixture(4, 1<<10, 2000, 20, 20).a
	snap := f.a.Snapshot()
	want := make([]rcSymbol, snap.Capacity())
	for j := range want {
		want[j] = snap.symbol(j)
	}
	for _, h := range rcRandHashes(rand.New(rand.NewPCG(3, 3)), rcMaxPending+100) {
		f.a.Add(h)
		ref.Add(h)
	}
	if len(f.a.pending) >= rcMaxPending {
		t.Fatalf("%d updates queued behind one snapshot", len(f.a.pending))
	}
	for j := range want {
		if f.a.symbol(j) != ref.symbol(j) {
			t.Fatalf("after the fork, symbol %d differs from a set that never had a snapshot", j)
		}
	}
	fresh := f.a.Snapshot() // of the fork: its own readers
	for j := range want {
		if snap.symbol(j) != want[j] {
			t.Fatalf("the snapshot's symbol %d changed with the fork", j)
		}
	}
	snap.Release()
	if fresh.symbol(0).count != int64(ref.Len()) || f.a.readers.Load() != 1 {
		t.Fatal("the fork's snapshot does not hold the fork's items")
	}
	fresh.Release()
}

// TestReconcileSnapshotOfSnapshot checks that a snapshot of a snapshot
// stays frozen after the first is released, and that writing to a
// released snapshot leaves the set it came from alone.
func TestReconcileSnapshotOfSnapshot(t *testing.T) {
	f := newRcFixture(4, 1<<10, 2000, 20, 20)
	h := rcRandHashes(rand.New(rand.NewPCG(6, 6)), 2)
	first := f.a.Snapshot()
	second := first.Snapshot()
	want := second.symbol(0)
	first.Release()
	f.a.Add(h[0])
	if second.symbol(0) != want {
		t.Fatal("a snapshot of a released snapshot changed with the set")
	}
	second.Release()

	snap := f.a.Snapshot()
	snap.Release()
	want = f.a.symbol(0)
	snap.Add(h[1]) // misuse: the snapshot is released
	if f.a.symbol(0) != want {
		t.Fatal("a write to a released snapshot changed the set it came from")
	}
}

// TestReconcileSnapshotConcurrent runs a session on a snapshot while the
// live set keeps changing in another goroutine, as a node does: under -race
// it shows that the two share no mutable state, also when the set forks or
// goes on writing in place after the snapshot is released.
func TestReconcileSnapshotConcurrent(t *testing.T) {
	f := newRcFixture(8, 1<<12, 1000, 30, 30)
	snap := f.a.Snapshot()
	// Past rcMaxPending: the set forks while the session may still run.
	more := rcRandHashes(rand.New(rand.NewPCG(8, 8)), rcMaxPending+5000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, h := range more {
			f.a.Add(h)
		}
	}()
	r := rcRun(snap, f.b, ReconcileConfig{})
	snap.Release()
	<-done
	f.check(t, r)
}

// TestReconcileMapping checks that an item lands in symbol j with
// probability close to 1/(1+j/2), the density decoding relies on, and that
// the index sequence is pinned (peers on any platform must agree).
func TestReconcileMapping(t *testing.T) {
	const n, span = 20000, 1024
	hits := make([]int, span)
	for _, h := range rcRandHashes(rand.New(rand.NewPCG(5, 5)), n) {
		w := rcWords(&h)
		for m := newRcMapping(rcChecksum(&w)); m.idx < span; m.next() {
			hits[m.idx]++
		}
	}
	for _, j := range []int{0, 2, 10, 100, 500} {
		got, want := float64(hits[j])/n, 2/float64(j+2)
		if got < want*0.85 || got > want*1.15 {
			t.Errorf("symbol %d hit with p=%.4f, want ≈%.4f", j, got, want)
		}
	}

	var idx []uint64
	w := [4]uint64{1, 2, 3, 4}
	for m := newRcMapping(rcChecksum(&w)); m.idx < 1<<20; m.next() {
		idx = append(idx, m.idx)
	}
	want := "[0 1 3 5 7 25 36 37 48 74 78 126 171 248 1870 3639 3901 7837 9903 16031 40645 44587 65491 67507 120314 153954 391571 1010974]"
	if got := fmt.Sprint(idx); got != want {
		t.Errorf("index sequence changed:\n got %s\nwant %s", got, want)
	}
}

func TestReconcileIsqrt(t *testing.T) {
	for _, r := range []uint64{0, 1, 2, 3, 4, 15, 16, 17, 1<<32 - 1, 1 << 32, 1<<52 + 1, 1<<53 - 1, 1<<62 + 12345, 1<<64 - 1} {
		s := rcIsqrt(r)
		hi := s + 1
		if s*s > r || (hi < 1<<32 && hi*hi <= r) {
			t.Errorf("isqrt(%d) = %d", r, s)
		}
	}
}

func TestReconcileWireRoundTrip(t *testing.T) {
	h := func(b byte) [32]byte { return [32]byte{b} }
	msgs := []rcMessage{
		{kind: rcMsgSymbols, from: 7, syms: []rcSymbol{{sum: [4]uint64{1, 2, 3, 4}, check: 5, count: -6}, {count: 1 << 40}}},
		{kind: rcMsgRequest, from: 32, to: 200},
		{kind: rcMsgDiff, last: true, have: [][32]byte{h(1), h(2)}, want: [][32]byte{h(0)}},
		{kind: rcMsgDiff},
		{kind: rcMsgAbort, reason: rcReasonLimit},
	}
	for _, m := range msgs {
		b, err := rcEncode(&m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := rcDecode(b)
		if err != nil {
			t.Fatalf("decode %x: %v", b, err)
		}
		b2, _ := rcEncode(&got)
		if !bytes.Equal(b, b2) {
			t.Errorf("round trip: %x → %x", b, b2)
		}
	}
}

func TestReconcileWireRejects(t *testing.T) {
	hash := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := map[string][]byte{
		"empty":                {},
		"unknown type":         {9},
		"request truncated":    {rcMsgRequest, 1},
		"request empty range":  {rcMsgRequest, 5, 5},
		"request past max":     cat([]byte{rcMsgRequest, 0}, binary.AppendUvarint(nil, MaxReconcileCapacity+1)),
		"non-minimal uvarint":  {rcMsgRequest, 0x80, 0x00, 1},
		"trailing byte":        {rcMsgRequest, 0, 1, 0},
		"symbols none":         {rcMsgSymbols, 0, 0},
		"symbols from wraps":   cat([]byte{rcMsgSymbols}, binary.AppendUvarint(nil, 1<<64-1), []byte{1}, hash(0), make([]byte, 9)),
		"symbols count > body": {rcMsgSymbols, 0, 2, 1},
		"symbols truncated":    cat([]byte{rcMsgSymbols, 0, 1}, hash(0), []byte{1, 2}),
		"diff bad flags":       {rcMsgDiff, 2, 0, 0},
		"diff unsorted":        cat([]byte{rcMsgDiff, 1, 2}, hash(2), hash(1), []byte{0}),
		"diff duplicate":       cat([]byte{rcMsgDiff, 1, 2}, hash(1), hash(1), []byte{0}),
		"abort bad reason":     {rcMsgAbort, 0},
		"oversized":            make([]byte, ReconcileMaxFrame+1),
	}
	for name, b := range tests {
		if _, err := rcDecode(b); !errors.Is(err, ErrReconcileFrame) {
			t.Errorf("%s: got %v, want ErrReconcileFrame", name, err)
		}
	}
	big := rcMessage{kind: rcMsgDiff, have: make([][32]byte, rcHashesPerFrame+1)}
	if _, err := rcEncode(&big); !errors.Is(err, ErrReconcileFrame) {
		t.Errorf("encode oversized diff: %v", err)
	}
}

// TestReconcileProtocolErrors feeds each side well-formed frames out of
// turn.
func TestReconcileProtocolErrors(t *testing.T) {
	enc := func(m rcMessage) []byte { b, _ := rcEncode(&m); return b }
	set := newRcFixture(6, 1<<10, 100, 3, 3).a
	ini := NewReconcileInitiator(set, ReconcileConfig{})
	if _, _, err := ini.Step(enc(rcMessage{kind: rcMsgRequest, from: 32, to: 40})); !errors.Is(err, ErrReconcileProtocol) {
		t.Errorf("Step before Start: %v", err)
	}
	ini.Start()
	if ini.Start() != nil {
		t.Error("second Start returned a frame")
	}
	out, _, err := ini.Step(enc(rcMessage{kind: rcMsgRequest, from: 31, to: 40}))
	if !errors.Is(err, ErrReconcileProtocol) || len(out) != 1 {
		t.Errorf("request with a gap: %v, %d frames", err, len(out))
	}
	if _, _, err2 := ini.Step(enc(rcMessage{kind: rcMsgRequest, from: 32, to: 40})); err2 != err {
		t.Errorf("error not sticky: %v", err2)
	}

	ini = NewReconcileInitiator(set, ReconcileConfig{InitialSymbols: 2})
	ini.Start()
	tooMany := enc(rcMessage{kind: rcMsgDiff, last: true, have: [][32]byte{{1}, {2}, {3}}})
	if _, _, err := ini.Step(tooMany); !errors.Is(err, ErrReconcileProtocol) {
		t.Errorf("diff larger than symbols sent: %v", err)
	}

	res := NewReconcileResponder(set, ReconcileConfig{})
	if _, _, err := res.Step(enc(rcMessage{kind: rcMsgSymbols, from: 1, syms: make([]rcSymbol, 1)})); !errors.Is(err, ErrReconcileProtocol) {
		t.Errorf("symbols not from 0: %v", err)
	}
	res = NewReconcileResponder(set, ReconcileConfig{})
	if _, _, err := res.Step(enc(rcMessage{kind: rcMsgRequest, from: 0, to: 1})); !errors.Is(err, ErrReconcileProtocol) {
		t.Errorf("request to the responder: %v", err)
	}
}
