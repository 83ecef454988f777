package storage

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"iter"
	"math/bits"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// ErrNotFound means no such entry.
var ErrNotFound = errors.New("ledger entry not found")

// Balance is an account's derived balance, in micro-credits: Balance is
// grants + payments received − payments sent; Held is the sum of its open
// holds, which it may not spend again.
type Balance struct {
	Balance uint64 `json:"balance"`
	Held    uint64 `json:"held"`
}

// Available is what the account may still hold for new jobs.
func (b Balance) Available() uint64 { return b.Balance - b.Held }

// Head is the last entry of an account's chain; Seq 0 for an account
// without entries.
type Head struct {
	Seq  uint64      `json:"seq"`
	Hash ledger.Hash `json:"hash"`
	Time time.Time   `json:"time"`
}

func (l *Ledger) get(k []byte) ([]byte, error) {
	if filtered(k) && !l.keys.mayHave(k) {
		return nil, nil
	}
	var v []byte
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		var err error
		v, err = getValue(txn, k)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ledger read: %w", err)
	}
	return v, nil
}

// Has reports whether the entry with hash h is stored.
func (l *Ledger) Has(h ledger.Hash) (bool, error) { return l.hasHash(h) }

func (l *Ledger) hasHash(h ledger.Hash) (bool, error) {
	v, err := l.get(hashKey(h))
	return v != nil, err
}

// committed returns an account's committed state, read from the store
// (not the writers' cache, so readers never wait for a batch).
func (l *Ledger) committed(id peer.ID) (ledger.AccountState, error) {
	v, err := l.get(acctKey(id))
	if err != nil || v == nil {
		return ledger.AccountState{}, err
	}
	a, err := ledger.DecodeAccountState(v)
	if err != nil {
		return ledger.AccountState{}, fmt.Errorf("account %s: %w", id, err)
	}
	return a, nil
}

// Balance returns an account's balance and holds.
func (l *Ledger) Balance(account peer.ID) (Balance, error) {
	a, err := l.committed(account)
	return Balance{Balance: a.Balance, Held: a.Held}, err
}

// Head returns the last entry of an account's chain.
func (l *Ledger) Head(account peer.ID) (Head, error) {
	a, err := l.committed(account)
	h := Head{Seq: a.LastSeq, Hash: a.LastHash}
	if a.LastSeq > 0 {
		h.Time = time.Unix(0, a.LastTime).UTC()
	}
	return h, err
}

// Frozen reports whether the account is frozen for equivocation.
func (l *Ledger) Frozen(account peer.ID) (bool, error) {
	a, err := l.committed(account)
	return a.Frozen, err
}

// HoldFor returns the account's open hold for job naming no provider (or
// written before version 3, whichever provider it names): a job's posting
// hold. HoldOf finds the holds of version 3 naming a provider.
func (l *Ledger) HoldFor(account peer.ID, job ledger.Hash) (ledger.HoldBody, bool, error) {
	var h *ledger.HoldRecord
	err := l.db.bdb.View(func(txn *badger.Txn) (err error) {
		h, err = holdIn(txn, account, job, "")
		return err
	})
	if err != nil {
		return ledger.HoldBody{}, false, fmt.Errorf("ledger read: %w", err)
	}
	if h == nil {
		return ledger.HoldBody{}, false, nil
	}
	return ledger.HoldBody{Job: job, Provider: h.Provider, Amount: h.Amount, Replicas: h.Replicas}, true, nil
}

// Leases returns how many leases and receipts of job the provider's chain
// holds: a receipt needs a lease that no receipt has used yet.
func (l *Ledger) Leases(provider peer.ID, job ledger.Hash) (leases, receipts uint64, err error) {
	v, err := l.get(leaseKey(provider, job))
	if err != nil || v == nil {
		return 0, 0, err
	}
	r, err := ledger.DecodeLeaseRecord(v)
	if err != nil {
		return 0, 0, fmt.Errorf("leases of %s: %w", provider, err)
	}
	return r.Leases, r.Receipts, nil
}

// Count returns how many entries the ledger stores.
func (l *Ledger) Count() uint64 { return l.count.Load() }

// PendingLen returns how many out-of-order entries wait in memory.
func (l *Ledger) PendingLen() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending.Len()
}

// Entries returns up to limit entries of the account's chain after
// afterSeq, in order (limit ≤ 0: all).
func (l *Ledger) Entries(account peer.ID, afterSeq uint64, limit int) ([]ledger.Entry, error) {
	var out []ledger.Entry
	prefix := append([]byte(keyEntryPrefix), account...)
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Seek(entryKey(account, afterSeq+1)); it.Valid(); it.Next() {
			if limit > 0 && len(out) >= limit {
				return nil
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			e, err := ledger.DecodeEntry(v)
			if err != nil {
				return fmt.Errorf("stored entry %x: %w", it.Item().Key(), err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("entries of %s: %w", account, err)
	}
	return out, nil
}

// EntryByHash returns the entry with hash h, or an error wrapping
// ErrNotFound. Its Encode() gives its exact bytes back.
func (l *Ledger) EntryByHash(h ledger.Hash) (ledger.Entry, error) {
	var e ledger.Entry
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		ref, err := getValue(txn, hashKey(h))
		if err != nil {
			return err
		}
		id, seq, _, ok := parseHashRef(ref)
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, h)
		}
		v, err := getValue(txn, entryKey(id, seq))
		if err != nil {
			return err
		}
		if v == nil {
			return fmt.Errorf("%w: %s (index without entry)", ErrNotFound, h)
		}
		e, err = ledger.DecodeEntry(v)
		return err
	})
	if err != nil {
		return ledger.Entry{}, fmt.Errorf("entry by hash: %w", err)
	}
	return e, nil
}

// LedgerItem is an entry's hash and time (Unix nanoseconds).
type LedgerItem struct {
	Time int64
	Hash ledger.Hash
}

// Items returns every entry's hash and time, in hash order, from one
// consistent snapshot (the hash index, which holds the times too); an
// error ends the sequence.
func (l *Ledger) Items() iter.Seq2[LedgerItem, error] {
	return func(yield func(LedgerItem, error) bool) {
		stopped := false
		err := l.db.bdb.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyHashPrefix), PrefetchValues: true})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				k := it.Item().Key()[len(keyHashPrefix):]
				if len(k) != len(ledger.Hash{}) {
					return fmt.Errorf("hash index key of %d bytes", len(k))
				}
				item := LedgerItem{Hash: ledger.Hash(k)}
				err := it.Item().Value(func(ref []byte) error {
					var ok bool
					if _, _, item.Time, ok = parseHashRef(ref); !ok {
						return fmt.Errorf("hash index value of %d bytes", len(ref))
					}
					return nil
				})
				if err != nil {
					return err
				}
				if !yield(item, nil) {
					stopped = true
					return nil
				}
			}
			return nil
		})
		if err != nil && !stopped {
			yield(LedgerItem{}, fmt.Errorf("ledger items: %w", err))
		}
	}
}

// Digest returns a digest of the whole entry set: SHA-256 over the entry
// hashes in byte order. Two ledgers with the same entries have the same
// digest.
func (l *Ledger) Digest() (ledger.Hash, error) {
	d := sha256.New()
	for item, err := range l.Items() {
		if err != nil {
			return ledger.Hash{}, err
		}
		d.Write(item.Hash[:])
	}
	return ledger.Hash(d.Sum(nil)), nil
}

// Total returns the sum of all balances. It equals Granted: payments move
// credits, only grants create them.
func (l *Ledger) Total() (uint64, error) {
	return l.sumAccounts(func(a ledger.AccountState) uint64 { return a.Balance })
}

// Granted returns the sum of the Grant entries stored.
func (l *Ledger) Granted() (uint64, error) {
	return l.sumAccounts(func(a ledger.AccountState) uint64 { return a.Granted })
}

func (l *Ledger) sumAccounts(f func(ledger.AccountState) uint64) (uint64, error) {
	var sum uint64
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyAcctPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			a, err := ledger.DecodeAccountState(v)
			if err != nil {
				return fmt.Errorf("account record %x: %w", it.Item().Key(), err)
			}
			var c uint64
			if sum, c = bits.Add64(sum, f(a), 0); c != 0 {
				return ledger.ErrOverflow
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sum ledger accounts: %w", err)
	}
	return sum, nil
}
