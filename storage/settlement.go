package storage

import (
	"encoding/binary"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"
)

// HoldEntry returns the entry of account's open hold for job: what a
// requester attaches to an award.
func (l *Ledger) HoldEntry(account peer.ID, job Hash) (Entry, bool, error) {
	v, err := l.get(holdKey(account, job))
	if err != nil || v == nil {
		return Entry{}, false, err
	}
	h, err := decodeHoldRec(v)
	if err != nil {
		return Entry{}, false, fmt.Errorf("hold of %s: %w", account, err)
	}
	return l.entryAt(account, h.seq)
}

// PaymentFor returns account's payment entry for job, if it paid it.
func (l *Ledger) PaymentFor(account peer.ID, job Hash) (Entry, bool, error) {
	es, err := l.EscrowFor(account, job)
	if err != nil || es.Payment == nil {
		return Entry{}, false, err
	}
	return *es.Payment, true, nil
}

// Escrow is how account's escrow for a job stands: its payment entry if
// it paid the job, else its open hold, else neither (never held, or
// released).
type Escrow struct {
	Payment *Entry
	Hold    *HoldBody
}

// EscrowFor reads account's payment and hold for job in one view of the
// ledger. Two separate reads could straddle the settlement that writes the
// payment and closes the hold together, and see neither.
func (l *Ledger) EscrowFor(account peer.ID, job Hash) (Escrow, error) {
	var out Escrow
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		paid, err := getValue(txn, paidKey(account, job))
		if err != nil {
			return err
		}
		if len(paid) == 8 {
			seq := binary.BigEndian.Uint64(paid)
			raw, err := getValue(txn, entryKey(account, seq))
			if err != nil || raw == nil {
				return err
			}
			e, err := DecodeEntry(raw)
			if err != nil {
				return fmt.Errorf("stored entry %d of %s: %w", seq, account, err)
			}
			out.Payment = &e
			return nil
		}
		rec, err := getValue(txn, holdKey(account, job))
		if err != nil || rec == nil {
			return err
		}
		h, err := decodeHoldRec(rec)
		if err != nil {
			return fmt.Errorf("hold of %s: %w", account, err)
		}
		out.Hold = &HoldBody{Job: job, Provider: h.provider, Amount: h.amount}
		return nil
	})
	if err != nil {
		return Escrow{}, fmt.Errorf("escrow of %s: %w", account, err)
	}
	return out, nil
}

// entryAt reads one entry by its key: a point read, much cheaper than the
// iterator Entries opens (an award's escrow looks up a hold this way).
func (l *Ledger) entryAt(account peer.ID, seq uint64) (Entry, bool, error) {
	v, err := l.get(entryKey(account, seq))
	if err != nil || v == nil {
		return Entry{}, false, err
	}
	e, err := DecodeEntry(v)
	if err != nil {
		return Entry{}, false, fmt.Errorf("stored entry %d of %s: %w", seq, account, err)
	}
	return e, true, nil
}

// WithStoreHook has the ledger call f with every entry it stores, own or
// received, once it is committed; f runs under the ledger's lock and must
// not call the ledger. A node keeps its reconciliation set current with it.
func WithStoreHook(f func(Entry)) LedgerOption {
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
