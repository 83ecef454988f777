package storage

import (
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/mira-market/mira/protocol/ledger"
)

// Append writes an entry of priv's account (an Ed25519 key) with body, at
// the head of its chain, after the same checks as Ingest (ErrOverdraft,
// ErrUnfunded, ErrNoHold, ErrFrozen, …). It returns once the entry is on disk.
func (l *Ledger) Append(priv crypto.PrivKey, body ledger.Body) (ledger.Entry, error) {
	es, err := l.AppendBatch(priv, []ledger.Body{body})
	if err != nil {
		return ledger.Entry{}, err
	}
	return es[0], nil
}

// AppendBatch writes entries of priv's account with the bodies, in order,
// all or none, with one sync. At most MaxAppendBatch bodies.
func (l *Ledger) AppendBatch(priv crypto.PrivKey, bodies []ledger.Body) ([]ledger.Entry, error) {
	if len(bodies) == 0 {
		return nil, nil
	}
	if len(bodies) > MaxAppendBatch {
		return nil, fmt.Errorf("append %d entries: at most %d in a batch", len(bodies), MaxAppendBatch)
	}
	id, err := ledger.AccountOf(priv)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock().UnixNano()
	r := l.newRun()
	defer func() { r.t.txn.Discard() }()
	for _, body := range bodies {
		if body == nil {
			return nil, fmt.Errorf("%w: entry without a body", ledger.ErrMalformed)
		}
		a, err := r.t.Account(id)
		if err != nil {
			return nil, err
		}
		if a.Frozen {
			return nil, fmt.Errorf("%w: %s", ledger.ErrFrozen, id)
		}
		e := ledger.Entry{Account: id, Seq: a.LastSeq + 1, Prev: a.LastHash, Time: time.Unix(0, max(now, a.LastTime)), Body: body}
		if err := e.Sign(l.network, priv); err != nil {
			return nil, err
		}
		raw := e.Encode()
		// Decoding what others will decode catches bodies out of range.
		if e, err = ledger.DecodeEntry(raw); err != nil {
			return nil, err
		}
		// Others check a lease's grant with its signature, which this
		// node's own entries skip: a lease they would refuse must not
		// enter this chain, where it would stop every later entry.
		if err := e.VerifyGrant(l.network); err != nil {
			return nil, err
		}
		if r.t.full() {
			return nil, fmt.Errorf("append batch too large for one transaction")
		}
		if err := l.applyLive(r.t, &ledger.Candidate{Raw: raw, Entry: e, Hash: sha256.Sum256(raw)}, max(r.now, e.Time.UnixNano())); err != nil {
			return nil, err
		}
	}
	// Own entries are all in the first transaction; a payment among them
	// may be what a pending hold waited for, so finish retries those.
	if err := r.finish(); err != nil {
		return nil, err
	}
	return r.res.Accepted[:len(bodies)], nil
}
