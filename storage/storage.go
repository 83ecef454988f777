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

// DB is a node's Badger database.
type DB struct {
	bdb *badger.DB
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
}

// Open opens (creating if needed) the database in dir.
func Open(dir string, opt Options) (*DB, error) {
	bopt := badger.DefaultOptions(dir).
		// Badger's defaults reserve hundreds of MiB; a node keeps small
		// records, and a testnet runs many nodes in one process.
		WithMemTableSize(8 << 20).
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
	db := &DB{bdb: bdb}
	if err := db.claimNetwork(opt.Network); err != nil {
		bdb.Close()
		return nil, err
	}
	return db, nil
}

func (db *DB) claimNetwork(network string) error {
	return db.bdb.Update(func(txn *badger.Txn) error {
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
