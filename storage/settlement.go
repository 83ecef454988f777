package storage

import (
	"encoding/binary"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// HoldEntry returns the entry of account's open hold for job: what a
// requester attaches to an award.
func (l *Ledger) HoldEntry(account peer.ID, job ledger.Hash) (ledger.Entry, bool, error) {
	var e *ledger.Entry
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		h, err := holdIn(txn, account, job)
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

// Escrow is how account's escrow for a job stands: its payment entry if
// it paid the job, else its open hold, else neither (never held, or
// released).
type Escrow struct {
	Payment *ledger.Entry
	Hold    *ledger.HoldBody
}

// EscrowFor reads account's payment and hold for job in one view of the
// ledger. Two separate reads could straddle the settlement that writes the
// payment and closes the hold together, and see neither.
func (l *Ledger) EscrowFor(account peer.ID, job ledger.Hash) (Escrow, error) {
	var out Escrow
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		paid, err := getValue(txn, paidKey(account, job))
		if err != nil {
			return err
		}
		if len(paid) == 8 {
			out.Payment, err = entryIn(txn, account, binary.BigEndian.Uint64(paid))
			return err
		}
		h, err := holdIn(txn, account, job)
		if err == nil && h != nil {
			out.Hold = &ledger.HoldBody{Job: job, Provider: h.Provider, Amount: h.Amount}
		}
		return err
	})
	if err != nil {
		return Escrow{}, fmt.Errorf("escrow of %s: %w", account, err)
	}
	return out, nil
}

// holdIn reads account's open hold record for job; nil if there is none.
func holdIn(txn *badger.Txn, account peer.ID, job ledger.Hash) (*ledger.HoldRecord, error) {
	v, err := getValue(txn, holdKey(account, job))
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
}

// OpenHolds returns account's open holds, in job order: what a node looks
// through for holds that nothing will settle (a job its restored data dir
// forgot).
func (l *Ledger) OpenHolds(account peer.ID) ([]OpenHold, error) {
	var out []OpenHold
	prefix := append([]byte(keyHoldPrefix), account...)
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != len(prefix)+len(ledger.Hash{}) {
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
			out = append(out, OpenHold{Job: ledger.Hash(k[len(prefix):]), Provider: h.Provider, Amount: h.Amount, Seq: h.Seq, Time: e.Time})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open holds of %s: %w", account, err)
	}
	return out, nil
}
