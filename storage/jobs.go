package storage

import (
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

const jobPrefix = "job/"

// PutJobs stores job records (opaque bytes keyed by job ID) in as few
// transactions as Badger takes: one, unless the records are more than one
// transaction may hold, when they go in several (each record whole).
func (db *DB) PutJobs(records map[string][]byte) error {
	if len(records) == 0 {
		return nil
	}
	if err := db.writable(); err != nil {
		return err
	}
	txn := db.bdb.NewTransaction(true)
	defer func() { txn.Discard() }()
	for id, rec := range records {
		key := []byte(jobPrefix + id)
		err := txn.Set(key, rec)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err = txn.Commit(); err == nil {
				txn = db.bdb.NewTransaction(true)
				err = txn.Set(key, rec)
			}
		}
		if err != nil {
			return fmt.Errorf("store %d jobs: %w", len(records), err)
		}
	}
	if err := txn.Commit(); err != nil {
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

const billPrefix = "bill/"

// PutBills stores a provider's open bills' records (opaque bytes by key)
// and deletes the records of drop, in one transaction: a handful at a
// time, each small.
func (db *DB) PutBills(records map[string][]byte, drop []string) error {
	if len(records)+len(drop) == 0 {
		return nil
	}
	if err := db.writable(); err != nil {
		return err
	}
	err := db.bdb.Update(func(txn *badger.Txn) error {
		for key, rec := range records {
			if err := txn.Set([]byte(billPrefix+key), rec); err != nil {
				return err
			}
		}
		for _, key := range drop {
			if err := txn.Delete([]byte(billPrefix + key)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store %d bills, drop %d: %w", len(records), len(drop), err)
	}
	return nil
}

// Bills calls fn with every stored bill record.
func (db *DB) Bills(fn func(key string, rec []byte) error) error {
	return db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(billPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("read bill: %w", err)
			}
			if err := fn(string(it.Item().Key()[len(billPrefix):]), v); err != nil {
				return err
			}
		}
		return nil
	})
}
