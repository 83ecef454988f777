package storage

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/parallel"
)

// IngestResult reports what IngestMany did.
type IngestResult struct {
	// Accepted lists the entries stored, in the order stored: given ones
	// and pending ones that became valid.
	Accepted []ledger.Entry
	// Duplicates counts given entries that were already stored.
	Duplicates int
	// Rejected lists given entries refused for good (they may become valid
	// later only for ErrFutureTime).
	Rejected []Rejection
	// Fraud lists the fraud proofs found, to gossip; their accounts are
	// frozen.
	Fraud []ledger.FraudProof
	// Pending is how many entries wait in the pending buffer afterwards.
	Pending int
}

// Rejection is an entry refused, with the reason.
type Rejection struct {
	// Account and Seq are zero when the bytes could not be decoded.
	Account peer.ID
	Seq     uint64
	Err     error
}

// Ingest validates and stores one entry received from a peer. It returns
// the decoded entry and nil, or an error wrapping one of the package's
// sentinels: ErrDuplicate (already stored: not a failure), ErrGap,
// ErrOverdraft and ErrUnfunded (kept pending: it is stored as soon as what
// it waits for arrives), ErrEquivocation (an *EquivocationError: the account is now
// frozen), or a refusal (ErrMalformed, ErrBadSignature, ErrBadLeaseGrant,
// ErrBrokenChain, ErrFrozen, …).
func (l *Ledger) Ingest(raw []byte) (ledger.Entry, error) {
	if len(raw) > ledger.MaxEntrySize {
		return ledger.Entry{}, fmt.Errorf("%w: %d bytes, limit %d", ledger.ErrMalformed, len(raw), ledger.MaxEntrySize)
	}
	e, err := ledger.DecodeEntry(raw)
	if err != nil {
		return ledger.Entry{}, err
	}
	h := sha256.Sum256(raw)
	// A stored entry needs no signature check.
	if ok, err := l.hasHash(h); err != nil {
		return e, err
	} else if ok {
		return e, ledger.Duplicate(e.Account, e.Seq)
	}
	c := &ledger.Candidate{Raw: raw, Entry: e, Hash: h, Err: e.VerifySignature(l.network)}
	if c.Err != nil {
		return e, c.Err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if p := l.pending.Get(c); p != nil {
		return e, p.WaitErr
	}
	r := l.newRun()
	r.received = true
	defer func() { r.t.txn.Discard() }()
	err = r.process(c)
	if isStoreErr(err) {
		return e, err
	}
	if ferr := r.finish(); ferr != nil {
		return e, ferr
	}
	return e, err
}

// IngestMany validates and stores a batch of entries received from peers,
// with one sync: the path for reconciliation. Signatures are checked in
// parallel; the entries are then applied in (account, seq) order, and
// pending ones retried as their predecessors (or the funds they wait for)
// arrive. Entries still waiting stay in a bounded buffer (oldest dropped
// first). The error is only for a failure of the store; the entries'
// fates are in the result.
func (l *Ledger) IngestMany(raws [][]byte) (IngestResult, error) {
	cs := make([]*ledger.Candidate, len(raws))
	for i, raw := range raws {
		c := &ledger.Candidate{Raw: raw}
		if c.Entry, c.Err = ledger.DecodeEntry(raw); c.Err == nil {
			c.Hash = sha256.Sum256(raw)
		}
		cs[i] = c
	}
	slices.SortStableFunc(cs, func(a, b *ledger.Candidate) int {
		if c := strings.Compare(string(a.Entry.Account), string(b.Entry.Account)); c != 0 {
			return c
		}
		if a.Entry.Seq != b.Entry.Seq {
			if a.Entry.Seq < b.Entry.Seq {
				return -1
			}
			return 1
		}
		return bytes.Compare(a.Hash[:], b.Hash[:])
	})
	// Signatures are checked on the workers while the entries already
	// checked are applied: the cores stay busy.
	ready, checked, wait := l.verifyAsync(cs)
	defer wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.newRun()
	r.received = true
	defer func() { r.t.txn.Discard() }()
	for i, c := range cs {
		if r.t.count > 0 && !checked(i) {
			// Commit what is applied while the workers check what
			// follows: Badger's writes then overlap the checks instead
			// of all coming after them. A chunk of sorted entries
			// spans few accounts, so this adds few account records.
			if err := r.commit(); err != nil {
				return r.res, err
			}
		}
		ready(i)
		if c.Err != nil {
			r.res.Rejected = append(r.res.Rejected, Rejection{Account: c.Entry.Account, Seq: c.Entry.Seq, Err: c.Err})
			continue
		}
		if l.pending.Get(c) != nil {
			// Given again: retried at the end, as it would be if new.
			// Nothing should leave an entry waiting once what it waits
			// for is stored (wakes), but if something did, giving the
			// entry again (reconciliation does) frees it.
			r.retryAccount(c.Entry.Account)
			continue
		}
		if err := r.process(c); isStoreErr(err) {
			return r.res, err
		}
	}
	err := r.finish()
	return r.res, err
}

// verifyAsync checks the signatures of cs (those decoded) on the ledger's
// workers, in chunks of SignatureBatch, each checked as one batch, in
// order. ready(i) waits until cs[i] is checked; checked(i) reports whether
// it is, without waiting; wait waits for all.
func (l *Ledger) verifyAsync(cs []*ledger.Candidate) (ready func(i int), checked func(i int) bool, wait func()) {
	const chunk = ledger.SignatureBatch
	n := (len(cs) + chunk - 1) / chunk
	dones := make([]chan struct{}, n)
	for k := range dones {
		dones[k] = make(chan struct{})
	}
	go parallel.For(l.workers, n, func(k int) {
		ledger.VerifyBatch(l.network, cs[k*chunk:min((k+1)*chunk, len(cs))])
		close(dones[k])
	})
	ready = func(i int) { <-dones[i/chunk] }
	checked = func(i int) bool {
		select {
		case <-dones[i/chunk]:
			return true
		default:
			return false
		}
	}
	wait = func() {
		for _, d := range dones {
			<-d
		}
	}
	return ready, checked, wait
}

func isStoreErr(err error) bool {
	var se *storeError
	return errors.As(err, &se)
}
