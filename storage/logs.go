package storage

import (
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

const jobLogPrefix = "log/"

// PutJobLog stores the complete log of a job run under name. Small logs
// live here rather than in a file each: a file per run costs more than
// the run of a short job.
func (db *DB) PutJobLog(name string, log []byte) error {
	err := db.update(func(txn *badger.Txn) error {
		return txn.Set([]byte(jobLogPrefix+name), log)
	})
	if err != nil {
		return fmt.Errorf("store job log %s: %w", name, err)
	}
	return nil
}

// JobLog returns the log stored under name, and whether there is one.
func (db *DB) JobLog(name string) ([]byte, bool, error) {
	var log []byte
	err := db.bdb.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(jobLogPrefix + name))
		if err != nil {
			return err
		}
		log, err = item.ValueCopy(nil)
		return err
	})
	switch {
	case err == nil:
		return log, true, nil
	case errors.Is(err, badger.ErrKeyNotFound):
		return nil, false, nil
	default:
		return nil, false, fmt.Errorf("job log %s: %w", name, err)
	}
}
