package storage

import (
	"encoding/binary"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// HoldEntry returns the entry of account's open hold for job naming no
// provider (or written before version 3): what a requester attaches to an
// award it backs. HoldEntryOf finds a hold naming a provider.
func (l *Ledger) HoldEntry(account peer.ID, job ledger.Hash) (ledger.Entry, bool, error) {
	var e *ledger.Entry
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		h, err := holdIn(txn, account, job, "")
		if err != nil || h == nil {
			return err
		}
		e, err = entryIn(txn, account, h.Seq)
		return err
	})
	if err != nil {
		return ledger.Entry{}, false, fmt.Errorf("ledger read: %w", err)
	}
	if e == nil {
		return ledger.Entry{}, false, nil
	}
	return *e, true, nil
}

// PaymentFor returns account's payment entry for job, if it paid it.
func (l *Ledger) PaymentFor(account peer.ID, job ledger.Hash) (ledger.Entry, bool, error) {
	es, err := l.EscrowFor(account, job)
	if err != nil || es.Payment == nil {
		return ledger.Entry{}, false, err
	}
	return *es.Payment, true, nil
}

// Escrow is how account's escrow for a job stands, as the requester's
// ledger shows it: the final claims of providers paid from its holds (of
// version 3), its payment entry if it paid the job itself (version 2 and
// before), and its holds of the job still open.
type Escrow struct {
	// Claims are the providers' final claims of the job against
	// account's holds, in provider order: each a provider paid.
	Claims  []ledger.Entry
	Payment *ledger.Entry
	// Hold is the open hold naming no provider (a posting hold, or one
	// written before version 3); Named the open holds of version 3
	// naming a provider, in provider order.
	Hold  *ledger.HoldBody
	Named []OpenHold
}

// EscrowFor reads account's claims, payment and holds for job in one view
// of the ledger. Separate reads could straddle the settlement that closes
// a hold and pays from it in one entry, and see neither.
func (l *Ledger) EscrowFor(account peer.ID, job ledger.Hash) (Escrow, error) {
	var out Escrow
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		var err error
		if out.Claims, err = finalClaimsIn(txn, account, job); err != nil {
			return err
		}
		paid, err := getValue(txn, paidKey(account, job))
		if err != nil {
			return err
		}
		if len(paid) == 8 {
			if out.Payment, err = entryIn(txn, account, binary.BigEndian.Uint64(paid)); err != nil {
				return err
			}
		}
		return scanHolds(txn, holdKey(account, job, ""), account, func(o OpenHold) {
			if !o.Named {
				out.Hold = &ledger.HoldBody{Job: job, Provider: o.Provider, Amount: o.Amount, Replicas: o.Replicas}
				return
			}
			out.Named = append(out.Named, o)
		})
	})
	if err != nil {
		return Escrow{}, fmt.Errorf("escrow of %s: %w", account, err)
	}
	return out, nil
}

// FinalClaims returns the final claims of requester's job that this ledger
// applied, in provider order: one for each provider paid for the job.
func (l *Ledger) FinalClaims(requester peer.ID, job ledger.Hash) ([]ledger.Entry, error) {
	var out []ledger.Entry
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		var err error
		out, err = finalClaimsIn(txn, requester, job)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("claims of job %s: %w", job, err)
	}
	return out, nil
}

// finalClaimsIn reads the final claims of requester's job (see claimKey).
func finalClaimsIn(txn *badger.Txn, requester peer.ID, job ledger.Hash) ([]ledger.Entry, error) {
	prefix := claimKey(requester, job, "")
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
	defer it.Close()
	var out []ledger.Entry
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != len(prefix)+ledger.AccountIDLen {
			continue // another requester's key that extends this one's bytes
		}
		provider := peer.ID(k[len(prefix):])
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return nil, err
		}
		if len(v) != 8 {
			return nil, fmt.Errorf("claim %x: bad value", k)
		}
		e, err := entryIn(txn, provider, binary.BigEndian.Uint64(v))
		if err != nil {
			return nil, err
		}
		if e == nil {
			return nil, fmt.Errorf("claim %x: entry missing", k)
		}
		out = append(out, *e)
	}
	return out, nil
}

// holdIn reads account's open hold record for job naming provider (see
// ledger.State.Hold); nil if there is none.
func holdIn(txn *badger.Txn, account peer.ID, job ledger.Hash, provider peer.ID) (*ledger.HoldRecord, error) {
	v, err := getValue(txn, holdKey(account, job, provider))
	if err != nil || v == nil {
		return nil, err
	}
	h, err := ledger.DecodeHoldRecord(v)
	if err != nil {
		return nil, fmt.Errorf("hold of %s: %w", account, err)
	}
	return &h, nil
}

// entryIn reads one entry by its key (a point read, much cheaper than the
// iterator Entries opens); nil if it is not stored.
func entryIn(txn *badger.Txn, account peer.ID, seq uint64) (*ledger.Entry, error) {
	v, err := getValue(txn, entryKey(account, seq))
	if err != nil || v == nil {
		return nil, err
	}
	e, err := ledger.DecodeEntry(v)
	if err != nil {
		return nil, fmt.Errorf("stored entry %d of %s: %w", seq, account, err)
	}
	return &e, nil
}

// WithStoreHook has the ledger call f with every entry it stores, own or
// received, once it is committed; f runs under the ledger's lock and must
// not call the ledger. A node keeps its reconciliation set current with it.
func WithStoreHook(f func(ledger.Entry)) LedgerOption {
	return func(l *Ledger) error {
		l.onStore = f
		return nil
	}
}

// WithReceivedSync sets whether Ingest and IngestMany sync the entries
// they store (default true). Append always syncs: a node's own entries
// must survive a power loss, since it may have acted on them. Entries from
// peers need not: a process crash loses nothing the OS holds, and what a
// power loss drops, reconciliation fetches again.
func WithReceivedSync(sync bool) LedgerOption {
	return func(l *Ledger) error {
		l.syncReceived = sync
		return nil
	}
}

// OpenHold is one of an account's open holds, with the time of its entry.
type OpenHold struct {
	Job      ledger.Hash
	Provider peer.ID // empty: the hold names no provider
	Amount   uint64
	Seq      uint64    // the hold entry's seq
	Time     time.Time // the hold entry's time
	// Of a hold of version 3 naming a provider: the end of its claim
	// window (zero time for the others), what claims drew from it so far.
	Expiry  time.Time
	Claimed uint64
	// Replicas is the job's verification k the hold states (0: not
	// stated, a hold naming none may leave it out).
	Replicas uint8
	// Named is whether the hold is of version 3 naming Provider: only
	// Provider closes it before Expiry. A hold written before version 3
	// may name a provider without being Named.
	Named bool
}

func openHold(job ledger.Hash, h *ledger.HoldRecord, named bool, at time.Time) OpenHold {
	o := OpenHold{Job: job, Provider: h.Provider, Amount: h.Amount, Seq: h.Seq, Time: at,
		Claimed: h.Claimed, Replicas: h.Replicas, Named: named}
	if h.Expiry != 0 {
		o.Expiry = time.Unix(0, h.Expiry).UTC()
	}
	return o
}

// OpenHolds returns account's open holds, in job order (for each job the
// one naming no provider first, then those naming one in provider
// order): what a node looks through for holds that nothing will settle
// (a job its restored data dir forgot).
func (l *Ledger) OpenHolds(account peer.ID) ([]OpenHold, error) {
	var out []OpenHold
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		return scanHolds(txn, append([]byte(keyHoldPrefix), account...), account, func(o OpenHold) { out = append(out, o) })
	})
	if err != nil {
		return nil, fmt.Errorf("open holds of %s: %w", account, err)
	}
	return out, nil
}

// JobHolds returns account's open holds of job: the one naming no
// provider, if open, first, then those naming one, in provider order.
func (l *Ledger) JobHolds(account peer.ID, job ledger.Hash) ([]OpenHold, error) {
	var out []OpenHold
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		return scanHolds(txn, holdKey(account, job, ""), account, func(o OpenHold) { out = append(out, o) })
	})
	if err != nil {
		return nil, fmt.Errorf("open holds of %s for job %s: %w", account, job, err)
	}
	return out, nil
}

// scanHolds calls f with each open hold of account under prefix (a prefix
// of its hold keys), with its entry's time.
func scanHolds(txn *badger.Txn, prefix []byte, account peer.ID, f func(OpenHold)) error {
	base := len(keyHoldPrefix) + len(account)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		named := len(k) == base+len(ledger.Hash{})+ledger.AccountIDLen
		if len(k) != base+len(ledger.Hash{}) && !named {
			continue // another account's key that extends this one's bytes
		}
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		h, err := ledger.DecodeHoldRecord(v)
		if err != nil {
			return fmt.Errorf("hold %x: %w", k, err)
		}
		e, err := entryIn(txn, account, h.Seq)
		if err != nil {
			return err
		}
		if e == nil {
			return fmt.Errorf("hold %x: entry %d missing", k, h.Seq)
		}
		f(openHold(ledger.Hash(k[base:base+len(ledger.Hash{})]), &h, named, e.Time))
	}
	return nil
}

// HoldOf returns requester's open hold of job naming provider (of version
// 3), or with provider "" the job's hold naming none (or written before
// version 3), as ledger.State.Hold names them. A provider reads the hold
// its claims draw on with it: Seq is the claim's HoldSeq, Claimed what it
// claimed before.
func (l *Ledger) HoldOf(requester peer.ID, job ledger.Hash, provider peer.ID) (OpenHold, bool, error) {
	_, o, ok, err := l.HoldEntryOf(requester, job, provider)
	return o, ok, err
}

// HoldEntryOf is HoldOf with the hold's entry: what a requester attaches
// to an award.
func (l *Ledger) HoldEntryOf(requester peer.ID, job ledger.Hash, provider peer.ID) (ledger.Entry, OpenHold, bool, error) {
	var e *ledger.Entry
	var o OpenHold
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		h, err := holdIn(txn, requester, job, provider)
		if err != nil || h == nil {
			return err
		}
		if e, err = entryIn(txn, requester, h.Seq); err == nil && e == nil {
			err = fmt.Errorf("hold of job %s: entry %d missing", job, h.Seq)
		}
		if err == nil {
			o = openHold(job, h, provider != "", e.Time)
		}
		return err
	})
	if err != nil {
		return ledger.Entry{}, OpenHold{}, false, fmt.Errorf("ledger read: %w", err)
	}
	if e == nil {
		return ledger.Entry{}, OpenHold{}, false, nil
	}
	return *e, o, true, nil
}

// ClaimableHold returns the hold a claim (or waive) by provider dated at
// would draw on: requester's open hold of job naming provider, if at is
// within its claim window.
func (l *Ledger) ClaimableHold(provider, requester peer.ID, job ledger.Hash, at time.Time) (OpenHold, bool, error) {
	o, ok, err := l.HoldOf(requester, job, provider)
	if err != nil || !ok || at.After(o.Expiry) {
		return OpenHold{}, false, err
	}
	return o, true, nil
}

// FinalClaim returns provider's final claim of requester's job, if it
// wrote one (and this ledger applied it): the job is paid to it.
func (l *Ledger) FinalClaim(requester peer.ID, job ledger.Hash, provider peer.ID) (ledger.Entry, bool, error) {
	var e *ledger.Entry
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		v, err := getValue(txn, claimKey(requester, job, provider))
		if err != nil || len(v) != 8 {
			return err
		}
		e, err = entryIn(txn, provider, binary.BigEndian.Uint64(v))
		return err
	})
	if err != nil || e == nil {
		return ledger.Entry{}, false, err
	}
	return *e, true, nil
}

// Claimed reports whether provider's final claim of requester's job is
// applied: the job is paid to it, and no hold naming it can be written
// for the job again.
func (l *Ledger) Claimed(requester peer.ID, job ledger.Hash, provider peer.ID) (bool, error) {
	v, err := l.get(claimKey(requester, job, provider))
	return v != nil, err
}

// Reputation returns a peer's reputation counters as the entries this
// ledger applied give them (zero for a peer without any).
func (l *Ledger) Reputation(id peer.ID) (ledger.Reputation, error) {
	v, err := l.get(repKey(id))
	if err != nil || v == nil {
		return ledger.Reputation{}, err
	}
	r, err := ledger.DecodeReputation(v)
	if err != nil {
		return r, fmt.Errorf("reputation of %s: %w", id, err)
	}
	return r, nil
}

// Reputations calls fn with every peer that has reputation counters, in
// peer ID order, from one snapshot; an error of fn ends the scan and is
// returned.
func (l *Ledger) Reputations(fn func(peer.ID, ledger.Reputation) error) error {
	return l.db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyRepPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			id := peer.ID(it.Item().KeyCopy(nil)[len(keyRepPrefix):])
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			r, err := ledger.DecodeReputation(v)
			if err != nil {
				return fmt.Errorf("reputation of %s: %w", id, err)
			}
			if err := fn(id, r); err != nil {
				return err
			}
		}
		return nil
	})
}
