// Package blobd runs the node's blob store: opened on the node's
// database, served to peers, collected periodically, read, written and
// deleted by the operator through the API, and counted in metrics. The
// store and the transfer protocol themselves are package blob.
package blobd

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/node/clock"
)

// CollectInterval is how often the blob store's collector runs besides
// when a write needs room: it removes abandoned partial downloads, evicts
// down to the budget and stores last-use times.
const CollectInterval = 5 * time.Minute

// errDBClosed is what a database call answers once the node's database
// is closed (or closing).
var errDBClosed = errors.New("database closed")

// DB is what the service keeps in the node's database: the blobs'
// records, and who may read the results and outputs this provider stored.
type DB interface {
	blob.Index
	PutResultReader(id string, reader []byte) error
	MayReadResult(id string, reader []byte) (bool, error)
}

// Config is what the service needs.
type Config struct {
	Dir     string // the store's directory
	MaxSize int64  // the largest blob accepted, in bytes
	Budget  int64  // bytes of all blobs; 0: no bound
	HeldFor time.Duration
	DB      DB
	// WithDB runs f unless the database is closed (or closing), and
	// reports whether it ran: a stream handler still serving after Close
	// must not touch a closed Badger.
	WithDB func(f func()) bool
	// Host serves the store's blobs to peers and fetches theirs; nil
	// keeps the store local (tests).
	Host    host.Host
	Network string
	// Allow decides who may fetch what (see blob.Service.SetAllow).
	Allow func(p peer.ID, id cid.Cid) bool
	// Wrap wraps the blob protocol's stream handler (a limit on a peer's
	// open streams); nil leaves it as it is.
	Wrap    func(network.StreamHandler) network.StreamHandler
	Metrics prometheus.Registerer // nil: no metrics
	Clock   clock.Clock           // the system clock if nil
	Log     *slog.Logger
}

// Service is the node's blob store and its transfers.
type Service struct {
	store    *blob.Store
	transfer *blob.Service
	db       DB
	withDB   func(f func()) bool
	clock    clock.Clock
	log      *slog.Logger
	wg       sync.WaitGroup
}

// New opens the store in cfg.Dir, its records kept in cfg.DB, registers
// the blob protocol on cfg.Host and the store's metrics; Start starts its
// collector.
func New(cfg Config) (*Service, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.System
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.WithDB == nil {
		cfg.WithDB = func(f func()) bool { f(); return true }
	}
	s := &Service{db: cfg.DB, withDB: cfg.WithDB, clock: cfg.Clock, log: cfg.Log}
	store, err := blob.NewStore(cfg.Dir, blob.Options{
		MaxSize: cfg.MaxSize, Budget: cfg.Budget, HeldFor: cfg.HeldFor,
		Index: index{s}, Now: cfg.Clock.Now, Log: cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	s.store = store
	if cfg.Host != nil {
		s.transfer = blob.NewService(cfg.Host, cfg.Network, store, cfg.Log)
		s.transfer.SetAllow(cfg.Allow)
		if cfg.Wrap != nil {
			s.transfer.WrapHandler(cfg.Wrap)
		}
	}
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(newCollector(s)); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Start runs the collector every CollectInterval until ctx ends, and once
// more then; Close waits for it.
func (s *Service) Start(ctx context.Context) {
	s.wg.Go(func() { s.collectLoop(ctx) })
}

// Close waits for the collector's last pass, which ends with Start's
// context: call it before the database closes.
func (s *Service) Close() { s.wg.Wait() }

// collectLoop runs the store's collector every CollectInterval, and once
// more as the node stops, so that last-use times survive.
func (s *Service) collectLoop(ctx context.Context) {
	for {
		select {
		case <-clock.After(s.clock, CollectInterval):
			s.store.Collect()
		case <-ctx.Done():
			s.store.Collect()
			return
		}
	}
}

// Store is the blob store.
func (s *Service) Store() *blob.Store { return s.store }

// Transfer fetches blobs from peers and serves them; nil without a host.
func (s *Service) Transfer() *blob.Service { return s.transfer }

// AllowReader lets reader, a job's requester, fetch blob id: the job's
// result or outputs this provider stored.
func (s *Service) AllowReader(id string, reader peer.ID) error {
	err := errDBClosed
	s.withDB(func() { err = s.db.PutResultReader(id, []byte(reader)) })
	return err
}

// MayRead reports whether p is the requester of a job whose result or
// outputs this provider stored as blob id.
func (s *Service) MayRead(id cid.Cid, p peer.ID) bool {
	allowed := false
	s.withDB(func() {
		var err error
		if allowed, err = s.db.MayReadResult(id.String(), []byte(p)); err != nil {
			s.log.Warn("blob reader", "blob", id, "err", err)
		}
	})
	return allowed
}

// index keeps the store's records in the node's database; a write after
// the database closed (a stream handler still serving) fails instead of
// touching a closed Badger.
type index struct{ s *Service }

func (x index) PutBlobRecord(name string, rec []byte) error {
	err := errDBClosed
	x.s.withDB(func() { err = x.s.db.PutBlobRecord(name, rec) })
	return err
}

func (x index) DeleteBlobRecord(name string) error {
	err := errDBClosed
	x.s.withDB(func() { err = x.s.db.DeleteBlobRecord(name) })
	return err
}

func (x index) BlobRecords(fn func(name string, rec []byte) error) error {
	err := errDBClosed
	x.s.withDB(func() { err = x.s.db.BlobRecords(fn) })
	return err
}
