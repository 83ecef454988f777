// Package peerlimit bounds what one peer may make a node do: how fast it
// may send (a token bucket per peer) and how many streams it may hold open
// at once. Both are safe for concurrent use and keep state for a bounded
// number of peers; time is passed in.
package peerlimit

import (
	"container/list"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Rate is a token bucket per peer: a peer may send burst messages at once
// and rate per second after that. It tracks at most maxPeers peers; a new
// one evicts the least recently seen, which starts again with a full
// bucket if it comes back (so the bound is a memory bound, not a fairness
// one: a peer gains nothing from being evicted that a fresh peer lacks).
type Rate struct {
	rate, burst float64
	maxPeers    int

	mu    sync.Mutex
	peers map[peer.ID]*list.Element // of *bucket
	lru   list.List                 // most recently seen first
}

type bucket struct {
	peer   peer.ID
	tokens float64
	at     time.Time
}

// NewRate returns a limiter of rate messages per second and bursts of up
// to burst, over at most maxPeers peers. A rate of zero or less allows
// everything.
func NewRate(rate float64, burst, maxPeers int) *Rate {
	return &Rate{rate: rate, burst: float64(max(burst, 1)), maxPeers: max(maxPeers, 1), peers: map[peer.ID]*list.Element{}}
}

// Allow takes one token of p's bucket at now; false when it is empty.
func (r *Rate) Allow(p peer.ID, now time.Time) bool { return r.AllowN(p, now, 1) }

// AllowN takes n tokens of p's bucket at now; false (taking none) when it
// holds fewer.
func (r *Rate) AllowN(p peer.ID, now time.Time, n int) bool {
	if r.rate <= 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.bucket(p, now)
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = min(r.burst, b.tokens+elapsed.Seconds()*r.rate)
		b.at = now
	}
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// Peers is how many peers the limiter tracks.
func (r *Rate) Peers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.peers)
}

// bucket returns p's bucket, made full if p is new, and marks p as the
// most recently seen.
func (r *Rate) bucket(p peer.ID, now time.Time) *bucket {
	if e, ok := r.peers[p]; ok {
		r.lru.MoveToFront(e)
		return e.Value.(*bucket)
	}
	if len(r.peers) >= r.maxPeers {
		oldest := r.lru.Back()
		r.lru.Remove(oldest)
		delete(r.peers, oldest.Value.(*bucket).peer)
	}
	b := &bucket{peer: p, tokens: r.burst, at: now}
	r.peers[p] = r.lru.PushFront(b)
	return b
}

// Streams counts the streams each peer holds open and refuses one past
// max. It keeps a count only for peers with a stream open, so what it
// tracks is bounded by the streams the host lets in.
type Streams struct {
	max  int
	mu   sync.Mutex
	open map[peer.ID]int
}

// NewStreams returns a counter that lets each peer hold max streams open.
func NewStreams(max int) *Streams { return &Streams{max: max, open: map[peer.ID]int{}} }

// Acquire counts a stream of p as open and returns the function that
// counts it closed; ok is false (and nothing counted) when p already holds
// max.
func (s *Streams) Acquire(p peer.ID) (release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[p] >= s.max {
		return nil, false
	}
	s.open[p]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.open[p]--; s.open[p] <= 0 {
				delete(s.open, p)
			}
		})
	}, true
}

// Open is how many streams p holds open.
func (s *Streams) Open(p peer.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open[p]
}
