package riblt

import (
	"fmt"
	"math"
)

// peeler decodes a symmetric difference from a peer's coded symbols,
// received as a growing prefix, against the local set.
type peeler struct {
	local  *Set
	syms   []symbol               // peer's symbols minus local ones, peeled so far
	rec    []recovered            // items recovered, in order
	seen   map[[4]uint64]struct{} // recovered sums, to refuse an item twice
	queue  []int                  // symbols that may be pure
	queued []bool                 // queued[j]: j is in queue (at most once)
	work   int                    // symbol updates done while peeling
	budget int                    // cap on work

	// Estimate of the difference size from the raw symbol counts (see
	// estimate).
	delta  int64   // raw count of symbol 0: peer's size minus ours
	estSum float64 // sum of the per-symbol estimates
	estN   int
}

// recovered is an item recovered by peeling, with where its walk stopped:
// symbols that arrive later still hold it and must be cleaned.
type recovered struct {
	sum   [4]uint64
	check uint64
	sign  int64 // +1: only the peer has it; −1: only we have it
	m     mapping
}

func newPeeler(local *Set, budget int) *peeler {
	return &peeler{local: local, seen: make(map[[4]uint64]struct{}), budget: budget}
}

// add takes the peer's next symbols (which extend the prefix received so far)
// and peels as far as they allow.
func (p *peeler) add(batch []symbol) error {
	start := len(p.syms)
	if start+len(batch) > p.local.Capacity() {
		return fmt.Errorf("%w: symbols past local capacity %d", ErrDifferenceTooLarge, p.local.Capacity())
	}
	for i := range batch {
		s := batch[i]
		l := p.local.symbol(start + i)
		s.subtract(&l)
		p.observe(start+i, s.count)
		p.syms = append(p.syms, s)
		p.queued = append(p.queued, false)
	}
	// Items already recovered are in the new symbols too.
	for i := range p.rec {
		if err := p.walk(&p.rec[i]); err != nil {
			return err
		}
	}
	for j := start; j < len(p.syms); j++ {
		p.push(j)
	}
	return p.peel()
}

// peel recovers items from pure symbols until none is left.
func (p *peeler) peel() error {
	for len(p.queue) > 0 {
		j := p.queue[len(p.queue)-1]
		p.queue = p.queue[:len(p.queue)-1]
		p.queued[j] = false
		s := &p.syms[j]
		if !s.pure() {
			continue // changed since it was queued
		}
		if _, dup := p.seen[s.sum]; dup {
			// Impossible with honest symbols: a recovered item was removed
			// from every symbol it maps to.
			return fmt.Errorf("%w: item recovered twice", ErrProtocol)
		}
		if len(p.rec) >= len(p.syms) {
			return fmt.Errorf("%w: more items than symbols", ErrProtocol)
		}
		p.seen[s.sum] = struct{}{}
		p.rec = append(p.rec, recovered{sum: s.sum, check: s.check, sign: s.count, m: newMapping(s.check)})
		if err := p.walk(&p.rec[len(p.rec)-1]); err != nil {
			return err
		}
	}
	return nil
}

// walk removes a recovered item from the symbols received so far that it maps
// to and not yet removed from, queueing those it leaves pure.
func (p *peeler) walk(r *recovered) error {
	for ; r.m.idx < uint64(len(p.syms)); r.m.next() {
		if p.work++; p.work > p.budget {
			return fmt.Errorf("%w: peeling work over %d", ErrLimit, p.budget)
		}
		t := &p.syms[r.m.idx]
		t.xor(&r.sum, r.check)
		t.count -= r.sign
		p.push(int(r.m.idx))
	}
	return nil
}

// push queues symbol j if it is pure and not queued yet.
func (p *peeler) push(j int) {
	if !p.queued[j] && p.syms[j].pure() {
		p.queued[j] = true
		p.queue = append(p.queue, j)
	}
}

// done reports whether the whole difference is recovered: every item maps to
// symbol 0, so it is empty once all are peeled.
func (p *peeler) done() bool {
	return len(p.syms) > 0 && p.syms[0].empty()
}

// result splits the recovered items into those only the peer has and those
// only we have.
func (p *peeler) result() (peerOnly, localOnly [][32]byte) {
	for i := range p.rec {
		h := hashOf(&p.rec[i].sum)
		if p.rec[i].sign > 0 {
			peerOnly = append(peerOnly, h)
		} else {
			localOnly = append(localOnly, h)
		}
	}
	return peerOnly, localOnly
}

// observe feeds the difference-size estimate with the raw count c of symbol
// j. The count is (peer-only items) − (local-only items) among the d items
// that symbol j holds, each with probability ρ = 2/(j+2), so
// E[c²] = d·ρ(1−ρ) + δ²ρ² where δ, the count of symbol 0, is exact. Each
// symbol thus gives an unbiased estimate of d; their mean is good to ~25%
// from 32 symbols, for any d, long before peeling can start.
func (p *peeler) observe(j int, c int64) {
	if j == 0 {
		p.delta = c
		return
	}
	rho := 2 / float64(j+2)
	cf, df := float64(c), float64(p.delta)
	p.estSum += (cf*cf - df*df*rho*rho) / (rho * (1 - rho))
	p.estN++
}

// estimate is the estimated size of the difference: at least |δ| and the
// number of items recovered so far.
func (p *peeler) estimate() float64 {
	d := math.Abs(float64(p.delta))
	if p.estN > 0 {
		d = max(d, p.estSum/float64(p.estN))
	}
	return max(d, float64(len(p.rec)))
}
