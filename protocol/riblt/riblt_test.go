package riblt

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

// randHashes returns n distinct pseudo-random hashes.
func randHashes(rng *rand.Rand, n int) [][32]byte {
	hs := make([][32]byte, n)
	for i := range hs {
		for k := 0; k < 4; k++ {
			binary.LittleEndian.PutUint64(hs[i][8*k:], rng.Uint64())
		}
	}
	return hs
}

// fixture is two sets built from shared hashes plus hashes only one of
// them holds.
type fixture struct {
	a, b         *Set
	onlyA, onlyB [][32]byte // sorted
}

// newFixture builds sets of `shared` common hashes, with dA hashes only in
// a and dB only in b.
func newFixture(seed uint64, capacity, shared, dA, dB int) *fixture {
	rng := rand.New(rand.NewPCG(seed, 0x6d697261))
	hs := randHashes(rng, shared+dA+dB)
	f := &fixture{a: NewSet(capacity), b: NewSet(capacity)}
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
	slices.SortFunc(f.onlyA, compareHashes)
	slices.SortFunc(f.onlyB, compareHashes)
	return f
}

// result is the outcome of an in-memory session.
type result struct {
	ini     *Initiator
	res     *Responder
	trips   int   // round trips: batches the responder answered
	err     error // the first side's error, with the side named
	peerErr error // what the other side made of its abort frame
}

// run runs a session in memory between an initiator over a and a responder
// over b, delivering every frame, abort frames included.
func run(a, b *Set, cfg Config) result {
	r := result{ini: NewInitiator(a, cfg), res: NewResponder(b, cfg)}
	toRes := [][]byte{r.ini.Start()}
	for r.trips = 1; r.trips <= 64; r.trips++ {
		toIni, resDone, err := deliver(r.res, toRes)
		if err != nil {
			r.err = fmt.Errorf("responder: %w", err)
			_, _, r.peerErr = deliver(r.ini, toIni)
			return r
		}
		toRes = nil
		for k, f := range toIni {
			out, done, err := r.ini.Step(f)
			toRes = append(toRes, out...)
			if err != nil {
				r.err = fmt.Errorf("initiator: %w", err)
				_, _, r.peerErr = deliver(r.res, toRes)
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

// stepper is either side of a session.
type stepper interface {
	Step([]byte) ([][]byte, bool, error)
}

// deliver steps s with frames in order, collecting its answers.
func deliver(s stepper, frames [][]byte) (out [][]byte, done bool, err error) {
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
func (f *fixture) check(t *testing.T, r result) {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	ini, res := r.ini, r.res
	equalHashes(t, "initiator missing", ini.Missing(), f.onlyB)
	equalHashes(t, "initiator extra", ini.Extra(), f.onlyA)
	equalHashes(t, "responder missing", res.Missing(), f.onlyA)
	equalHashes(t, "responder extra", res.Extra(), f.onlyB)
}

func equalHashes(t *testing.T, what string, got, want [][32]byte) {
	t.Helper()
	if len(got) != len(want) || !slices.Equal(got, want) {
		t.Errorf("%s: got %d hashes, want %d (equal=%v)", what, len(got), len(want), slices.Equal(got, want))
	}
}

func TestSizes(t *testing.T) {
	tests := []struct {
		name              string
		shared, dA, dB    int
		maxTrips, maxSyms int // expectations for the honest path
	}{
		{"empty vs empty", 0, 0, 0, 1, DefaultInitialSymbols},
		{"identical 1e4", 10000, 0, 0, 1, DefaultInitialSymbols},
		{"one side empty", 0, 0, 300, 3, 1000},
		{"other side empty", 0, 300, 0, 3, 1000},
		{"disjoint small", 0, 7, 9, 2, 100},
		{"d=1 N=1e4", 10000, 1, 0, 1, DefaultInitialSymbols},
		{"d=2 N=1e4", 10000, 1, 1, 1, DefaultInitialSymbols},
		{"d=10 N=1e4", 10000, 5, 5, 2, 100},
		{"d=100 N=1e4", 10000, 50, 50, 3, 400},
		{"d=100 one-sided N=1e4", 10000, 100, 0, 3, 400},
		{"d=1000 N=1e4", 10000, 500, 500, 3, 4000},
		{"d=100 N=1e5", 100000, 50, 50, 3, 400},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(uint64(i), 0, tt.shared, tt.dA, tt.dB)
			r := run(f.a.Snapshot(), f.b.Snapshot(), Config{})
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

// TestSweep reconciles d = 1…1000 differences, split in various
// ways, on top of 10^4 shared entries (snapshots of one base pair of sets).
func TestSweep(t *testing.T) {
	base := newFixture(20, 0, 10000, 0, 0)
	rng := rand.New(rand.NewPCG(20, 20))
	for _, d := range []int{1, 2, 3, 4, 5, 7, 10, 15, 25, 40, 70, 150, 300, 600, 1000} {
		for _, split := range []int{0, d / 3, d} {
			hs := randHashes(rng, d)
			f := &fixture{a: base.a.Snapshot(), b: base.b.Snapshot()}
			f.onlyA, f.onlyB = slices.Clone(hs[:split]), slices.Clone(hs[split:])
			for _, h := range f.onlyA {
				f.a.Add(h)
			}
			for _, h := range f.onlyB {
				f.b.Add(h)
			}
			slices.SortFunc(f.onlyA, compareHashes)
			slices.SortFunc(f.onlyB, compareHashes)
			r := run(f.a, f.b, Config{})
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

// TestRandomSets is a property test: random sets of random sizes
// and overlaps reconcile exactly, whichever side initiates.
func TestRandomSets(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 60 {
		shared, dA, dB := rng.IntN(3000), rng.IntN(200), rng.IntN(200)
		if i%5 == 0 {
			dA, dB = rng.IntN(4), rng.IntN(4)
		}
		f := newFixture(uint64(100+i), 1<<12, shared, dA, dB)
		r := run(f.a, f.b, Config{InitialSymbols: 1 + rng.IntN(64)})
		if r.err != nil {
			t.Fatalf("shared=%d dA=%d dB=%d: %v", shared, dA, dB, r.err)
		}
		f.check(t, r)
	}
}

func TestDifferenceTooLarge(t *testing.T) {
	// 600 differences with 512 symbols allowed: the set sizes already say
	// it cannot decode, so the first answer is an abort.
	f := newFixture(1, 512, 100, 600, 0)
	r := run(f.a, f.b, Config{})
	if !errors.Is(r.err, ErrDifferenceTooLarge) || r.trips != 1 {
		t.Fatalf("got %v after %d trips, want ErrDifferenceTooLarge after 1", r.err, r.trips)
	}
	// Balanced sizes: only running out of symbols tells.
	f = newFixture(2, 512, 100, 300, 300)
	r = run(f.a, f.b, Config{})
	if !errors.Is(r.err, ErrDifferenceTooLarge) {
		t.Fatalf("got %v, want ErrDifferenceTooLarge", r.err)
	}
	// Far beyond: the estimate from the first frame already tells.
	f = newFixture(3, 512, 100, 1000, 1000)
	if r := run(f.a, f.b, Config{}); !errors.Is(r.err, ErrDifferenceTooLarge) || r.trips != 1 {
		t.Fatalf("got %v after %d trips, want ErrDifferenceTooLarge after 1", r.err, r.trips)
	}
	// The initiator learns why from the abort frame.
	if !errors.Is(r.peerErr, ErrAborted) || !errors.Is(r.peerErr, ErrDifferenceTooLarge) {
		t.Errorf("initiator after abort: %v", r.peerErr)
	}
	if r.res.Missing() != nil || r.ini.Missing() != nil {
		t.Errorf("aborted session has a result")
	}
}

// TestRoundLimit feeds a responder symbols that never decode: it
// gives up after MaxRounds requests.
func TestRoundLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	res := NewResponder(NewSet(1<<12), Config{MaxRounds: 3})
	got := 8
	frame := garbageSymbols(rng, 0, got)
	for requests := 0; ; requests++ {
		out, _, err := res.Step(frame)
		if err != nil {
			if !errors.Is(err, ErrDifferenceTooLarge) || requests != 3 {
				t.Fatalf("after %d requests: %v", requests, err)
			}
			return
		}
		m, err := decodeFrame(out[0])
		if err != nil || m.kind != msgRequest || m.from != uint64(got) {
			t.Fatalf("answer %v: %+v", err, m)
		}
		frame = garbageSymbols(rng, got, int(m.to)-got)
		got = int(m.to)
	}
}

// TestAdversarialPeer answers every request with symbols that all
// look pure, so the responder recovers a fake item from each and walks it
// through the others: the session must still end in an error within its
// round cap, with bounded memory.
func TestAdversarialPeer(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	res := NewResponder(newFixture(4, 0, 1000, 0, 0).b, Config{})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, n := 0, DefaultInitialSymbols
	var err error
	for requests := 0; err == nil; requests++ {
		if requests > DefaultMaxRounds {
			t.Fatalf("still going after %d requests", requests)
		}
		var out [][]byte
		for _, f := range pureGarbage(rng, got, n) {
			if out, _, err = res.Step(f); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
		m, derr := decodeFrame(out[0])
		if derr != nil || m.kind != msgRequest {
			t.Fatalf("answer %v: %+v", derr, m)
		}
		got, n = int(m.from), int(m.to-m.from)
	}
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrDifferenceTooLarge) && !errors.Is(err, ErrLimit) {
		t.Errorf("ended with %v", err)
	}
	t.Logf("ended after %d symbols: %v (%d KiB)", got, err, (after.TotalAlloc-before.TotalAlloc)>>10)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("allocated %d MiB", alloc>>20)
	}
}

// pureGarbage encodes n symbols from index from, each a random item with
// count ±1 and its true checksum, in as many frames as they take.
func pureGarbage(rng *rand.Rand, from, n int) [][]byte {
	var frames [][]byte
	for n > 0 {
		k := min(n, 1000)
		m := message{kind: msgSymbols, from: uint64(from), syms: make([]symbol, k)}
		for i := range m.syms {
			s := &m.syms[i]
			s.sum = [4]uint64{rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64()}
			s.check = checksum(&s.sum)
			s.count = int64(1 - 2*rng.IntN(2))
		}
		b, err := encodeFrame(&m)
		if err != nil {
			panic(err)
		}
		frames = append(frames, b)
		from, n = from+k, n-k
	}
	return frames
}

// garbageSymbols is a symbols frame of n random symbols from index from,
// with count 0 so that nothing ever peels.
func garbageSymbols(rng *rand.Rand, from, n int) []byte {
	m := message{kind: msgSymbols, from: uint64(from), syms: make([]symbol, n)}
	for i := range m.syms {
		m.syms[i].sum = [4]uint64{rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64()}
		m.syms[i].check = rng.Uint64()
	}
	b, err := encodeFrame(&m)
	if err != nil {
		panic(err)
	}
	return b
}

// TestSnapshot checks that a snapshot stays frozen while the set
// it came from changes, and that both decode against the right contents.
func TestSnapshot(t *testing.T) {
	f := newFixture(4, 1<<10, 2000, 20, 20)
	snap := f.a.Snapshot()
	extra := randHashes(rand.New(rand.NewPCG(9, 9)), 50)
	for _, h := range extra {
		f.a.Add(h)
	}
	f.check(t, run(snap, f.b, Config{}))

	// The live set has the 50 new hashes on top.
	f.onlyA = append(f.onlyA, extra...)
	slices.SortFunc(f.onlyA, compareHashes)
	f.check(t, run(f.a, f.b, Config{}))

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

// TestSnapshotRelease checks that updates under live snapshots
// wait in the queue, leaving the symbols the snapshots read alone, and that
// the first update after the last Release applies the queue in place.
func TestSnapshotRelease(t *testing.T) {
	f := newFixture(4, 1<<10, 2000, 20, 20)
	h := randHashes(rand.New(rand.NewPCG(7, 7)), 2)
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

// TestSnapshotFork checks that the queue behind a snapshot that
// is never released stays bounded: the set forks its own copy of the
// symbols, which then matches a set that never had a snapshot, while the
// snapshot still reads what it was given.
func TestSnapshotFork(t *testing.T) {
	f := newFixture(4, 1<<10, 2000, 20, 20)
	ref := newFixture(4, 1<<10, 2000, 20, 20).a
	snap := f.a.Snapshot()
	want := make([]symbol, snap.Capacity())
	for j := range want {
		want[j] = snap.symbol(j)
	}
	for _, h := range randHashes(rand.New(rand.NewPCG(3, 3)), maxPending+100) {
		f.a.Add(h)
		ref.Add(h)
	}
	if len(f.a.pending) >= maxPending {
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

// TestSnapshotOfSnapshot checks that a snapshot of a snapshot
// stays frozen after the first is released, and that writing to a
// released snapshot leaves the set it came from alone.
func TestSnapshotOfSnapshot(t *testing.T) {
	f := newFixture(4, 1<<10, 2000, 20, 20)
	h := randHashes(rand.New(rand.NewPCG(6, 6)), 2)
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

// TestSnapshotConcurrent runs a session on a snapshot while the
// live set keeps changing in another goroutine, as a node does: under -race
// it shows that the two share no mutable state, also when the set forks or
// goes on writing in place after the snapshot is released.
func TestSnapshotConcurrent(t *testing.T) {
	f := newFixture(8, 1<<12, 1000, 30, 30)
	snap := f.a.Snapshot()
	// Past maxPending: the set forks while the session may still run.
	more := randHashes(rand.New(rand.NewPCG(8, 8)), maxPending+5000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, h := range more {
			f.a.Add(h)
		}
	}()
	r := run(snap, f.b, Config{})
	snap.Release()
	<-done
	f.check(t, r)
}

// TestMapping checks that an item lands in symbol j with
// probability close to 1/(1+j/2), the density decoding relies on, and that
// the index sequence is pinned (peers on any platform must agree).
func TestMapping(t *testing.T) {
	const n, span = 20000, 1024
	hits := make([]int, span)
	for _, h := range randHashes(rand.New(rand.NewPCG(5, 5)), n) {
		w := words(&h)
		for m := newMapping(checksum(&w)); m.idx < span; m.next() {
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
	for m := newMapping(checksum(&w)); m.idx < 1<<20; m.next() {
		idx = append(idx, m.idx)
	}
	want := "[0 1 3 5 7 25 36 37 48 74 78 126 171 248 1870 3639 3901 7837 9903 16031 40645 44587 65491 67507 120314 153954 391571 1010974]"
	if got := fmt.Sprint(idx); got != want {
		t.Errorf("index sequence changed:\n got %s\nwant %s", got, want)
	}
}

func TestIsqrt(t *testing.T) {
	for _, r := range []uint64{0, 1, 2, 3, 4, 15, 16, 17, 1<<32 - 1, 1 << 32, 1<<52 + 1, 1<<53 - 1, 1<<62 + 12345, 1<<64 - 1} {
		s := isqrt(r)
		hi := s + 1
		if s*s > r || (hi < 1<<32 && hi*hi <= r) {
			t.Errorf("isqrt(%d) = %d", r, s)
		}
	}
}

func TestWireRoundTrip(t *testing.T) {
	h := func(b byte) [32]byte { return [32]byte{b} }
	msgs := []message{
		{kind: msgSymbols, from: 7, syms: []symbol{{sum: [4]uint64{1, 2, 3, 4}, check: 5, count: -6}, {count: 1 << 40}}},
		{kind: msgRequest, from: 32, to: 200},
		{kind: msgDiff, last: true, have: [][32]byte{h(1), h(2)}, want: [][32]byte{h(0)}},
		{kind: msgDiff},
		{kind: msgAbort, reason: reasonLimit},
	}
	for _, m := range msgs {
		b, err := encodeFrame(&m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeFrame(b)
		if err != nil {
			t.Fatalf("decode %x: %v", b, err)
		}
		b2, _ := encodeFrame(&got)
		if !bytes.Equal(b, b2) {
			t.Errorf("round trip: %x → %x", b, b2)
		}
	}
}

func TestWireRejects(t *testing.T) {
	hash := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := map[string][]byte{
		"empty":                {},
		"unknown type":         {9},
		"request truncated":    {msgRequest, 1},
		"request empty range":  {msgRequest, 5, 5},
		"request past max":     cat([]byte{msgRequest, 0}, binary.AppendUvarint(nil, MaxCapacity+1)),
		"non-minimal uvarint":  {msgRequest, 0x80, 0x00, 1},
		"trailing byte":        {msgRequest, 0, 1, 0},
		"symbols none":         {msgSymbols, 0, 0},
		"symbols from wraps":   cat([]byte{msgSymbols}, binary.AppendUvarint(nil, 1<<64-1), []byte{1}, hash(0), make([]byte, 9)),
		"symbols count > body": {msgSymbols, 0, 2, 1},
		"symbols truncated":    cat([]byte{msgSymbols, 0, 1}, hash(0), []byte{1, 2}),
		"diff bad flags":       {msgDiff, 2, 0, 0},
		"diff unsorted":        cat([]byte{msgDiff, 1, 2}, hash(2), hash(1), []byte{0}),
		"diff duplicate":       cat([]byte{msgDiff, 1, 2}, hash(1), hash(1), []byte{0}),
		"abort bad reason":     {msgAbort, 0},
		"oversized":            make([]byte, MaxFrame+1),
	}
	for name, b := range tests {
		if _, err := decodeFrame(b); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: got %v, want ErrFrame", name, err)
		}
	}
	big := message{kind: msgDiff, have: make([][32]byte, hashesPerFrame+1)}
	if _, err := encodeFrame(&big); !errors.Is(err, ErrFrame) {
		t.Errorf("encode oversized diff: %v", err)
	}
}

// TestProtocolErrors feeds each side well-formed frames out of
// turn.
func TestProtocolErrors(t *testing.T) {
	enc := func(m message) []byte { b, _ := encodeFrame(&m); return b }
	set := newFixture(6, 1<<10, 100, 3, 3).a
	ini := NewInitiator(set, Config{})
	if _, _, err := ini.Step(enc(message{kind: msgRequest, from: 32, to: 40})); !errors.Is(err, ErrProtocol) {
		t.Errorf("Step before Start: %v", err)
	}
	ini.Start()
	if ini.Start() != nil {
		t.Error("second Start returned a frame")
	}
	out, _, err := ini.Step(enc(message{kind: msgRequest, from: 31, to: 40}))
	if !errors.Is(err, ErrProtocol) || len(out) != 1 {
		t.Errorf("request with a gap: %v, %d frames", err, len(out))
	}
	if _, _, err2 := ini.Step(enc(message{kind: msgRequest, from: 32, to: 40})); err2 != err {
		t.Errorf("error not sticky: %v", err2)
	}

	ini = NewInitiator(set, Config{InitialSymbols: 2})
	ini.Start()
	tooMany := enc(message{kind: msgDiff, last: true, have: [][32]byte{{1}, {2}, {3}}})
	if _, _, err := ini.Step(tooMany); !errors.Is(err, ErrProtocol) {
		t.Errorf("diff larger than symbols sent: %v", err)
	}

	res := NewResponder(set, Config{})
	if _, _, err := res.Step(enc(message{kind: msgSymbols, from: 1, syms: make([]symbol, 1)})); !errors.Is(err, ErrProtocol) {
		t.Errorf("symbols not from 0: %v", err)
	}
	res = NewResponder(set, Config{})
	if _, _, err := res.Step(enc(message{kind: msgRequest, from: 0, to: 1})); !errors.Is(err, ErrProtocol) {
		t.Errorf("request to the responder: %v", err)
	}
}
