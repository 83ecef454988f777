package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// Defaults of a Ledger's options.
const (
	// DefaultPendingLimit is how many out-of-order entries a Ledger keeps.
	DefaultPendingLimit = 4096
	// DefaultMaxClockSkew is how far in the future an entry's time may be.
	DefaultMaxClockSkew = 10 * time.Minute
	// MaxAppendBatch is the most entries one AppendBatch writes.
	MaxAppendBatch = 256
)

// Ledger is the ledger of one network: every account's hash chain of
// signed entries, and the balances, holds and payments derived from them,
// kept in the node's Badger database.
//
// Every write (Append, AppendBatch, Ingest, IngestMany, IngestFraudProof)
// validates the entries, stores them with all derived indexes in one
// transaction, and syncs to disk before it returns: an entry it reports
// stored survives a crash. The batch forms sync once per batch.
//
// Cross-chain rules are checked so that every node reaches the same
// verdict whatever the order entries arrive in: a hold can only be
// refused for want of funds that a payment from another chain may still
// bring, and a lease for want of a hold that the requester's chain may
// still bring, so ErrOverdraft and ErrUnfunded on ingest are kept pending
// like ErrGap. The one
// exception is an account convicted of equivocation: its entries are
// refused from the moment a node learns of the fraud, so nodes may keep
// different suffixes of a frozen chain.
//
// A Ledger is safe for concurrent use.
type Ledger struct {
	db       *DB
	network  string
	genesis  *ledger.Genesis
	rules    *ledger.Rules
	clock    func() time.Time
	maxSkew  time.Duration
	workers  int
	pendingN int
	onStore  func(ledger.Entry)
	// syncReceived syncs ingested entries of other accounts, not only
	// this node's own (see WithReceivedSync).
	syncReceived bool

	mu      sync.Mutex
	accts   map[peer.ID]ledger.AccountState // committed account states, loaded lazily
	pending ledger.Pending

	count atomic.Uint64 // entries stored
	// keys rules out most lookups of absent hashes, holds and payments
	// without a read.
	keys *keyFilter

	claimMu sync.Mutex
	claims  map[leaseSlot]uint64 // leases claimed, not yet written (ClaimLease)
}

// LedgerOption configures OpenLedger.
type LedgerOption func(*Ledger) error

// WithPendingLimit sets how many out-of-order entries the ledger keeps
// in memory (default DefaultPendingLimit); 0 keeps none.
func WithPendingLimit(n int) LedgerOption {
	return func(l *Ledger) error {
		if n < 0 {
			return fmt.Errorf("pending limit %d < 0", n)
		}
		l.pendingN = n
		return nil
	}
}

// WithMaxClockSkew sets how far past the clock an entry's time may be
// (default DefaultMaxClockSkew).
func WithMaxClockSkew(d time.Duration) LedgerOption {
	return func(l *Ledger) error {
		if d < 0 {
			return fmt.Errorf("clock skew %v < 0", d)
		}
		l.maxSkew = d
		return nil
	}
}

// WithVerifyWorkers sets how many goroutines check signatures in a batch
// (default GOMAXPROCS).
func WithVerifyWorkers(n int) LedgerOption {
	return func(l *Ledger) error {
		if n < 1 {
			return fmt.Errorf("verify workers %d < 1", n)
		}
		l.workers = n
		return nil
	}
}

// OpenLedger opens the ledger of network in db. genesis must be valid and
// for network; the first open records its hash and later opens refuse
// another genesis. clock gives the time own entries carry and the limit
// for others' (nil means time.Now).
func OpenLedger(db *DB, network string, genesis *ledger.Genesis, clock func() time.Time, opts ...LedgerOption) (*Ledger, error) {
	if genesis == nil {
		return nil, fmt.Errorf("%w: none given", ledger.ErrGenesis)
	}
	if err := genesis.Validate(); err != nil {
		return nil, err
	}
	if genesis.Network != network {
		return nil, fmt.Errorf("%w: genesis is for network %q, not %q", ledger.ErrGenesis, genesis.Network, network)
	}
	if stored, err := db.Network(); err != nil {
		return nil, err
	} else if stored != network {
		return nil, fmt.Errorf("%w: stored %q, ledger %q", ErrWrongNetwork, stored, network)
	}
	if clock == nil {
		clock = time.Now
	}
	l := &Ledger{
		db: db, network: network, genesis: genesis, clock: clock,
		rules:        ledger.NewRules(genesis),
		maxSkew:      DefaultMaxClockSkew,
		workers:      runtime.GOMAXPROCS(0),
		pendingN:     DefaultPendingLimit,
		syncReceived: true,
		accts:        make(map[peer.ID]ledger.AccountState),
	}
	for _, o := range opts {
		if err := o(l); err != nil {
			return nil, fmt.Errorf("ledger option: %w", err)
		}
	}
	l.pending = ledger.NewPending(l.pendingN)
	gh := genesis.Hash()
	var stored []byte
	err := db.bdb.View(func(txn *badger.Txn) error {
		var err error
		if stored, err = getValue(txn, []byte(keyLedgerGenesis)); err != nil || stored == nil {
			return err
		}
		if !bytes.Equal(stored, gh[:]) {
			return fmt.Errorf("%w: the database holds the ledger of another genesis", ledger.ErrGenesis)
		}
		c, err := getValue(txn, []byte(keyLedgerCount))
		if err != nil {
			return err
		}
		if len(c) == 8 {
			l.count.Store(binary.BigEndian.Uint64(c))
		}
		return nil
	})
	if err == nil && stored == nil {
		// A new ledger: the one write an open makes, besides an upgrade.
		err = db.update(func(txn *badger.Txn) error { return txn.Set([]byte(keyLedgerGenesis), gh[:]) })
	}
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	if err := upgradeFormat(db, l.rules.Rate()); err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	if l.keys, err = openKeyFilter(db.bdb, l.count.Load()); err != nil {
		return nil, err
	}
	return l, nil
}

func getValue(txn *badger.Txn, k []byte) ([]byte, error) {
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// Network returns the ledger's network.
func (l *Ledger) Network() string { return l.network }

// Genesis returns the ledger's genesis (not to be changed).
func (l *Ledger) Genesis() *ledger.Genesis { return l.genesis }
