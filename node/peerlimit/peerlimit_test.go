package peerlimit

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

var t0 = time.Unix(1_700_000_000, 0)

func TestRate(t *testing.T) {
	type step struct {
		at   time.Duration // after t0
		p    peer.ID
		n    int
		want bool
	}
	for _, tc := range []struct {
		name       string
		rate       float64
		burst, max int
		steps      []step
	}{
		{"a burst, then empty", 10, 3, 8, []step{
			{0, "a", 1, true}, {0, "a", 1, true}, {0, "a", 1, true}, {0, "a", 1, false},
		}},
		{"refills at the rate, up to the burst", 10, 3, 8, []step{
			{0, "a", 3, true}, {50 * time.Millisecond, "a", 1, false}, {100 * time.Millisecond, "a", 1, true},
			{time.Hour, "a", 3, true}, {time.Hour, "a", 1, false},
		}},
		{"several at once, all or none", 10, 5, 8, []step{
			{0, "a", 4, true}, {0, "a", 2, false}, {0, "a", 1, true}, {0, "a", 6, false},
		}},
		{"peers apart", 1, 1, 8, []step{
			{0, "a", 1, true}, {0, "a", 1, false}, {0, "b", 1, true}, {0, "b", 1, false},
		}},
		{"a clock that goes back adds nothing", 10, 1, 8, []step{
			{time.Second, "a", 1, true}, {0, "a", 1, false},
		}},
		{"an evicted peer starts full again", 1, 1, 2, []step{
			{0, "a", 1, true}, {0, "b", 1, true}, {0, "c", 1, true}, {0, "a", 1, true}, {0, "c", 1, false},
		}},
		{"no rate allows everything", 0, 1, 1, []step{
			{0, "a", 1000, true}, {0, "a", 1000, true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRate(tc.rate, tc.burst, tc.max)
			for i, s := range tc.steps {
				if got := r.AllowN(s.p, t0.Add(s.at), s.n); got != s.want {
					t.Fatalf("step %d (%v, %s, %d): allowed %v, want %v", i, s.at, s.p, s.n, got, s.want)
				}
			}
		})
	}
}

func TestRateTracksBoundedPeers(t *testing.T) {
	r := NewRate(1, 1, 100)
	for i := range 10_000 {
		r.Allow(peer.ID(fmt.Sprint(i)), t0)
	}
	if n := r.Peers(); n != 100 {
		t.Fatalf("tracks %d peers, want 100", n)
	}
}

func TestStreams(t *testing.T) {
	s := NewStreams(2)
	r1, ok1 := s.Acquire("a")
	r2, ok2 := s.Acquire("a")
	_, ok3 := s.Acquire("a")
	rb, okb := s.Acquire("b")
	if !ok1 || !ok2 || ok3 || !okb {
		t.Fatalf("acquired %v %v %v %v, want true true false true", ok1, ok2, ok3, okb)
	}
	r1()
	r1() // a second release counts nothing
	if n := s.Open("a"); n != 1 {
		t.Fatalf("a holds %d streams, want 1", n)
	}
	if _, ok := s.Acquire("a"); !ok {
		t.Fatal("a stream freed by a release was refused")
	}
	r2()
	rb()
	if n := len(s.open); n != 1 {
		t.Fatalf("tracks %d peers, want only a", n)
	}
}
