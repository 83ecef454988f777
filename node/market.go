package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// messageTTL bounds the life of a market message other than an offer.
const messageTTL = time.Minute

// marketDriver runs the market engine: one goroutine owns it and executes
// the closures sent on in; streams, gossip, timers and executors feed it.
type marketDriver struct {
	n       *Node
	eng     *market.Engine
	in      chan func()
	gossip  map[string]*gossipOut // by tier
	running map[protocol.JobID]runningLease
	// stepped counts verified messages fed to the engine, by kind;
	// rejected counts messages refused before it, by reason.
	stepped  *prometheus.CounterVec
	rejected *prometheus.CounterVec
	// offers and offerBytes are how many offers the provider remembers
	// and what they cost (within [limits] offer_memory).
	offers, offerBytes prometheus.Gauge
	watchers           map[protocol.JobID][]*watcher
	// postingHolds are the hold writes of jobs just posted, queued once
	// the jobs are persisted.
	postingHolds map[protocol.JobID]*ledgerWrite
	outbox       *outbox
	writer       *ledgerWriter
	verified     *verifiedCache
	gossipSeen   *seenSet // signed messages seen on gossip
	// jobs persists the job records; clock is the engine's time and the
	// loop's timer.
	jobs  jobStore
	clock clock
	// retry is when the loop tries again to carry out a Ready whose jobs
	// it could not persist (zero: none waits), and backoff the pause
	// after the next failure.
	retry   time.Time
	backoff time.Duration
}

// jobStore is where the market keeps its job records (the node's DB).
type jobStore interface {
	PutJobs(records map[string][]byte) error
}

func (n *Node) marketEngineConfig() market.Config {
	cfg := market.Config{
		Self:                    n.host.ID(),
		InteractiveWindow:       time.Duration(n.cfg.Market.InteractiveWindow),
		BatchWindow:             time.Duration(n.cfg.Market.BatchWindow),
		AcceptTimeout:           time.Duration(n.cfg.Market.AcceptTimeout),
		HeartbeatTimeout:        time.Duration(n.cfg.Market.HeartbeatTimeout),
		HeartbeatInterval:       time.Duration(n.cfg.Market.HeartbeatTimeout) / 3,
		MaxCandidates:           3,
		OfferMemory:             n.cfg.Limits.OfferMemory,
		OfferMemoryPerRequester: n.cfg.Limits.OfferMemoryPerRequester,
		CheckGrant:              n.checkGrant,
	}
	if n.IsProvider() {
		var gpus []protocol.GPU
		for _, g := range n.capacity.GPUs() {
			gpus = append(gpus, protocol.GPU{Model: g.Model, VRAMMiB: g.VRAMMiB, Count: g.Count})
		}
		cfg.Provider = &market.ProviderPolicy{
			GPUs: gpus, Slots: n.cfg.Provider.Slots, Executors: n.cfg.Provider.Executors,
			MaxMemoryMiB: n.jobLimits.MemoryMiB, MaxCPUMillis: n.jobLimits.CPUMillis, DockerImages: n.cfg.Provider.DockerImages,
			FloorInteractive: capacity.MicroCredits(n.cfg.Provider.PriceInteractive),
			FloorBatch:       capacity.MicroCredits(n.cfg.Provider.PriceBatch),
		}
	}
	return cfg
}

// startMarket joins the tier topics (validators first), opens the market
// stream protocol, restores persisted jobs and starts the engine loop.
func (n *Node) startMarket(ctx context.Context) error {
	d := &marketDriver{
		n: n, eng: market.NewEngine(n.marketEngineConfig()), in: make(chan func(), 256),
		gossip: map[string]*gossipOut{}, running: map[protocol.JobID]runningLease{},
		watchers:     map[protocol.JobID][]*watcher{},
		postingHolds: map[protocol.JobID]*ledgerWrite{},
		outbox:       newOutbox(n),
		writer:       newLedgerWriter(n),
		verified:     &verifiedCache{m: map[[32]byte]*protocol.Signed{}},
		gossipSeen:   &seenSet{m: map[[32]byte]struct{}{}},
		jobs:         n.db,
		clock:        realClock{},
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
	n.metrics.MustRegister(d.stepped, d.rejected, d.offers, d.offerBytes)
	n.market = d
	if err := d.restore(); err != nil {
		return err
	}
	for _, tier := range []string{protocol.TierInteractive, protocol.TierBatch} {
		name := protocol.JobsTopic(n.cfg.Network, tier)
		if err := n.pubsub.RegisterTopicValidator(name, d.validateGossip); err != nil {
			return fmt.Errorf("topic validator %s: %w", name, err)
		}
		t, err := n.pubsub.Join(name)
		if err != nil {
			return fmt.Errorf("join %s: %w", name, err)
		}
		sub, err := t.Subscribe()
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", name, err)
		}
		g := &gossipOut{n: n, topic: t, in: make(chan []byte, 4096)}
		if tier == protocol.TierBatch {
			g.linger = batchGossipLinger
		}
		d.gossip[tier] = g
		n.wg.Add(2)
		go d.readTopic(ctx, sub)
		go g.run(ctx)
	}
	n.host.SetStreamHandler(libp2pproto.ID(protocol.MarketProtocol(n.cfg.Network)), d.handleStream)
	n.wg.Add(2)
	go d.writer.run(ctx)
	go d.loop(ctx)
	return nil
}

// do runs fn in the engine goroutine and waits for it.
func (d *marketDriver) do(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	select {
	case d.in <- func() { fn(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *marketDriver) loop(ctx context.Context) {
	defer d.n.wg.Done()
	timer := d.clock.NewTimer(time.Hour)
	defer timer.Stop()
	d.process(ctx) // what restore left: jobs it ended
	for {
		select {
		case <-ctx.Done():
			for _, r := range d.running {
				r.cancel()
			}
			return
		case fn := <-d.in:
			fn()
			d.drainInputs()
		case <-timer.C():
			d.eng.Tick(d.clock.Now())
		}
		d.process(ctx)
		timer.Reset(d.sleep())
	}
}

// sleep is how long the loop may wait for input: until the engine's next
// deadline, or the retry of a Ready it could not persist, an hour at most.
func (d *marketDriver) sleep() time.Duration {
	now, wake := d.clock.Now(), d.eng.NextDeadline()
	if !d.retry.IsZero() && (wake.IsZero() || d.retry.Before(wake)) {
		wake = d.retry
	}
	if wake.IsZero() {
		return time.Hour
	}
	return min(max(wake.Sub(now), time.Millisecond), time.Hour)
}

// maxInputsPerReady bounds how many queued inputs one Ready gathers.
const maxInputsPerReady = 64

// drainInputs feeds the engine the inputs already queued, up to
// maxInputsPerReady, so that under load one Ready carries many jobs'
// changes: one database write, one gossip message per tier, one
// ledger batch, instead of one each.
func (d *marketDriver) drainInputs() {
	for range maxInputsPerReady - 1 {
		select {
		case fn := <-d.in:
			fn()
		default:
			return
		}
	}
}

// process carries out the engine's Ready in the order it asks: persist,
// then queue the ledger writes (posted jobs' holds, settlements, the holds
// awards wait for), then send and publish, then start and stop runs; and
// then Advance. A Ready whose jobs cannot be persisted is not advanced,
// and nothing of it is done: the engine hands it out again, merged with
// what came since, when the loop retries (see persistFailed).
//
// Messages leave in the order the engine asked for them, all from this
// goroutine: an award is in a Ready's Send only once its hold is written
// (the engine asks for the hold in NeedHolds and sends the award when
// HoldWritten brings it), so what the engine sends after an award leaves
// after it, and nothing waits behind a ledger write. (What the engine
// sends about a job while its award waits for the hold presupposes no
// award: a cancel of the job, which then drops the award.)
func (d *marketDriver) process(ctx context.Context) {
	r := d.eng.Ready()
	if r.Empty() {
		return
	}
	offers, bytes := d.eng.OfferMemory()
	d.offers.Set(float64(offers))
	d.offerBytes.Set(float64(bytes))
	if err := d.persist(r.Save); err != nil {
		d.persistFailed(err)
		return
	}
	d.retry, d.backoff = time.Time{}, 0
	for _, j := range r.Changed {
		d.notify(j)
	}
	for _, j := range r.Save {
		d.notify(j)
		d.n.results.Collect(j)
	}
	d.queueLedgerWrites(ctx, r)
	signed := d.signer()
	d.send(ctx, r.Send, signed)
	for _, o := range r.Publish {
		if raw := signed(o.Msg); raw != nil {
			d.gossip[o.Tier].publish(ctx, raw)
		}
	}
	for _, l := range r.Run {
		d.run(ctx, l)
	}
	for _, id := range r.Stop {
		if r, ok := d.running[id]; ok {
			r.cancel()
			delete(d.running, id)
		}
	}
	if len(r.Run)+len(r.Stop) > 0 {
		d.n.SetFreeSlots(d.n.cfg.Provider.Slots - d.eng.ActiveLeases())
	}
	d.eng.Advance()
}

// persist writes the records of jobs, in one write.
func (d *marketDriver) persist(jobs []*market.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	recs := map[string][]byte{}
	for _, j := range jobs {
		b, err := json.Marshal(j)
		if err != nil {
			d.n.log.Error("encode job", "err", err)
			continue
		}
		recs[j.ID.String()] = b
	}
	return d.jobs.PutJobs(recs)
}

// Pauses between tries to persist a Ready's jobs: doubling from the
// first, up to the last.
const (
	persistRetryFirst = 50 * time.Millisecond
	persistRetryMax   = 5 * time.Second
)

// persistFailed schedules another try at a Ready whose jobs could not be
// persisted (a full or failing disk): the engine keeps it, so the state
// changes it carries are not lost, and its messages wait with it, as no
// message may promise what the disk does not hold. Meanwhile the engine
// runs on, and what it asks for joins the Ready.
func (d *marketDriver) persistFailed(err error) {
	d.backoff = min(max(2*d.backoff, persistRetryFirst), persistRetryMax)
	d.retry = d.clock.Now().Add(d.backoff)
	d.n.log.Error("persist jobs; not sending, will retry", "in", d.backoff, "err", err)
}

// queueLedgerWrites queues a persisted Ready's ledger writes. A posted
// job's hold is written once the job is on disk (so a restart finds the
// job that settles it), and so is a finished job's settlement and an
// award's hold; the writer keeps their order for each job.
func (d *marketDriver) queueLedgerWrites(ctx context.Context, r market.Ready) {
	for _, j := range r.Save {
		if w, ok := d.postingHolds[j.ID]; ok {
			delete(d.postingHolds, j.ID)
			d.writer.add(w)
		}
	}
	if w := d.n.settleWrite(r.Save); w != nil {
		d.writer.add(w)
	}
	if len(r.NeedHolds) > 0 {
		d.writeHolds(ctx, r.NeedHolds)
	}
}

// writeHolds queues the escrow write that backs awards with holds; the
// holds, with what their awards carry, go back to the engine on the loop
// (HoldWritten), which sends the awards or cancels the jobs.
func (d *marketDriver) writeHolds(ctx context.Context, reqs []market.HoldRequest) {
	d.writer.add(d.n.escrowWrite(reqs, func(holds [][]byte, errs []error) {
		results := make([]market.HoldResult, len(reqs))
		for i, r := range reqs {
			results[i] = d.holdResult(r, holds[i], errs[i])
		}
		select {
		case d.in <- func() {
			now := d.clock.Now()
			for i, r := range reqs {
				if err := results[i].Err; err != nil {
					d.n.log.Warn("no escrow for an award; job cancelled", "job", r.Job, "err", err)
				}
				d.eng.HoldWritten(now, r.Job, r.Attempt, results[i])
			}
		}:
		case <-ctx.Done():
		}
	}))
}

// holdResult is what an award carries with its hold: the grant its lease
// entry will quote and, if asked, the entries before the hold that its
// provider lacks. It runs on the ledger writer's goroutine (chainBefore
// reads the ledger), not the loop's.
func (d *marketDriver) holdResult(r market.HoldRequest, hold []byte, err error) market.HoldResult {
	res := market.HoldResult{Hold: hold, Err: err}
	if res.Err == nil {
		res.Grant, res.Err = d.n.signGrant(r)
	}
	if res.Err == nil && r.WithChain {
		res.Chain = d.n.chainBefore(hold, r.KnownSeq)
	}
	return res
}

// signer returns a function that signs messages for one Ready: a message
// bound for several peers and gossip (an interactive offer) is signed
// once. It returns nil (logged) for a message it could not sign.
func (d *marketDriver) signer() func(*pb.MarketMessage) []byte {
	signed := map[*pb.MarketMessage][]byte{}
	return func(m *pb.MarketMessage) []byte {
		raw, ok := signed[m]
		if !ok {
			raw = d.sign(m)
			signed[m] = raw
		}
		return raw
	}
}

// send signs and sends a Ready's direct messages, in order; a result's
// receipt is recorded in this provider's chain.
func (d *marketDriver) send(ctx context.Context, sends []market.Outbound, sign func(*pb.MarketMessage) []byte) {
	for _, o := range sends {
		raw := sign(o.Msg)
		if raw == nil {
			continue // signing failed (logged)
		}
		if res := o.Msg.GetResult(); res != nil {
			d.writer.add(d.n.receiptWrite(res, raw))
		}
		d.outbox.send(ctx, o.To, raw, isBusiness(o.Msg))
	}
}

// sign seals m for the network; nil (logged) if that fails.
func (d *marketDriver) sign(m *pb.MarketMessage) []byte {
	expires := time.Now().Add(messageTTL)
	if o := m.GetOffer(); o != nil {
		expires = time.UnixMilli(o.DeadlineUnixMs)
	}
	raw, err := protocol.SealMarket(d.n.priv, d.n.cfg.Network, expires, m)
	if err != nil {
		d.n.log.Error("sign market message", "err", err)
		return nil
	}
	return raw
}

// run starts a lease's job on its executor; the outcome goes back into the
// engine, which sends it to the requester as the signed result.
func (d *marketDriver) run(ctx context.Context, l *market.Lease) {
	// The job's deadline bounds staging and the run; max_duration bounds
	// the run alone (see runner.Run).
	rctx, cancel := context.WithDeadline(ctx, l.Deadline)
	d.running[l.Job] = runningLease{attempt: l.Attempt, cancel: cancel}
	d.n.wg.Add(1)
	go func() {
		defer d.n.wg.Done()
		defer cancel()
		// A new goroutine runs before the ones already woken: let the
		// outbox send the acceptance before the run takes the CPU.
		runtime.Gosched()
		var out market.Outcome
		if err := d.n.checkHold(rctx, l); err != nil {
			out = market.Outcome{ExitCode: -1, Error: err.Error()}
		} else {
			d.writer.add(d.n.leaseWrite(l))
			out = d.n.runner.Run(rctx, l)
		}
		out.Attempt = l.Attempt
		select {
		case d.in <- func() {
			// A newer lease of the same job (re-awarded after a cancel)
			// is not this run's to end.
			if r, ok := d.running[l.Job]; ok && r.attempt == l.Attempt {
				delete(d.running, l.Job)
			}
			d.eng.Finished(d.clock.Now(), l.Job, out)
		}:
		case <-d.n.runCtx.Done():
		}
	}()
}

// runningLease is a run in progress: which attempt, and how to stop it.
type runningLease struct {
	attempt uint32
	cancel  context.CancelFunc
}

// isLeaseHolder reports whether p holds the lease of this node's job with
// the given attempt.
func (d *marketDriver) isLeaseHolder(id protocol.JobID, attempt uint32, p peer.ID) bool {
	ok := false
	d.do(d.n.runCtx, func() {
		j, found := d.eng.Job(id)
		ok = found && j.Provider == p && j.Attempt == attempt
	})
	return ok
}

// settleEnded queues the settlement of every finished job whose hold is
// still open (one whose settlement failed, say, for want of disk space).
func (d *marketDriver) settleEnded() {
	if w := d.n.settleWrite(d.eng.Jobs()); w != nil {
		d.writer.add(w)
	}
}

// restore loads persisted jobs into the engine after a restart. A crash
// between persisting a job's end and settling it left its hold open: it
// is settled once the node has confirmed its head with its peers (an
// earlier run may have settled it, in entries this data dir lacks), by
// the ledger writer, which writes nothing before then. A job whose offer
// today's checks refuse (stored before a rule tightened, or signed by a
// clock since set back) is ended with the reason, not offered again:
// every peer would refuse it. The loop writes and settles it first thing.
func (d *marketDriver) restore() error {
	var ended []*market.Job
	invalid := map[protocol.JobID]error{}
	defer func() {
		now := d.clock.Now()
		for id, err := range invalid {
			d.n.log.Warn("stored job's offer is no longer valid; job ended", "job", id, "err", err)
			d.eng.Fail(now, id, "offer no longer valid: "+err.Error())
		}
		if w := d.n.settleWrite(ended); w != nil {
			d.writer.add(w)
		}
	}()
	return d.n.db.Jobs(func(id string, rec []byte) error {
		var j market.Job
		if err := json.Unmarshal(rec, &j); err != nil {
			return fmt.Errorf("job %s: %w", id, err)
		}
		offer, err := protocol.OpenStoredOffer(j.Offer)
		if err == nil && offer.Signer != d.n.host.ID() {
			err = fmt.Errorf("%w: signed by %s", protocol.ErrSigner, offer.Signer)
		}
		if err != nil {
			d.n.log.Warn("stored job has an invalid offer; skipped", "job", id, "err", err)
			return nil
		}
		d.eng.Restore(&j, offer)
		if j.State.Terminal() {
			ended = append(ended, &j)
		} else if err := offer.Recheck(d.n.cfg.Network, time.Now()); err != nil && !errors.Is(err, protocol.ErrExpired) {
			// An expired job expires on the engine's first tick.
			invalid[offer.Job] = err
		}
		return nil
	})
}
