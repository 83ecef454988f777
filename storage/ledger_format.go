package storage

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

// ledgerFormat is the layout of the ledger's keys this build writes. Format
// 1 (no format key) kept a time index under ledger/t/ and only the seq and
// account in the hash index; format 2 keeps the entry's time in the hash
// index instead.
const (
	ledgerFormat     = 2
	keyLedgerFormat  = "ledger/meta/format"
	keyOldTimePrefix = "ledger/t/" // format 1's time index
)

// upgradeFormat brings the store to ledgerFormat: a new ledger is marked;
// a format 1 ledger gets its hash index rewritten from the entries and its
// time index dropped, then is marked. A crash part way leaves it unmarked,
// and the next open does it again.
func upgradeFormat(db *badger.DB) error {
	var format []byte
	var hasEntries bool
	err := db.View(func(txn *badger.Txn) error {
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
	switch {
	case err != nil:
		return err
	case bytes.Equal(format, []byte{ledgerFormat}):
		return nil
	case format != nil:
		return fmt.Errorf("%w: ledger format %x, this build reads format %d", ErrInconsistent, format, ledgerFormat)
	}
	if hasEntries {
		if err := rewriteHashIndex(db); err != nil {
			return fmt.Errorf("upgrade the ledger to format %d: %w", ledgerFormat, err)
		}
		if err := db.DropPrefix([]byte(keyOldTimePrefix)); err != nil {
			return fmt.Errorf("upgrade the ledger to format %d: drop the time index: %w", ledgerFormat, err)
		}
	}
	return db.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keyLedgerFormat), []byte{ledgerFormat})
	})
}

// rewriteHashIndex writes every entry's hash index value anew (format 2's
// hashRef, with the entry's time), in batches.
func rewriteHashIndex(db *badger.DB) error {
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyEntryPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			raw, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			e, err := DecodeEntry(raw)
			if err != nil {
				return fmt.Errorf("stored entry %x: %w", it.Item().Key(), err)
			}
			if err := wb.Set(hashKey(sha256.Sum256(raw)), hashRef(e.Account, e.Seq, e.Time.UnixNano())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return wb.Flush()
}
