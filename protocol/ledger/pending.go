package ledger

import (
	"container/list"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Candidate is an entry on its way in: its bytes, decoded form, hash, and the
// outcome of decoding and signature checking.
type Candidate struct {
	Raw   []byte
	Entry Entry
	Hash  Hash
	Err   error // decoding or signature error
	// WaitErr is why the entry waits (ErrGap, ErrOverdraft, ErrUnfunded
	// or ErrClaimWindowOpen, wrapped: see Waits).
	WaitErr error
	elem    *list.Element // in Pending.order while pending
}

// Pending holds entries that cannot be stored yet (predecessor missing,
// a hold waiting for funds, a lease waiting for its hold), with signatures
// already checked. It keeps
// at most max entries; adding beyond that drops the oldest. It is memory
// only: what it loses, reconciliation brings again.
//
// It is indexed by what can unblock an entry, so that a write retries only
// the entries its own entries may have unblocked (storage's run.wakes): any
// entry by its account (a later entry of the account, its predecessor),
// a lease also by the requester and job whose hold would back it, a claim
// or waive by its requester (whose hold it draws on), a release or hold
// naming a provider by that provider (whose entries past the old hold's
// expiry it may wait for). A hold waiting for funds is found by its
// account, which a payment, a claim or a hold's closing names. A verdict
// waits for its requester's or loser's chain and each chain it quotes.
type Pending struct {
	max   int
	order *list.List // of *Candidate, oldest first
	slots map[peer.ID]map[uint64]*Candidate
	// leases counts, for each hold a pending lease needs (requester, job),
	// the pending leases of each provider.
	leases map[holdSlot]map[peer.ID]int
	// others counts, for each account, the pending entries of each other
	// account that may wait for its chain (claims, waives, releases and
	// holds naming a provider).
	others map[peer.ID]map[peer.ID]int
}

// holdSlot names the holds of a requester's job.
type holdSlot struct {
	requester peer.ID
	job       Hash
}

// NewPending returns a buffer that keeps at most max entries (none if
// max ≤ 0).
func NewPending(max int) Pending {
	return Pending{max: max, order: list.New(), slots: make(map[peer.ID]map[uint64]*Candidate),
		leases: make(map[holdSlot]map[peer.ID]int), others: make(map[peer.ID]map[peer.ID]int)}
}

// Awaiting calls f with each account that has a pending entry that may
// wait for id's chain (other than a lease, see LeasesAwaiting).
func (p *Pending) Awaiting(id peer.ID, f func(waiter peer.ID)) {
	for w := range p.others[id] {
		f(w)
	}
}

// awaited is the other chains c's entry may wait for, besides a lease's
// hold ("" entries are none): a verdict's, each it quotes.
func awaited(c *Candidate) []peer.ID {
	switch b := c.Entry.Body.(type) {
	case ClaimBody:
		return []peer.ID{b.Requester}
	case WaiveBody:
		return []peer.ID{b.Requester}
	case ReleaseBody:
		return []peer.ID{b.Provider}
	case HoldBody:
		return []peer.ID{b.Provider}
	case MajorityClaimBody:
		return append(quoted(b.Majority), b.Requester)
	case MajorityReleaseBody:
		return append(quoted(b.Majority), b.Loser.Provider)
	}
	return nil
}

// quoted is the providers refs name.
func quoted(refs []ReceiptRef) []peer.ID {
	out := make([]peer.ID, 0, len(refs)+1)
	for _, r := range refs {
		out = append(out, r.Provider)
	}
	return out
}

// count adds d to m[k][w], dropping what falls to zero.
func count[K comparable](m map[K]map[peer.ID]int, k K, w peer.ID, d int) {
	ws := m[k]
	if ws == nil {
		ws = make(map[peer.ID]int)
		m[k] = ws
	}
	if ws[w] += d; ws[w] <= 0 {
		delete(ws, w)
		if len(ws) == 0 {
			delete(m, k)
		}
	}
}

// Len is how many entries wait.
func (p *Pending) Len() int { return p.order.Len() }

// Has reports whether the account has pending entries.
func (p *Pending) Has(id peer.ID) bool { return len(p.slots[id]) > 0 }

// LeasesAwaiting calls f with each provider that has a pending lease of
// requester's job.
func (p *Pending) LeasesAwaiting(requester peer.ID, job Hash, f func(provider peer.ID)) {
	for id := range p.leases[holdSlot{requester, job}] {
		f(id)
	}
}

// index adds c to (d = 1) or drops it from (d = −1) the indexes of what
// it waits for.
func (p *Pending) index(c *Candidate, d int) {
	others := awaited(c)
	for i, o := range others {
		if o != "" && o != c.Entry.Account && !slices.Contains(others[:i], o) {
			count(p.others, o, c.Entry.Account, d)
		}
	}
	if b, ok := c.Entry.Body.(LeaseBody); ok {
		count(p.leases, holdSlot{b.Requester, b.Job}, c.Entry.Account, d)
	}
}

// Get returns the pending copy of c (the same entry), or nil.
func (p *Pending) Get(c *Candidate) *Candidate {
	if o, ok := p.slots[c.Entry.Account][c.Entry.Seq]; ok && o.Hash == c.Hash {
		return o
	}
	return nil
}

// Add keeps c. Of two different entries for one slot, the first stays;
// the other comes again later and is then caught as an equivocation.
func (p *Pending) Add(c *Candidate) {
	if p.max <= 0 {
		return
	}
	slots := p.slots[c.Entry.Account]
	if slots == nil {
		slots = make(map[uint64]*Candidate)
		p.slots[c.Entry.Account] = slots
	}
	if _, taken := slots[c.Entry.Seq]; taken {
		return
	}
	slots[c.Entry.Seq] = c
	c.elem = p.order.PushBack(c)
	p.index(c, 1)
	for p.order.Len() > p.max {
		p.remove(p.order.Front().Value.(*Candidate))
	}
}

func (p *Pending) remove(c *Candidate) {
	if c.elem == nil {
		return
	}
	p.order.Remove(c.elem)
	c.elem = nil
	p.index(c, -1)
	slots := p.slots[c.Entry.Account]
	delete(slots, c.Entry.Seq)
	if len(slots) == 0 {
		delete(p.slots, c.Entry.Account)
	}
}

// Pop removes and returns the account's pending entry for seq next (the
// seq the account needs), or nil. A pending entry for a seq the account
// has already passed stays until the bound pushes it out.
func (p *Pending) Pop(id peer.ID, next uint64) *Candidate {
	c, ok := p.slots[id][next]
	if !ok {
		return nil
	}
	p.remove(c)
	return c
}

// DropAccount forgets the account's pending entries.
func (p *Pending) DropAccount(id peer.ID) {
	for _, c := range p.slots[id] {
		p.remove(c)
	}
}
