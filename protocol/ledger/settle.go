package ledger

import (
	"fmt"
	"math/bits"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The rules of settlement by the provider (entries of version 3): a hold
// naming a provider, the provider's claims and waives of it, and its
// release at expiry. Each reads the other chain only for what that chain
// cannot take back: the requester's hold once its seq is applied, the
// provider's entries up to a time once its chain is applied past it (its
// times never go back). What may still come is waited for.

// namedHoldRule opens the requester's hold of a job naming a provider, in
// place of the job's hold naming none if that is open (one entry: the
// award), within the available balance, unless the provider was paid for
// the job by a final claim or a hold naming it is open. A hold naming it
// that the provider may still close (its chain not past the hold's
// expiry) is waited for. Its replicas must be the job's, and it makes
// the provider a voter of the job while there is room (joinVoters). A
// hold naming its own account is refused: a job it pays itself proves
// nothing.
func namedHoldRule(st State, a *AccountState, e *Entry, b HoldBody) error {
	if b.Provider == e.Account {
		return where(e, ErrSelfAward)
	}
	prev, open, err := st.Hold(e.Account, b.Job, b.Provider)
	if err != nil {
		return err
	}
	if open {
		p, err := st.Account(b.Provider)
		if err != nil {
			return err
		}
		if p.LastTime <= prev.Expiry {
			return fmt.Errorf("%w: %s seq %d: the hold of seq %d naming %s may still be claimed", ErrClaimWindowOpen, e.Account, e.Seq, prev.Seq, b.Provider)
		}
		return where(e, ErrHoldExists)
	}
	if claimed, err := st.Claimed(e.Account, b.Job, b.Provider); err != nil {
		return err
	} else if claimed {
		return where(e, ErrAlreadyPaid)
	}
	voters, err := joinVoters(st, e, b)
	if err != nil {
		return err
	}
	posting, open, err := st.Hold(e.Account, b.Job, "")
	if err != nil {
		return err
	}
	var replaced uint64
	if open {
		replaced = posting.Amount
	}
	if avail := a.Balance - a.Held + replaced; b.Amount > avail {
		return overdraft(e, b.Amount, avail)
	}
	n, err := st.Funding(e.Account, b.Job, V3Holds(b.Provider))
	if err != nil {
		return err
	}
	if open {
		if err := st.DeleteHold(e.Account, b.Job, ""); err != nil {
			return err
		}
	}
	h := HoldRecord{Provider: b.Provider, Amount: b.Amount, Seq: e.Seq, Expiry: b.Expiry, Time: e.Time.UnixNano(), Replicas: b.Replicas}
	if err := st.PutHold(e.Account, b.Job, b.Provider, h); err != nil {
		return err
	}
	if err := st.PutFunding(e.Account, b.Job, V3Holds(b.Provider), n+1); err != nil {
		return err
	}
	if err := st.PutVoters(e.Account, b.Job, voters); err != nil {
		return err
	}
	a.Held = a.Held - replaced + b.Amount
	return bump(st, e.Account, func(r *Reputation) { sat(&r.Awards, 1) })
}

// namedReleaseRule closes a hold naming a provider after its expiry, once
// the provider's chain is applied past it, so every claim and waive of it
// has been: the unclaimed rest returns. Whether the provider had written
// a receipt of the job by then goes into both reputations. A hold not
// open waits (ErrNotDrawable): a provider that equivocates may have
// closed it on this node's copy of its chain and not on another's.
func namedReleaseRule(st State, a *AccountState, e *Entry, b ReleaseBody) error {
	hr, open, err := st.Hold(e.Account, b.Job, b.Provider)
	if err != nil {
		return err
	}
	if !open {
		return fmt.Errorf("%w: %w: %s seq %d releases job %s naming %s", ErrNotDrawable, ErrNoHold, e.Account, e.Seq, b.Job, b.Provider)
	}
	if e.Time.UnixNano() <= hr.Expiry {
		return where(e, ErrReleaseEarly)
	}
	p, err := st.Account(b.Provider)
	if err != nil {
		return err
	}
	if p.LastTime <= hr.Expiry {
		return fmt.Errorf("%w: %s seq %d: %s has no entry after the expiry yet", ErrClaimWindowOpen, e.Account, e.Seq, b.Provider)
	}
	lr, err := st.Leases(b.Provider, b.Job)
	if err != nil {
		return err
	}
	if err := st.DeleteHold(e.Account, b.Job, b.Provider); err != nil {
		return err
	}
	a.Held -= hr.Rest()
	ran := lr.ranBetween(hr.Time, hr.Expiry)
	if err := bump(st, b.Provider, func(r *Reputation) {
		if ran {
			sat(&r.Unclaimed, 1)
		} else {
			sat(&r.NotRun, 1)
		}
	}); err != nil || !ran {
		return err
	}
	return bump(st, e.Account, func(r *Reputation) { sat(&r.LeftUnpaid, 1) })
}

// drawnHold returns the requester's open hold naming provider that a
// claim or waive draws on, once it is certain: the requester's chain is
// applied up to the hold's seq (else ErrUnfunded: it waits), the hold is
// that entry's and still open (else ErrNoHold), and the entry is dated
// within its claim window (else ErrClaimExpired); these two wait too
// (ErrNotDrawable): they depend on what the requester's chain holds at
// the seq, which an equivocating requester makes differ between nodes.
func drawnHold(st State, e *Entry, requester peer.ID, job Hash, seq uint64) (*AccountState, HoldRecord, error) {
	req, err := st.Account(requester)
	if err != nil {
		return nil, HoldRecord{}, err
	}
	if req.LastSeq < seq {
		return nil, HoldRecord{}, fmt.Errorf("%w: %s seq %d draws on seq %d of %s, which has %d", ErrUnfunded, e.Account, e.Seq, seq, requester, req.LastSeq)
	}
	hr, open, err := st.Hold(requester, job, e.Account)
	if err != nil {
		return nil, HoldRecord{}, err
	}
	if !open || hr.Seq != seq {
		return nil, HoldRecord{}, fmt.Errorf("%w: %w: %s seq %d: no open hold of seq %d of %s naming it", ErrNotDrawable, ErrNoHold, e.Account, e.Seq, seq, requester)
	}
	if e.Time.UnixNano() > hr.Expiry {
		return nil, HoldRecord{}, fmt.Errorf("%w: %w: %s seq %d", ErrNotDrawable, ErrClaimExpired, e.Account, e.Seq)
	}
	return req, hr, nil
}

// claimRule pays the provider what the requester accepted (its signature
// is checked with the entry's) out of the hold naming it: Amount is the
// total claimed so far, above what was claimed before (or equal, to close
// the hold) and at most the hold. A final claim closes the hold, returns
// the rest and marks the job paid to the provider; one above zero counts
// the job paid (JobsPaid, PaidFor) and the run's time as delivered, as
// far as the amount pays for it (LeaseRecord.paidUsage). A voter of a job
// with replicas claims by acceptance only before it votes (ErrVoted).
func claimRule(st State, e *Entry, b ClaimBody) error {
	req, hr, err := drawnHold(st, e, b.Requester, b.Job, b.HoldSeq)
	if err != nil {
		return err
	}
	switch {
	case b.Amount > hr.Amount:
		return fmt.Errorf("%w: %w: %s seq %d claims %d out of %d", ErrNotDrawable, ErrPaymentAboveHold, e.Account, e.Seq, b.Amount, hr.Amount)
	case b.Amount < hr.Claimed || b.Amount == hr.Claimed && !b.Final:
		return fmt.Errorf("%w: %s seq %d claims %d in all, %d claimed before", ErrAlreadyPaid, e.Account, e.Seq, b.Amount, hr.Claimed)
	}
	if voted, err := hasVoted(st, b.Requester, e.Account, b.Job, hr); err != nil {
		return err
	} else if voted {
		return where(e, ErrVoted)
	}
	return drawClaim(st, e, req, b.Requester, b.Job, hr, b.Amount, b.Final)
}

// drawClaim moves what a claim by e's account draws from requester's hold
// hr (amount in all, at least what was claimed before) and, if final,
// closes the hold and marks the job paid to the provider.
func drawClaim(st State, e *Entry, req *AccountState, requester peer.ID, job Hash, hr HoldRecord, amount uint64, final bool) error {
	delta := amount - hr.Claimed
	p, err := st.Account(e.Account)
	if err != nil {
		return err
	}
	if p != req {
		if _, c := bits.Add64(p.Balance, delta, 0); c != 0 {
			return where(e, ErrOverflow)
		}
	}
	hr.Claimed = amount
	if final {
		err = closeHold(st, req, requester, job, e.Account, hr)
		if err == nil {
			err = st.PutClaimed(requester, job, e.Account, e.Seq)
		}
	} else {
		err = st.PutHold(requester, job, e.Account, hr)
	}
	if err != nil {
		return err
	}
	req.Balance -= delta
	req.Held -= delta
	p.Balance += delta
	paid := final && amount > 0
	var gpu, wall uint64
	if paid {
		lr, err := st.Leases(e.Account, job)
		if err != nil {
			return err
		}
		gpu, wall = lr.paidUsage(amount)
	}
	if err := bump(st, e.Account, func(r *Reputation) {
		sat(&r.Earned, delta)
		if paid {
			sat(&r.JobsPaid, 1)
			sat(&r.GPUMS, gpu)
			sat(&r.WallMS, wall)
		}
	}); err != nil {
		return err
	}
	return bump(st, requester, func(r *Reputation) {
		sat(&r.Spent, delta)
		if paid {
			sat(&r.PaidFor, 1)
		}
	})
}

// waiveRule closes the hold naming the provider at its own word (it gives
// the award back): the unclaimed rest returns to the requester. A voter
// of a job with replicas waives only before it votes (ErrVoted).
func waiveRule(st State, e *Entry, b WaiveBody) error {
	req, hr, err := drawnHold(st, e, b.Requester, b.Job, b.HoldSeq)
	if err != nil {
		return err
	}
	if voted, err := hasVoted(st, b.Requester, e.Account, b.Job, hr); err != nil {
		return err
	} else if voted {
		return where(e, ErrVoted)
	}
	if err := closeHold(st, req, b.Requester, b.Job, e.Account, hr); err != nil {
		return err
	}
	return bump(st, e.Account, func(r *Reputation) { sat(&r.Waived, 1) })
}

// closeHold deletes requester's hold naming provider and returns what no
// claim drew of it (hr.Claimed counts the claim closing it).
func closeHold(st State, req *AccountState, requester peer.ID, job Hash, provider peer.ID, hr HoldRecord) error {
	if err := st.DeleteHold(requester, job, provider); err != nil {
		return err
	}
	req.Held -= hr.Rest()
	return nil
}
