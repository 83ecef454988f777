package ledger

import (
	"context"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// JobKey names an account's record of one job (a hold, a payment, a
// provider's leases).
type JobKey struct {
	Account peer.ID
	Job     Hash
}

// FundKey names the holds of a requester's job naming one provider ("" for
// none).
type FundKey struct {
	Requester, Provider peer.ID
	Job                 Hash
}

// MemState is a State in memory: what a replay of the whole ledger
// derives, to hold its indexes against.
type MemState struct {
	Accounts map[peer.ID]*AccountState
	// Holds are the open holds, under (requester, job, provider) as
	// State.Hold names them.
	Holds  map[FundKey]HoldRecord
	Paids  map[JobKey]uint64  // the payment entry's seq
	Claims map[FundKey]uint64 // the final claim's seq
	Funds  map[FundKey]uint64
	Leased map[JobKey]LeaseRecord
	Reps   map[peer.ID]Reputation
	Votes  map[JobKey]Voters // under (requester, job)
}

// NewMemState returns an empty state.
func NewMemState() *MemState {
	return &MemState{Accounts: make(map[peer.ID]*AccountState), Holds: make(map[FundKey]HoldRecord),
		Paids: make(map[JobKey]uint64), Claims: make(map[FundKey]uint64), Funds: make(map[FundKey]uint64),
		Leased: make(map[JobKey]LeaseRecord), Reps: make(map[peer.ID]Reputation), Votes: make(map[JobKey]Voters)}
}

// Account implements State.
func (v *MemState) Account(id peer.ID) (*AccountState, error) {
	a, ok := v.Accounts[id]
	if !ok {
		a = &AccountState{}
		v.Accounts[id] = a
	}
	return a, nil
}

// Hold implements State.
func (v *MemState) Hold(id peer.ID, job Hash, provider peer.ID) (HoldRecord, bool, error) {
	h, ok := v.Holds[FundKey{id, provider, job}]
	return h, ok, nil
}

// PutHold implements State.
func (v *MemState) PutHold(id peer.ID, job Hash, provider peer.ID, h HoldRecord) error {
	v.Holds[FundKey{id, provider, job}] = h
	return nil
}

// DeleteHold implements State.
func (v *MemState) DeleteHold(id peer.ID, job Hash, provider peer.ID) error {
	delete(v.Holds, FundKey{id, provider, job})
	return nil
}

// Claimed implements State.
func (v *MemState) Claimed(requester peer.ID, job Hash, provider peer.ID) (bool, error) {
	_, ok := v.Claims[FundKey{requester, provider, job}]
	return ok, nil
}

// PutClaimed implements State.
func (v *MemState) PutClaimed(requester peer.ID, job Hash, provider peer.ID, seq uint64) error {
	v.Claims[FundKey{requester, provider, job}] = seq
	return nil
}

// Voters implements State.
func (v *MemState) Voters(requester peer.ID, job Hash) (Voters, error) {
	return v.Votes[JobKey{requester, job}], nil
}

// PutVoters implements State.
func (v *MemState) PutVoters(requester peer.ID, job Hash, vs Voters) error {
	vs.Providers = slices.Clone(vs.Providers) // the caller's slice may grow in place
	v.Votes[JobKey{requester, job}] = vs
	return nil
}

// Reputation implements State.
func (v *MemState) Reputation(id peer.ID) (Reputation, error) { return v.Reps[id], nil }

// PutReputation implements State.
func (v *MemState) PutReputation(id peer.ID, r Reputation) error {
	v.Reps[id] = r
	return nil
}

// Paid implements State.
func (v *MemState) Paid(id peer.ID, job Hash) (bool, error) {
	_, ok := v.Paids[JobKey{id, job}]
	return ok, nil
}

// PutPaid implements State.
func (v *MemState) PutPaid(id peer.ID, job Hash, seq uint64) error {
	v.Paids[JobKey{id, job}] = seq
	return nil
}

// Funding implements State.
func (v *MemState) Funding(requester peer.ID, job Hash, provider peer.ID) (uint64, error) {
	return v.Funds[FundKey{requester, provider, job}], nil
}

// PutFunding implements State.
func (v *MemState) PutFunding(requester peer.ID, job Hash, provider peer.ID, n uint64) error {
	v.Funds[FundKey{requester, provider, job}] = n
	return nil
}

// Leases implements State.
func (v *MemState) Leases(provider peer.ID, job Hash) (LeaseRecord, error) {
	return v.Leased[JobKey{provider, job}], nil
}

// PutLeases implements State.
func (v *MemState) PutLeases(provider peer.ID, job Hash, r LeaseRecord) error {
	v.Leased[JobKey{provider, job}] = r
	return nil
}

// Problem is one thing a check of a ledger found wrong. Account and Seq
// are zero when it is not about one entry.
type Problem struct {
	Account peer.ID
	Seq     uint64
	Err     error
}

// Error describes the problem.
func (p Problem) Error() string {
	if p.Account == "" {
		return p.Err.Error()
	}
	return fmt.Sprintf("%s seq %d: %v", p.Account, p.Seq, p.Err)
}

// Unwrap returns the cause (a sentinel such as ErrBadSignature, wrapped).
func (p Problem) Unwrap() error { return p.Err }

// Replayed is what Replay derives from a ledger's chains.
type Replayed struct {
	// State is the state the entries replayed give.
	State *MemState
	// Broken marks the accounts whose chains stopped at a problem.
	Broken map[peer.ID]bool
	// Problems lists each broken chain's first problem.
	Problems []Problem
}

// Replay re-validates chains from scratch (each account's candidates in
// seq order, their signatures already checked: a candidate's Err is its
// first problem): chain, rate and kind rules, in an order that lets holds
// see the payments they rely on, leases and claims the holds, and
// releases the provider's entries. An entry that waits for another chain
// (Waits) is retried after the other chains have moved on; a chain stops at its first problem. Times
// are not checked against a clock: an entry valid when stored stays
// valid. The error is ctx's.
func (r *Rules) Replay(ctx context.Context, chains map[peer.ID][]*Candidate) (*Replayed, error) {
	out := &Replayed{State: NewMemState(), Broken: make(map[peer.ID]bool)}
	ids := make([]peer.ID, 0, len(chains))
	for id := range chains {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	next := make(map[peer.ID]int, len(ids))
	for progress := true; progress; {
		progress = false
		for _, id := range ids {
			if r.replayChain(out, id, chains[id], next) {
				progress = true
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	for _, id := range ids {
		if ch := chains[id]; !out.Broken[id] && next[id] < len(ch) {
			c := ch[next[id]]
			out.broke(id, c.Entry.Seq, r.Apply(out.State, &c.Entry, c.Hash))
		}
	}
	return out, nil
}

// replayChain applies the account's entries from next[id] on until one
// waits or breaks the chain, and reports whether it applied any.
func (r *Rules) replayChain(out *Replayed, id peer.ID, ch []*Candidate, next map[peer.ID]int) bool {
	progress := false
	for !out.Broken[id] && next[id] < len(ch) {
		c := ch[next[id]]
		err := c.Err
		if err == nil {
			err = r.Apply(out.State, &c.Entry, c.Hash)
		}
		if waitsOnOthers(err) {
			break
		}
		if err != nil {
			out.broke(id, c.Entry.Seq, err)
			break
		}
		next[id]++
		progress = true
	}
	return progress
}

func (out *Replayed) broke(id peer.ID, seq uint64, err error) {
	out.Problems = append(out.Problems, Problem{id, seq, err})
	out.Broken[id] = true
}
