package storage

import (
	"container/list"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// cand is an entry on its way in: its bytes, decoded form, hash, and the
// outcome of decoding and signature checking.
type cand struct {
	raw  []byte
	e    Entry
	hash Hash
	err  error // decoding or signature error
	// waitErr is why the entry waits (ErrGap, ErrOverdraft or
	// ErrUnfunded, wrapped: see waits).
	waitErr error
	elem    *list.Element // in pendingBuf.order while pending
}

// pendingBuf holds entries that cannot be stored yet (predecessor missing,
// a hold waiting for funds, a lease waiting for its hold), with signatures
// already checked. It keeps
// at most max entries; adding beyond that drops the oldest. It is memory
// only: what it loses, reconciliation brings again.
type pendingBuf struct {
	max   int
	order *list.List // of *cand, oldest first
	slots map[peer.ID]map[uint64]*cand
}

func newPendingBuf(max int) pendingBuf {
	return pendingBuf{max: max, order: list.New(), slots: make(map[peer.ID]map[uint64]*cand)}
}

func (p *pendingBuf) len() int { return p.order.Len() }

// get returns the pending copy of c (the same entry), or nil.
func (p *pendingBuf) get(c *cand) *cand {
	if o, ok := p.slots[c.e.Account][c.e.Seq]; ok && o.hash == c.hash {
		return o
	}
	return nil
}

// add keeps c. Of two different entries for one slot, the first stays;
// the other comes again later and is then caught as an equivocation.
func (p *pendingBuf) add(c *cand) {
	if p.max <= 0 {
		return
	}
	slots := p.slots[c.e.Account]
	if slots == nil {
		slots = make(map[uint64]*cand)
		p.slots[c.e.Account] = slots
	}
	if _, taken := slots[c.e.Seq]; taken {
		return
	}
	slots[c.e.Seq] = c
	c.elem = p.order.PushBack(c)
	for p.order.Len() > p.max {
		p.remove(p.order.Front().Value.(*cand))
	}
}

func (p *pendingBuf) remove(c *cand) {
	if c.elem == nil {
		return
	}
	p.order.Remove(c.elem)
	c.elem = nil
	slots := p.slots[c.e.Account]
	delete(slots, c.e.Seq)
	if len(slots) == 0 {
		delete(p.slots, c.e.Account)
	}
}

// pop removes and returns the account's pending entry for seq next (the
// seq the account needs), or nil. A pending entry for a seq the account
// has already passed stays until the bound pushes it out.
func (p *pendingBuf) pop(id peer.ID, next uint64) *cand {
	c, ok := p.slots[id][next]
	if !ok {
		return nil
	}
	p.remove(c)
	return c
}

func (p *pendingBuf) dropAccount(id peer.ID) {
	for _, c := range p.slots[id] {
		p.remove(c)
	}
}

// accounts lists the accounts with pending entries, sorted.
func (p *pendingBuf) accounts() []peer.ID {
	ids := make([]peer.ID, 0, len(p.slots))
	for id := range p.slots {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
