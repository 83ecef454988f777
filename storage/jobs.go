package storage

import (
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

const jobPrefix = "job/"

// PutJobs stores job records (opaque bytes keyed by job ID) in one
// transaction, so a batch of state changes lands together or not at all.
func (db *DB) PutJobs(records map[string][]byte) error {
	if len(records) == 0 {
		return nil
	}
	err := db.bdb.Update(func(txn *badger.Txn) error {
		for id, rec := range records {
			if err := txn.Set([]byte(jobPrefix+id), rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store %d jobs: %w", len(records), err)
	}
	return nil
}

// Jobs calls fn with every stored job record.
func (db *DB) Jobs(fn func(id string, rec []byte) error) error {
	return db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(jobPrefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("read job: %w", err)
			}
			if err := fn(string(it.Item().Key()[len(jobPrefix):]), v); err != nil {
				return err
			}
		}
		return nil
	})
}
