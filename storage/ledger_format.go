package storage

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// ledgerFormat is the layout of the ledger's keys this build writes. Format
// 1 (no format key) kept a time index under ledger/t/ and only the seq and
// account in the hash index; format 2 keeps the entry's time in the hash
// index instead; format 3 adds the holds ever written (ledger/fund/), the
// leases and receipts of each provider's jobs (ledger/lease/), and each
// account's rate limit state to its record (version 2); format 4 stores
// entries of version 2 (leases with their grants), which a build of
// format 3 cannot decode, and keeps format 3's keys: a store of format 3
// is only marked, its entries of version 1 kept as they are; format 5
// stores entries of version 3 (claims), keeps the holds naming a provider
// under their provider too (ledger/hold/<account><job><provider>, where
// holds of older entries stay under <account><job>), the final claims
// (ledger/claim/), each peer's reputation (ledger/rep/), the last
// receipt's time and usage and the votes in the lease records, and the
// voters of jobs with replicas (ledger/voters/), and counts the holds of
// version 3 naming a provider apart (ledger.V3Holds); account records
// flag a chain of version 3 in their frozen byte, which records written
// before read as not.
const (
	ledgerFormat     = 5
	keyLedgerFormat  = "ledger/meta/format"
	keyOldTimePrefix = "ledger/t/" // format 1's time index
)

// upgradeFormat brings the store to ledgerFormat: a new ledger is marked;
// an older one is rewritten step by step (format 1 to 2: the hash index
// rewritten from the entries and the time index dropped; 2 to 3: the new
// indexes and account records built from the entries under rate; 3 to 4:
// nothing to rebuild; 4 to 5: the lease records with their last receipt,
// and the reputations, built from the entries), then marked. A crash part
// way leaves it at its old mark, and the next open does the steps again.
//
// Entries stored under an older format stay, even those the rules of this
// one would refuse (a lease without a hold or without a grant, a hold of
// zero, an account's entries over the rate): they are signed history.
// Verify reports them.
func upgradeFormat(db *DB, rate ledger.RateLimit) error {
	var format []byte
	var hasEntries bool
	err := db.bdb.View(func(txn *badger.Txn) error {
		var err error
		if format, err = getValue(txn, []byte(keyLedgerFormat)); err != nil {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyEntryPrefix)})
		defer it.Close()
		it.Rewind()
		hasEntries = it.Valid()
		return nil
	})
	from := 1
	switch {
	case err != nil:
		return err
	case format == nil:
	case len(format) == 1 && format[0] >= 2 && format[0] <= ledgerFormat:
		from = int(format[0])
	default:
		return fmt.Errorf("%w: ledger format %x, this build reads formats up to %d", ErrInconsistent, format, ledgerFormat)
	}
	if from == ledgerFormat {
		return nil
	}
	// An upgrade writes the whole ledger's indexes again: it waits for
	// room like every other write, rather than start what it cannot end.
	if err := db.writable(); err != nil {
		return fmt.Errorf("upgrade the ledger to format %d: %w", ledgerFormat, err)
	}
	if hasEntries && from < 2 {
		if err := rewriteHashIndex(db); err != nil {
			return fmt.Errorf("upgrade the ledger to format 2: %w", err)
		}
		if err := db.dropPrefix(keyOldTimePrefix); err != nil {
			return fmt.Errorf("upgrade the ledger to format 2: drop the time index: %w", err)
		}
	}
	if from < 3 {
		if err := buildFormat3(db, rate); err != nil {
			return fmt.Errorf("upgrade the ledger to format 3: %w", err)
		}
	}
	if from < 5 {
		if err := buildFormat5(db); err != nil {
			return fmt.Errorf("upgrade the ledger to format 5: %w", err)
		}
	}
	return db.update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keyLedgerFormat), []byte{ledgerFormat})
	})
}

// buildFormat3 builds what format 3 adds from the entries: the holds ever
// written, and every account record rewritten with its rate limit state,
// as the rules would have left them. (Format 3's lease records are built
// by buildFormat5, which adds to them.)
func buildFormat3(db *DB, rate ledger.RateLimit) error {
	if err := db.dropPrefix(keyFundPrefix); err != nil {
		return err
	}
	wb := db.newGuardedBatch()
	defer wb.cancel()
	paced := make(map[peer.ID]uint64)
	// One account's chain at a time (the entries come in key order): its
	// counts are complete when the next account starts.
	var account peer.ID
	funds := make(map[string]uint64)
	flush := func() error {
		for k, n := range funds {
			if err := wb.set([]byte(k), binary.BigEndian.AppendUint64(nil, n)); err != nil {
				return err
			}
		}
		clear(funds)
		return nil
	}
	err := db.bdb.View(func(txn *badger.Txn) error {
		err := forEachStoredEntry(txn, func(_ []byte, e ledger.Entry) error {
			if e.Account != account {
				if err := flush(); err != nil {
					return err
				}
				account = e.Account
			}
			// An entry over the rate is history all the same: it paces
			// the ones after it as if it had been admitted.
			paced[e.Account] = rate.Charge(paced[e.Account], e.Time.UnixNano())
			if b, ok := e.Body.(ledger.HoldBody); ok {
				funds[string(fundKey(e.Account, b.Job, b.Provider))]++
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := flush(); err != nil {
			return err
		}
		return rewriteAccounts(txn, wb, paced)
	})
	if err != nil {
		return err
	}
	return wb.flush()
}

// buildFormat5 builds what format 5 adds from the entries, as the rules
// would have left them (a store before format 5 holds no entry of
// version 3, so none of the counters only they bring, nor an account
// whose chain is of version 3): the lease records with their last
// receipt, and the reputations (ledger.ReputationOf).
func buildFormat5(db *DB) error {
	for _, p := range []string{keyLeasePrefix, keyRepPrefix} {
		if err := db.dropPrefix(p); err != nil {
			return err
		}
	}
	wb := db.newGuardedBatch()
	defer wb.cancel()
	// One account's chain at a time (the entries come in key order): its
	// lease records are complete when the next account starts. The
	// reputations of all are kept to the end: payments count for their
	// payees too.
	var account peer.ID
	leased := make(map[string]ledger.LeaseRecord)
	reps := make(map[peer.ID]*ledger.Reputation)
	rep := func(id peer.ID) *ledger.Reputation {
		r := reps[id]
		if r == nil {
			r = &ledger.Reputation{}
			reps[id] = r
		}
		return r
	}
	flush := func() error {
		for k, r := range leased {
			if err := wb.set([]byte(k), r.Encode()); err != nil {
				return err
			}
		}
		clear(leased)
		return nil
	}
	err := db.bdb.View(func(txn *badger.Txn) error {
		return forEachStoredEntry(txn, func(_ []byte, e ledger.Entry) error {
			if e.Account != account {
				if err := flush(); err != nil {
					return err
				}
				account = e.Account
			}
			to := rep(e.Account)
			if p, ok := e.Body.(ledger.PaymentBody); ok {
				to = rep(p.To)
			}
			ledger.ReputationOf(&e, rep(e.Account), to)
			switch b := e.Body.(type) {
			case ledger.LeaseBody:
				k := string(leaseKey(e.Account, b.Job))
				r := leased[k]
				r.Leases++
				leased[k] = r
			case ledger.ReceiptBody:
				k := string(leaseKey(e.Account, b.Job))
				r := leased[k]
				r.Receipts++
				r.LastReceipt, r.GPUMS, r.WallMS = e.Time.UnixNano(), b.Usage.GPUMS, b.Usage.WallMS
				leased[k] = r
			}
			return nil
		})
	})
	if err == nil {
		err = flush()
	}
	for id, r := range reps {
		if err == nil && *r != (ledger.Reputation{}) {
			err = wb.set(repKey(id), r.Encode())
		}
	}
	if err != nil {
		return err
	}
	return wb.flush()
}

// rewriteAccounts writes every account record in this format's version,
// with the account's paced time.
func rewriteAccounts(txn *badger.Txn, wb *guardedBatch, paced map[peer.ID]uint64) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyAcctPrefix), PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().KeyCopy(nil)
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		a, err := ledger.DecodeAccountStateAny(v)
		if err != nil {
			return fmt.Errorf("account record %x: %w", k, err)
		}
		a.Paced = paced[peer.ID(k[len(keyAcctPrefix):])]
		if err := wb.set(k, a.Encode()); err != nil {
			return err
		}
	}
	return nil
}

// rewriteHashIndex writes every entry's hash index value anew (format 2's
// hashRef, with the entry's time), in batches.
func rewriteHashIndex(db *DB) error {
	wb := db.newGuardedBatch()
	defer wb.cancel()
	err := db.bdb.View(func(txn *badger.Txn) error {
		return forEachStoredEntry(txn, func(raw []byte, e ledger.Entry) error {
			return wb.set(hashKey(sha256.Sum256(raw)), hashRef(e.Account, e.Seq, e.Time.UnixNano()))
		})
	})
	if err != nil {
		return err
	}
	return wb.flush()
}

// forEachStoredEntry calls fn with every stored entry, raw and decoded, in
// key order (account, then seq).
func forEachStoredEntry(txn *badger.Txn, fn func(raw []byte, e ledger.Entry) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyEntryPrefix), PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		raw, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		e, err := ledger.DecodeEntry(raw)
		if err != nil {
			return fmt.Errorf("stored entry %x: %w", it.Item().Key(), err)
		}
		if err := fn(raw, e); err != nil {
			return err
		}
	}
	return nil
}
