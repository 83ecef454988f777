package storage

import (
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

const blobRecordPrefix = "blob/meta/"

// PutBlobRecord stores the record of the blob named name (opaque bytes:
// the blob store's bookkeeping of why it keeps the blob), so that what a
// blob is for survives a restart.
func (db *DB) PutBlobRecord(name string, rec []byte) error {
	err := db.update(func(txn *badger.Txn) error {
		return txn.Set([]byte(blobRecordPrefix+name), rec)
	})
	if err != nil {
		return fmt.Errorf("store blob record %s: %w", name, err)
	}
	return nil
}

// DeleteBlobRecord removes the record of the blob named name.
func (db *DB) DeleteBlobRecord(name string) error {
	err := db.update(func(txn *badger.Txn) error {
		return txn.Delete([]byte(blobRecordPrefix + name))
	})
	if err != nil {
		return fmt.Errorf("delete blob record %s: %w", name, err)
	}
	return nil
}

// BlobRecords calls fn with every stored blob record.
func (db *DB) BlobRecords(fn func(name string, rec []byte) error) error {
	return db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(blobRecordPrefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("read blob record: %w", err)
			}
			if err := fn(string(it.Item().Key()[len(blobRecordPrefix):]), v); err != nil {
				return err
			}
		}
		return nil
	})
}
