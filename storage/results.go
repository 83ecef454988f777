package storage

import (
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

const resultReaderPrefix = "result/reader/"

func resultReaderKey(id string, reader []byte) []byte {
	return append([]byte(resultReaderPrefix+id+"/"), reader...)
}

// PutResultReader records that reader (a peer ID's bytes) may fetch the
// result blob named id from this node: a provider's results are its
// requesters' to read, also after a restart. Jobs of several requesters
// may produce the same blob; each is recorded.
func (db *DB) PutResultReader(id string, reader []byte) error {
	err := db.update(func(txn *badger.Txn) error {
		return txn.Set(resultReaderKey(id, reader), nil)
	})
	if err != nil {
		return fmt.Errorf("store reader of result %s: %w", id, err)
	}
	return nil
}

// MayReadResult reports whether reader was recorded as a reader of the
// result blob named id.
func (db *DB) MayReadResult(id string, reader []byte) (bool, error) {
	err := db.bdb.View(func(txn *badger.Txn) error {
		_, err := txn.Get(resultReaderKey(id, reader))
		return err
	})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, badger.ErrKeyNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("reader of result %s: %w", id, err)
	}
}
