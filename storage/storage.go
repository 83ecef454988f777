// Package storage keeps a node's durable state in Badger: the network the
// data dir belongs to, and (as the market and ledger land) jobs, ledger
// entries and their indexes.
package storage

import (
	"errors"
	"fmt"
	"log/slog"

	badger "github.com/dgraph-io/badger/v4"
)

// keyNetwork records which network a data dir's state belongs to.
var keyNetwork = []byte("meta/network")

// ErrWrongNetwork is returned by Open when the database belongs to another
// network than the one asked for.
var ErrWrongNetwork = errors.New("database belongs to another network")

// ErrNoRoom is returned for a write refused because the filesystem has no
// room for it: Badger writes through memory maps, and a write that finds
// the disk full kills the process (SIGBUS) instead of failing.
var ErrNoRoom = errors.New("no room on disk for the database")

// MinWriteRoom is the free space a write must find: room for a memtable's
// log to fill and be flushed into a table.
const MinWriteRoom = 2*memTableSize + 1<<20

const memTableSize = 8 << 20

// DB is a node's Badger database.
type DB struct {
	bdb *badger.DB
	// room, if set, says whether a write may go ahead (see Options).
	room func() error
}

// Options configure Open.
type Options struct {
	// Network is the network this database belongs to. Open records it the
	// first time and refuses a database recorded for another network, so a
	// config edit cannot mix two networks' ledgers.
	Network string
	// InMemory keeps everything in memory (tests only); Dir is then ignored.
	InMemory bool
	// Logger receives Badger's warnings and errors; nil discards them.
	Logger *slog.Logger
	// Room, if set, is asked before every write: an error refuses the
	// write with ErrNoRoom. The node checks the disk's free space there
	// (see node/disk).
	Room func() error
}

// Open opens (creating if needed) the database in dir.
func Open(dir string, opt Options) (*DB, error) {
	bopt := badger.DefaultOptions(dir).
		// Badger's defaults reserve hundreds of MiB; a node keeps small
		// records, and a testnet runs many nodes in one process.
		WithMemTableSize(memTableSize).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithLogger(badgerLogger{opt.Logger})
	if opt.InMemory {
		bopt = bopt.WithDir("").WithValueDir("").WithInMemory(true)
	}
	bdb, err := badger.Open(bopt)
	if err != nil {
		return nil, fmt.Errorf("open badger in %s: %w", dir, err)
	}
	db := &DB{bdb: bdb, room: opt.Room}
	if err := db.claimNetwork(opt.Network); err != nil {
		bdb.Close()
		return nil, err
	}
	return db, nil
}

// writable asks Room, if set, whether a write may go ahead.
func (db *DB) writable() error {
	if db.room == nil {
		return nil
	}
	if err := db.room(); err != nil {
		return fmt.Errorf("%w: %w", ErrNoRoom, err)
	}
	return nil
}

// update runs a read-write transaction once the disk has room for it.
func (db *DB) update(fn func(txn *badger.Txn) error) error {
	if err := db.writable(); err != nil {
		return err
	}
	return db.bdb.Update(fn)
}

// dropPrefix deletes every key under prefix once the disk has room:
// Badger flushes its memtable first, a write like any other.
func (db *DB) dropPrefix(prefix string) error {
	if err := db.writable(); err != nil {
		return err
	}
	return db.bdb.DropPrefix([]byte(prefix))
}

// guardedBatch writes many keys in as few transactions as Badger allows,
// each commit asking the disk guard first (writable). Badger's own
// WriteBatch commits whenever it fills, where no guard can ask.
type guardedBatch struct {
	db  *DB
	txn *badger.Txn
}

func (db *DB) newGuardedBatch() *guardedBatch {
	return &guardedBatch{db: db, txn: db.bdb.NewTransaction(true)}
}

// set adds k → v, committing what the batch holds first if it is full.
// k and v must not change until the batch is flushed.
func (b *guardedBatch) set(k, v []byte) error {
	err := b.txn.Set(k, v)
	if !errors.Is(err, badger.ErrTxnTooBig) {
		return err
	}
	if err := b.commit(); err != nil {
		return err
	}
	return b.txn.Set(k, v)
}

// commit writes what the batch holds, if the disk has room, and starts
// the next transaction.
func (b *guardedBatch) commit() error {
	if err := b.db.writable(); err != nil {
		return err
	}
	err := b.txn.Commit()
	b.txn = b.db.bdb.NewTransaction(true)
	return err
}

// flush writes what the batch still holds.
func (b *guardedBatch) flush() error { return b.commit() }

// cancel drops what the batch holds unwritten.
func (b *guardedBatch) cancel() { b.txn.Discard() }

func (db *DB) claimNetwork(network string) error {
	return db.update(func(txn *badger.Txn) error {
		item, err := txn.Get(keyNetwork)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return txn.Set(keyNetwork, []byte(network))
		}
		if err != nil {
			return fmt.Errorf("read network marker: %w", err)
		}
		stored, err := item.ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("read network marker: %w", err)
		}
		if string(stored) != network {
			return fmt.Errorf("%w: stored %q, configured %q", ErrWrongNetwork, stored, network)
		}
		return nil
	})
}

// Network returns the network recorded in the database.
func (db *DB) Network() (string, error) {
	var network string
	err := db.bdb.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyNetwork)
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		network = string(v)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read network marker: %w", err)
	}
	return network, nil
}

// Close flushes and closes the database.
func (db *DB) Close() error {
	if err := db.bdb.Close(); err != nil {
		return fmt.Errorf("close badger: %w", err)
	}
	return nil
}

// badgerLogger routes Badger's log lines to slog. Badger's info and debug
// lines are chatty (every compaction), so they are dropped.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	if b.l != nil {
		b.l.Error(fmt.Sprintf(f, a...), "component", "badger")
	}
}

func (b badgerLogger) Warningf(f string, a ...any) {
	if b.l != nil {
		b.l.Warn(fmt.Sprintf(f, a...), "component", "badger")
	}
}

func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}
