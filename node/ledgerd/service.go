// Package ledgerd is a node's ledger service: it writes the node's own
// entries (the market's holds, settlements, leases and receipts, in
// batches with one sync each), gossips them, validates and stores its
// peers' entries, syncs chains, reconciles the ledger with peers, pushes
// fraud proofs to peers that lack them, and holds the node's signing until
// its peers have shown it its own head.
//
// One goroutine (run) owns the service's mutable state: the writer's
// queue, the chain syncs in progress, the fraud proofs sent and the
// reconciliation counters. Everything else asks it over a channel, the
// way go-libp2p-pubsub's processLoop owns its maps.
package ledgerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/riblt"
	"github.com/mira-market/mira/storage"
)

// Config is what the service is told: the network, its genesis, and the
// node's [ledger] and reconciliation settings.
type Config struct {
	Network string
	Genesis *ledger.Genesis
	// ReconcileSymbols is the capacity of the reconciliation summary;
	// ReconcileInterval how often the node reconciles with a random peer.
	ReconcileSymbols  int
	ReconcileInterval time.Duration
	// HeadPeers, HeadQuorum and HeadWait: see confirmHead.
	HeadPeers, HeadQuorum int
	HeadWait              time.Duration
	// HoldSweepInterval is how often leftover holds are looked for.
	HoldSweepInterval time.Duration
	// Bootstrapped says whether the node has bootstrap peers: a new
	// account without any is the first node of a network, and signs at
	// once.
	Bootstrapped bool
}

// Deps are what the service works with. It takes no node: what it asks
// of the market goes through Market.
type Deps struct {
	Host    host.Host
	PubSub  *pubsub.PubSub
	DB      *storage.DB
	Key     crypto.PrivKey
	Clock   clock.Clock // nil: the system clock
	Log     *slog.Logger
	Metrics prometheus.Registerer
	// Disk says whether the disk has room for peers' entries.
	Disk interface{ Low() error }
	// Market is the node's market, asked about its jobs once the head is
	// confirmed (called no earlier).
	Market Market
}

// Market is what the service asks of the node's market.
type Market interface {
	// Lookup returns copies of the jobs among ids that the market knows.
	Lookup(ctx context.Context, ids []protocol.JobID) (map[protocol.JobID]*market.Job, error)
	// End ends each job that has not ended yet, with its reason, and
	// returns how many it ended.
	End(ctx context.Context, reasons map[protocol.JobID]string) (int, error)
}

// Service is a node's ledger service. Create it with New; stop it by
// ending New's context, then Close.
type Service struct {
	cfg      Config
	host     host.Host
	self     peer.ID
	db       *storage.DB
	ledger   *storage.Ledger
	key      crypto.PrivKey
	clock    clock.Clock
	log      *slog.Logger
	disk     interface{ Low() error }
	market   Market
	topic    *pubsub.Topic
	entries  *gossip.Batcher // own new entries, gossiped in batches
	rejected prometheus.Counter
	rset     *ledgerSet
	claimed  *claimWatch // final claims against this node, to look at (claimed.go)
	head     *headGate

	ctx context.Context // the service's life
	wg  sync.WaitGroup

	// ops are requests to run's goroutine; done is closed once it has
	// ended. jobs and finished go to and from the writer's goroutine.
	ops      chan func()
	done     chan struct{}
	jobs     chan writeJob
	finished chan writeJob
	st       loopState // run's own

	// dbGate keeps callbacks that libp2p runs on its own goroutines (topic
	// validators, stream handlers) off the database once Close has begun.
	dbGate   sync.RWMutex
	dbClosed bool
}

// loopState is the state run owns.
type loopState struct {
	writer writerState
	// chains serialises fetches of one account's chain.
	chains map[peer.ID]*chainLock
	// proofsSent is what became of the fraud proofs sent to peers, and
	// proofPushes counts the pushes in flight (see sendFraudProofs).
	proofsSent  map[accountPeer]proofPush
	proofPushes int
	stats       ReconcileStats
}

// New opens the node's ledger, joins the ledger gossip topic and starts
// the service's goroutines, which run until ctx ends. Its stream handler
// (HandleSync) is for the caller to set; the head sync and the periodic
// reconciliation start with StartHeadSync and StartReconciling, once the
// rest of the node is ready for them.
func New(ctx context.Context, cfg Config, d Deps) (*Service, error) {
	s := newService(ctx, cfg, d, d.Host.ID())
	if err := d.Metrics.Register(s.rejected); err != nil {
		return nil, err
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	if err := s.join(d.PubSub); err != nil {
		return nil, err
	}
	s.start()
	return s, nil
}

// newService returns the service of account self, its ledger not open yet
// and its goroutines not started.
func newService(ctx context.Context, cfg Config, d Deps, self peer.ID) *Service {
	if d.Clock == nil {
		d.Clock = clock.System
	}
	return &Service{
		cfg: cfg, host: d.Host, self: self, db: d.DB, key: d.Key, clock: d.Clock, log: d.Log,
		disk: d.Disk, market: d.Market, ctx: ctx,
		rset: &ledgerSet{set: riblt.NewSet(cfg.ReconcileSymbols)}, claimed: newClaimWatch(),
		head: newHeadGate(),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mira_ledger_rejected_total", Help: "Ledger entries and fraud proofs from peers refused by validation.",
		}),
		ops: make(chan func(), 64), done: make(chan struct{}),
		jobs: make(chan writeJob, 1), finished: make(chan writeJob, 1),
		st: loopState{chains: map[peer.ID]*chainLock{}, proofsSent: map[accountPeer]proofPush{}},
	}
}

// start starts run's goroutine and the writer's.
func (s *Service) start() {
	s.wg.Add(2)
	go s.run()
	go s.writeLoop()
}

// open opens the ledger and fills the reconciliation summary.
func (s *Service) open() error {
	var err error
	s.ledger, err = storage.OpenLedger(s.db, s.cfg.Network, s.cfg.Genesis, s.clock.Now,
		storage.WithStoreHook(func(e ledger.Entry) {
			s.rset.add(e.Hash())
			s.claimed.stored(s.self, e)
		}),
		// Peers' entries are not fsynced one by one: every node ingests
		// every entry, and what a power loss drops, reconciliation brings
		// back. Own entries always are.
		storage.WithReceivedSync(false))
	if err != nil {
		return err
	}
	// Nothing writes to the ledger yet: the summary starts from what is
	// stored, and the hook keeps it current from here on.
	for item, err := range s.ledger.Items() {
		if err != nil {
			return fmt.Errorf("ledger summary: %w", err)
		}
		s.rset.add(item.Hash)
	}
	return nil
}

// Close waits for the service's goroutines (New's context must have
// ended) and then keeps libp2p's callbacks off the database, which the
// caller may close after it.
func (s *Service) Close() error {
	s.wg.Wait()
	s.dbGate.Lock()
	s.dbClosed = true
	s.dbGate.Unlock()
	return nil
}

// errDBClosed is the error of a database use after Close.
var errDBClosed = errors.New("database closed")

// withDB runs f unless Close has begun, and reports whether it ran.
func (s *Service) withDB(f func()) bool {
	s.dbGate.RLock()
	defer s.dbGate.RUnlock()
	if s.dbClosed {
		return false
	}
	f()
	return true
}

// Ledger is the node's ledger.
func (s *Service) Ledger() *storage.Ledger { return s.ledger }

// run owns loopState: it runs the requests that come on ops and
// schedules the writer's work (see writerState) until ctx has ended and
// the writes still queued then are done.
func (s *Service) run() {
	defer s.wg.Done()
	defer close(s.done)
	defer close(s.jobs)
	w := &s.st.writer
	opened, stalled, stop := s.head.opened, s.head.stalled, s.ctx.Done()
	for {
		select {
		case op := <-s.ops:
			op()
		case job := <-s.finished:
			w.finish(job)
		case <-opened:
			opened = nil
		case <-stalled:
			stalled = nil
		case <-w.lazyC():
			w.lazyEnded()
		case <-stop:
			stop, w.stopping = nil, true
		}
		for !s.schedule() {
			// Requests already queued are served before the loop ends:
			// a write queued as it stopped is written, and a caller
			// waiting for its answer gets it.
			if !s.runQueued() {
				return
			}
		}
	}
}

// runQueued runs the requests queued on ops, without waiting for more,
// and reports whether there were any.
func (s *Service) runQueued() bool {
	ran := false
	for {
		select {
		case op := <-s.ops:
			op()
			ran = true
		default:
			return ran
		}
	}
}

// post has run's goroutine run f, unless it has ended.
func (s *Service) post(f func()) {
	select {
	case s.ops <- f:
	case <-s.done:
	}
}

// call runs f on run's goroutine and waits for it; it reports false,
// not running f, if run has ended.
func (s *Service) call(f func()) bool {
	ran := make(chan struct{})
	select {
	case s.ops <- func() { f(); close(ran) }:
	case <-s.done:
		return false
	}
	// Queued just as run ended, f never runs: run closes done only once
	// it has run what it will.
	select {
	case <-ran:
		return true
	case <-s.done:
		select {
		case <-ran:
			return true
		default:
			return false
		}
	}
}

// sleep waits d on the service's clock, or until ctx ends.
func (s *Service) sleep(ctx context.Context, d time.Duration) error {
	t := s.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReconcileStats counts a node's reconciliation sessions.
type ReconcileStats struct {
	Sessions, Failures, Fallbacks int
	// Sent and Received count entries moved by reconciliation.
	Sent, Received int
	// Bytes counts what the sessions this node started read and wrote,
	// symbols and entries, both ways.
	Bytes int64
	// ChainFetches counts the requests this node made for one account's
	// chain (a provider lacking a requester's entries before a hold).
	ChainFetches int
}

// countReconcile updates the counters.
func (s *Service) countReconcile(f func(*ReconcileStats)) {
	s.post(func() { f(&s.st.stats) })
}

// ReconcileStats returns the node's reconciliation counters.
func (s *Service) ReconcileStats() ReconcileStats {
	var st ReconcileStats
	if !s.call(func() { st = s.st.stats }) {
		return s.st.stats // run has ended: no one writes them any more
	}
	return st
}

// chainLock serialises the fetches of one account's chain: sem holds a
// token while one runs; users counts those that hold or wait for it.
type chainLock struct {
	sem   chan struct{}
	users int
}

// lockChain waits until no other fetch of account's chain runs, or ctx
// ends; unlock ends the caller's turn.
func (s *Service) lockChain(ctx context.Context, account peer.ID) (unlock func(), err error) {
	var sem chan struct{}
	ok := s.call(func() {
		l := s.st.chains[account]
		if l == nil {
			l = &chainLock{sem: make(chan struct{}, 1)}
			s.st.chains[account] = l
		}
		l.users++
		sem = l.sem
	})
	if !ok {
		return nil, context.Canceled
	}
	release := func() {
		s.post(func() {
			if l := s.st.chains[account]; l != nil {
				if l.users--; l.users == 0 {
					delete(s.st.chains, account)
				}
			}
		})
	}
	select {
	case sem <- struct{}{}:
		return func() { <-sem; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
