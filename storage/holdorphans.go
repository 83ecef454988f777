package storage

import (
	"encoding/binary"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/mira-market/mira/protocol/ledger"
)

// An orphan hold is one of the node's own open holds whose job the node
// has no record of (its data dir was restored from a copy older than the
// job). The node records when it first saw each one, so that the time it
// waits before releasing it survives restarts.
const orphanHoldPrefix = "node/orphanhold/"

func orphanHoldKey(job ledger.Hash) []byte { return append([]byte(orphanHoldPrefix), job[:]...) }

// OrphanHolds returns when each recorded orphan hold was first seen.
func (db *DB) OrphanHolds() (map[ledger.Hash]time.Time, error) {
	out := map[ledger.Hash]time.Time{}
	err := db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(orphanHoldPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()[len(orphanHoldPrefix):]
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(k) != len(ledger.Hash{}) || len(v) != 8 {
				return fmt.Errorf("orphan hold record %x: %d-byte key, %d-byte value", k, len(k), len(v))
			}
			out[ledger.Hash(k)] = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("orphan holds: %w", err)
	}
	return out, nil
}

// SetOrphanHolds records the orphan holds in seen (job → first seen) and
// forgets those in gone, in one transaction.
func (db *DB) SetOrphanHolds(seen map[ledger.Hash]time.Time, gone []ledger.Hash) error {
	if len(seen)+len(gone) == 0 {
		return nil
	}
	err := db.update(func(txn *badger.Txn) error {
		for job, t := range seen {
			if err := txn.Set(orphanHoldKey(job), binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))); err != nil {
				return err
			}
		}
		for _, job := range gone {
			if err := txn.Delete(orphanHoldKey(job)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store orphan holds: %w", err)
	}
	return nil
}
