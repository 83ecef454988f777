package storage

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// run is one write: its current transaction and its result.
type run struct {
	l        *Ledger
	t        *ledgerTxn
	res      IngestResult
	now      int64 // limit for entry times, Unix nanoseconds
	dirty    bool  // a transaction was committed: sync at the end
	received bool  // only others' entries: synced if the ledger says so
	// scanned is how many of the entries stored so far (res.Accepted,
	// then t.fresh) finish has looked at for pending entries they may
	// unblock; retry lists accounts whose pending entries were given
	// again, to retry as well.
	scanned int
	retry   map[peer.ID]struct{}
}

func (l *Ledger) newRun() *run {
	return &run{l: l, t: l.begin(), now: l.clock().Add(l.maxSkew).UnixNano()}
}

// roll commits the current transaction if it is full and starts another.
func (r *run) roll() error {
	if !r.t.full() {
		return nil
	}
	return r.commit()
}

func (r *run) commit() error {
	fresh := r.t.fresh
	if err := r.t.commit(); err != nil {
		return err
	}
	r.res.Accepted = append(r.res.Accepted, fresh...)
	if r.l.onStore != nil {
		for _, e := range fresh {
			r.l.onStore(e)
		}
	}
	r.dirty = r.dirty || r.t.count > 0
	r.t = r.l.begin()
	return nil
}

// finish retries the pending entries that the entries stored in this run
// may have unblocked, until none is stored, then commits and syncs. Only
// those: a pending entry waits for its predecessor, for a payment to its
// account (a hold) or for a hold of its requester's job (a lease), and
// nothing else can change its verdict, so entries that wait for what no
// entry of this run brought cost nothing here, however many wait.
func (r *run) finish() error {
	for {
		woken := r.wakes()
		if len(woken) == 0 {
			break
		}
		for _, id := range woken {
			if err := r.drain(id); err != nil {
				return err
			}
		}
	}
	if err := r.commit(); err != nil {
		return err
	}
	r.res.Pending = r.l.pending.Len()
	if !r.dirty || r.received && !r.l.syncReceived {
		return nil
	}
	if err := r.l.db.bdb.Sync(); err != nil {
		return storeErr(fmt.Errorf("sync: %w", err))
	}
	return nil
}

// wakes returns, sorted, the accounts with pending entries that the
// entries stored since the last call may have unblocked: their own
// accounts', the accounts payments went to (or claims and waives returned
// funds to), the providers whose leases wait for a hold written, the
// accounts whose claims, waives, releases or holds wait for their chains;
// and those of retry.
func (r *run) wakes() []peer.ID {
	set := r.retry
	r.retry = nil
	if set == nil {
		set = map[peer.ID]struct{}{}
	}
	for ; r.scanned < len(r.res.Accepted)+len(r.t.fresh); r.scanned++ {
		var e *ledger.Entry
		if i := r.scanned; i < len(r.res.Accepted) {
			e = &r.res.Accepted[i]
		} else {
			e = &r.t.fresh[i-len(r.res.Accepted)]
		}
		set[e.Account] = struct{}{}
		// Claims, waives, releases and holds naming a provider that wait
		// for this chain (its hold, its entries past an expiry).
		r.l.pending.Awaiting(e.Account, func(w peer.ID) { set[w] = struct{}{} })
		switch b := e.Body.(type) {
		case ledger.PaymentBody:
			set[b.To] = struct{}{}
		case ledger.ClaimBody:
			set[b.Requester] = struct{}{} // what it returns may fund a hold
		case ledger.WaiveBody:
			set[b.Requester] = struct{}{}
		case ledger.MajorityClaimBody:
			set[b.Requester] = struct{}{}
		case ledger.HoldBody:
			r.l.pending.LeasesAwaiting(e.Account, b.Job, func(p peer.ID) { set[p] = struct{}{} })
		}
	}
	ids := make([]peer.ID, 0, len(set))
	for id := range set {
		if r.l.pending.Has(id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// retryAccount has finish retry the account's pending entries.
func (r *run) retryAccount(id peer.ID) {
	if r.retry == nil {
		r.retry = map[peer.ID]struct{}{}
	}
	r.retry[id] = struct{}{}
}

// process applies c and, if it is stored, the account's pending entries
// that follow it. It returns c's own outcome.
func (r *run) process(c *ledger.Candidate) error {
	err := r.handle(c)
	if err == nil {
		if derr := r.drain(c.Entry.Account); derr != nil {
			return derr
		}
	}
	return err
}

// drain applies the account's pending entries while they fit.
func (r *run) drain(id peer.ID) error {
	for r.l.pending.Has(id) {
		a, err := r.t.Account(id)
		if err != nil {
			return err
		}
		c := r.l.pending.Pop(id, a.LastSeq+1)
		if c == nil {
			return nil
		}
		err = r.handle(c)
		if isStoreErr(err) {
			return err
		}
		if err != nil {
			return nil
		}
	}
	return nil
}

// handle applies c and files the outcome in the result.
func (r *run) handle(c *ledger.Candidate) error {
	if err := r.roll(); err != nil {
		return err
	}
	err := r.l.applyLive(r.t, c, r.now)
	var eq *ledger.EquivocationError
	switch {
	case err == nil:
	case isStoreErr(err):
	case ledger.Waits(err):
		c.WaitErr = err
		r.l.pending.Add(c)
	case errors.Is(err, ledger.ErrDuplicate):
		r.res.Duplicates++
	case errors.As(err, &eq):
		r.res.Fraud = append(r.res.Fraud, eq.Proof)
		r.l.pending.DropAccount(c.Entry.Account)
	default:
		r.res.Rejected = append(r.res.Rejected, Rejection{Account: c.Entry.Account, Seq: c.Entry.Seq, Err: err})
	}
	return err
}

// applyLive checks c (signature already verified) against the stored
// ledger and stores it in t: duplicates, equivocation, frozen accounts, the
// time limit, then the kind rules.
func (l *Ledger) applyLive(t *ledgerTxn, c *ledger.Candidate, now int64) error {
	e := &c.Entry
	a, err := t.Account(e.Account)
	if err != nil {
		return err
	}
	if e.Seq <= a.LastSeq {
		stored := a.LastHash
		var storedRaw []byte
		if e.Seq < a.LastSeq || c.Hash != stored {
			if storedRaw, err = t.get(entryKey(e.Account, e.Seq)); err != nil {
				return err
			}
			if storedRaw == nil {
				return storeErr(fmt.Errorf("entry %s seq %d missing below the head", e.Account, e.Seq))
			}
			stored = sha256.Sum256(storedRaw)
		}
		if stored == c.Hash {
			return ledger.Duplicate(e.Account, e.Seq)
		}
		if a.Frozen {
			return fmt.Errorf("%w: %s", ledger.ErrFrozen, e.Account)
		}
		proof := ledger.NewFraudProof(storedRaw, c.Raw)
		if err := t.set(fraudKey(e.Account), proof.Encode()); err != nil {
			return err
		}
		a.Frozen = true
		return &ledger.EquivocationError{Account: e.Account, Seq: e.Seq, Proof: proof}
	}
	if a.Frozen {
		return fmt.Errorf("%w: %s", ledger.ErrFrozen, e.Account)
	}
	if e.Time.UnixNano() > now {
		return fmt.Errorf("%w: %s seq %d is dated %v", ledger.ErrFutureTime, e.Account, e.Seq, e.Time)
	}
	if err := l.rules.Apply(t, e, c.Hash); err != nil {
		return err
	}
	return t.storeEntry(c)
}
