package storage

import (
	"container/list"

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
//
// It is indexed by what can unblock an entry, so that a write retries only
// the entries its own entries may have unblocked (see run.wakes): any
// entry by its account (a later entry of the account, its predecessor),
// and a lease also by the requester and job whose hold would back it. A
// hold waiting for funds is found by its account, which a payment names.
type pendingBuf struct {
	max   int
	order *list.List // of *cand, oldest first
	slots map[peer.ID]map[uint64]*cand
	// leases counts, for each hold a pending lease needs (requester, job),
	// the pending leases of each provider.
	leases map[holdSlot]map[peer.ID]int
}

// holdSlot names the holds of a requester's job.
type holdSlot struct {
	requester peer.ID
	job       Hash
}

func newPendingBuf(max int) pendingBuf {
	return pendingBuf{max: max, order: list.New(), slots: make(map[peer.ID]map[uint64]*cand),
		leases: make(map[holdSlot]map[peer.ID]int)}
}

func (p *pendingBuf) len() int { return p.order.Len() }

// has reports whether the account has pending entries.
func (p *pendingBuf) has(id peer.ID) bool { return len(p.slots[id]) > 0 }

// leasesAwaiting calls f with each provider that has a pending lease of
// requester's job.
func (p *pendingBuf) leasesAwaiting(requester peer.ID, job Hash, f func(provider peer.ID)) {
	for id := range p.leases[holdSlot{requester, job}] {
		f(id)
	}
}

// index adds c to (d = 1) or drops it from (d = −1) the lease index.
func (p *pendingBuf) index(c *cand, d int) {
	b, ok := c.e.Body.(LeaseBody)
	if !ok {
		return
	}
	slot := holdSlot{b.Requester, b.Job}
	providers := p.leases[slot]
	if providers == nil {
		providers = make(map[peer.ID]int)
		p.leases[slot] = providers
	}
	if providers[c.e.Account] += d; providers[c.e.Account] <= 0 {
		delete(providers, c.e.Account)
		if len(providers) == 0 {
			delete(p.leases, slot)
		}
	}
}

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
	p.index(c, 1)
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
	p.index(c, -1)
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
