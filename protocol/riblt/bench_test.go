package riblt

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkSession times one session between two sets of N entries that
// differ by 100 (50 on each side), from the snapshots to both sides knowing
// the difference; building the sets is not timed. Sessions cycle through 8
// different differences so that the figures are averages.
func BenchmarkSession(b *testing.B) {
	for _, n := range []struct {
		name string
		n    int
	}{{"N=1e4", 1e4}, {"N=1e5", 1e5}, {"N=1e6", 1e6}} {
		b.Run(n.name, func(b *testing.B) {
			pairs := benchPairs(n.n-50, 50, 8)
			var bytes, trips, syms, sessions int
			for b.Loop() {
				p := pairs[sessions%len(pairs)]
				r := run(p.a.Snapshot(), p.b.Snapshot(), Config{})
				if r.err != nil {
					b.Fatal(r.err)
				}
				st := r.ini.Stats()
				bytes += st.BytesSent + st.BytesReceived
				trips += r.trips
				syms += st.SymbolsSent
				sessions++
			}
			b.ReportMetric(float64(bytes)/float64(sessions), "bytes/session")
			b.ReportMetric(float64(trips)/float64(sessions), "roundtrips/session")
			b.ReportMetric(float64(syms)/float64(sessions), "symbols/session")
		})
	}
}

// benchPairs returns k pairs of sets sharing the same `shared` entries,
// each side with `each` entries of its own (snapshots of one base pair).
func benchPairs(shared, each, k int) []*fixture {
	base := newFixture(1, 0, shared, 0, 0)
	rng := rand.New(rand.NewPCG(2, 3))
	pairs := make([]*fixture, k)
	for i := range pairs {
		p := &fixture{a: base.a.Snapshot(), b: base.b.Snapshot()}
		for j, h := range randHashes(rng, 2*each) {
			if j%2 == 0 {
				p.a.Add(h)
			} else {
				p.b.Add(h)
			}
		}
		pairs[i] = p
	}
	return pairs
}

// BenchmarkBuild times building a Set of 10^6 entries from
// scratch (what a node does once at start, reading its ledger).
func BenchmarkBuild(b *testing.B) {
	hs := randHashes(rand.New(rand.NewPCG(1, 1)), 1e6)
	for b.Loop() {
		s := NewSet(0)
		for _, h := range hs {
			s.Add(h)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ns/add")
}

// BenchmarkAdd times adding one entry to a live set: alone, and
// beside sessions, as a node does: a snapshot taken every 100 adds, its
// first 256 symbols read, and released 50 adds later.
func BenchmarkAdd(b *testing.B) {
	for _, every := range []int{0, 100} {
		b.Run(fmt.Sprintf("snapshotEvery=%d", every), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(2, 2))
			s := NewSet(0)
			for _, h := range randHashes(rng, 1e4) {
				s.Add(h)
			}
			hs := randHashes(rng, 1<<16)
			var snap *Set
			i := 0
			for b.Loop() {
				switch {
				case every == 0:
				case i%every == 0:
					snap = s.Snapshot()
					for j := range 256 {
						snap.symbol(j)
					}
				case i%every == every/2:
					snap.Release()
				}
				s.Add(hs[i%len(hs)]) // repeats past 2^16: same cost
				i++
			}
		})
	}
}
