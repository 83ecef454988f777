package marketd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
)

// Driver runs the market engine: one goroutine (the loop) owns it and
// executes the closures sent on in; streams, gossip, timers, runs, the
// ledger writer and API calls feed it.
type Driver struct {
	network  string
	slots    int
	provider bool
	self     peer.ID
	key      crypto.PrivKey
	host     host.Host
	pubsub   *pubsub.PubSub
	ledger   Ledger
	runner   Runner
	results  Results
	readers  ResultReaders
	limits   Limits
	capacity Capacity
	log      *slog.Logger
	// clock is the engine's time, the loop's timer and the outbox's.
	clock clock.Clock
	// usageHook, if set, rewrites each run's usage (a test's patched
	// provider whose meter lies: SetUsageHook).
	usageHook atomic.Pointer[func(*pb.Usage) *pb.Usage]

	eng *market.Engine
	// in is the engine's input queue (see the package doc on queues).
	in chan func()

	// Owned by the loop.
	running  map[protocol.JobID]runningLease
	watchers map[protocol.JobID][]*watcher
	// postingHolds are the specs of jobs just posted whose holds are
	// queued once the jobs are persisted.
	postingHolds map[protocol.JobID]*pb.JobSpec
	// jobs persists the job records.
	jobs JobStore
	// retry is when the loop tries again to carry out a Ready whose jobs
	// it could not persist (zero: none waits), and backoff the pause
	// after the next failure.
	retry   time.Time
	backoff time.Duration

	gossip     map[string]*gossip.Batcher // by tier
	outbox     *outbox
	verified   *verifiedCache
	gossipSeen *seenSet // signed messages seen on gossip

	// stepped counts verified messages fed to the engine, by kind;
	// rejected counts messages refused before it, by reason.
	stepped  *prometheus.CounterVec
	rejected *prometheus.CounterVec
	// offers and offerBytes are how many offers the provider remembers
	// and what they cost (within [limits] offer_memory).
	offers, offerBytes prometheus.Gauge

	// withhold makes the requester sign no acceptance (a test hook:
	// WithholdAcceptances).
	withhold atomic.Bool

	// ctx ends when Close begins; wg counts the driver's goroutines.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New builds a driver and loads the persisted jobs into its engine; Start
// sets it going.
func New(cfg Config, d Deps) (*Driver, error) {
	if d.Clock == nil {
		d.Clock = clock.System
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	m := &Driver{
		network: cfg.Network, slots: cfg.Slots, provider: cfg.Engine.Provider != nil, self: cfg.Engine.Self,
		key: d.Key, host: d.Host, pubsub: d.PubSub, ledger: d.Ledger, runner: d.Runner, results: d.Results, readers: d.Readers,
		limits: d.Limits, capacity: d.Capacity, log: d.Log, clock: d.Clock, jobs: d.Jobs,
		in:      make(chan func(), inputQueue),
		running: map[protocol.JobID]runningLease{}, watchers: map[protocol.JobID][]*watcher{},
		postingHolds: map[protocol.JobID]*pb.JobSpec{},
		gossip:       map[string]*gossip.Batcher{},
		verified:     &verifiedCache{m: map[[32]byte]*protocol.Signed{}},
		gossipSeen:   &seenSet{m: map[[32]byte]struct{}{}},
		stepped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mira_market_messages_total", Help: "Verified market messages fed to the engine, by kind.",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mira_market_rejected_total", Help: "Market messages refused by validation, by reason.",
		}, []string{"reason"}),
		offers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mira_market_offers", Help: "Offers this provider remembers having answered.",
		}),
		offerBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mira_market_offer_bytes", Help: "Bytes the offers this provider remembers cost, within its budget.",
		}),
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.outbox = newOutbox(hostDialer(d.Host, m.proto()), d.Clock, d.Log)
	if d.Metrics != nil {
		d.Metrics.MustRegister(m.stepped, m.rejected, m.offers, m.offerBytes, m.outbox.dropped)
	}
	cfg.Engine.CheckGrant = m.checkGrant
	cfg.Engine.CheckAcceptance = m.checkAcceptance
	if d.Runner != nil {
		cfg.Engine.RunUsage = d.Runner.Usage
	}
	m.eng = market.NewEngine(cfg.Engine)
	if d.Metrics != nil {
		eng := m.eng
		d.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "mira_market_short_acceptances_total",
			Help: "Final acceptances below this provider's bill less the tolerance (or its interim acceptance): kept without delivering the result.",
		}, func() float64 { return float64(eng.ShortAcceptances()) }))
	}
	if err := m.restore(); err != nil {
		return nil, err
	}
	return m, nil
}

// inputQueue bounds the engine's input queue.
const inputQueue = 256

func (m *Driver) proto() libp2pproto.ID {
	return libp2pproto.ID(protocol.MarketProtocol(m.network))
}

// Start joins the tier topics (validators first), opens the market
// stream protocol and starts the loop; everything runs until ctx ends or
// Close.
func (m *Driver) Start(ctx context.Context) error {
	context.AfterFunc(ctx, m.cancel)
	for _, tier := range []string{protocol.TierInteractive, protocol.TierBatch} {
		name := protocol.JobsTopic(m.network, tier)
		if err := m.pubsub.RegisterTopicValidator(name, m.validateGossip); err != nil {
			return fmt.Errorf("topic validator %s: %w", name, err)
		}
		t, err := m.pubsub.Join(name)
		if err != nil {
			return fmt.Errorf("join %s: %w", name, err)
		}
		sub, err := t.Subscribe()
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", name, err)
		}
		g := newGossipOut(t, tier, m.clock, m.log)
		m.gossip[tier] = g
		m.wg.Go(func() { m.readTopic(sub) })
		m.wg.Go(func() { g.Run(m.ctx) })
	}
	m.host.SetStreamHandler(m.proto(), m.handleStream)
	m.startLoop()
	return nil
}

// startLoop starts the loop that owns the engine.
func (m *Driver) startLoop() {
	m.wg.Go(m.loop)
}

// Close stops the driver: it stops taking market streams, ends the loop,
// the runs (their leases end unreported), the topic readers and the
// outbox, and waits for them.
func (m *Driver) Close() {
	if m.host != nil {
		m.host.RemoveStreamHandler(m.proto())
	}
	m.cancel()
	m.wg.Wait()
	// The peers' goroutines are the outbox's (the loop queued their
	// messages): they end with m.ctx, and the host they write on closes
	// after the driver.
	m.outbox.wg.Wait()
}

// do runs fn in the engine goroutine and waits for it.
func (m *Driver) do(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	select {
	case m.in <- func() { fn(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-m.ctx.Done():
		return m.ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-m.ctx.Done():
		return m.ctx.Err()
	}
}

// checkGrant is the engine's check of an award's grant to this provider
// (market.Config's CheckGrant, on the loop): the same check every ledger
// makes of the lease entry that will quote it. An award it refuses is
// declined, and counted as a refused message ("bad grant").
func (m *Driver) checkGrant(requester peer.ID, job protocol.JobID, a *pb.Award) error {
	err := m.ledger.CheckGrant(requester, job, a)
	if err != nil {
		m.rejected.WithLabelValues("bad grant").Inc()
		m.log.Debug("award declined", "job", job, "requester", requester, "err", err)
	}
	return err
}

// checkAcceptance is the engine's check of a requester's interim
// acceptance (market.Config's CheckAcceptance, on the loop): the check
// every ledger makes of the claim that would quote it. The provider runs
// on only for acceptances it can claim; one refused is counted ("bad
// acceptance").
func (m *Driver) checkAcceptance(c market.ClaimRequest) error {
	err := ledger.Acceptance{Job: ledger.Hash(c.Job), Requester: c.Requester, Provider: m.self, HoldSeq: c.HoldSeq,
		Amount: c.Amount, Final: c.Final, Receipt: c.Receipt}.Verify(m.network, c.Acceptance)
	if err != nil {
		m.rejected.WithLabelValues("bad acceptance").Inc()
		m.log.Debug("interim acceptance refused", "job", c.Job, "requester", c.Requester, "err", err)
	}
	return err
}
