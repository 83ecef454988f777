package node

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
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
}

func messageID(m *pubsubpb.Message) string {
	sum := sha256.Sum256(m.Data)
	return string(sum[:])
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

// validateGossip runs before a gossip message is forwarded: it passes only
// if every signed message in it verifies, is an offer or a taken notice,
// and has the same signer (a requester gossips only its own messages);
// anything else is rejected (and the sender penalised by peer scoring),
// but for signed messages that fail only by this node's clock (expired,
// or expiring just past the limit: protocol.ErrTooFarAhead), which are
// dropped without blame, the whole message ignored when none is left.
// A peer past its rate of signed messages ([limits]) has its gossip
// ignored unchecked, without a penalty: it may be relaying others'.
// Repeats of a gossip message are dropped by the message-ID cache; one
// that only repacks signed messages already seen on gossip is ignored, so
// a peer cannot make the network carry them again. The node's own gossip,
// which it has just signed, is accepted unchecked.
func (d *marketDriver) validateGossip(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	raws, err := protocol.SplitMarketGossip(m.Data)
	if err != nil {
		d.reject(err)
		d.n.log.Debug("gossip message rejected", "from", m.ReceivedFrom, "err", err)
		return pubsub.ValidationReject
	}
	if m.ReceivedFrom == d.n.host.ID() {
		// Our own, signed just now: not checked again, and of no use to
		// our engine; remembered, so that a peer's repack is ignored.
		d.gossipSeen.anyNew(raws)
		return pubsub.ValidationAccept
	}
	if !d.n.limits.allowGossip(m.ReceivedFrom, len(raws)) {
		// Past the peer's rate: not checked, not passed on, and not held
		// against it (it may only be relaying what others publish).
		return pubsub.ValidationIgnore
	}
	msgs := make([]*protocol.Signed, 0, len(raws))
	for _, raw := range raws {
		s, err := d.open(raw)
		if err == nil {
			switch s.Msg.Body.(type) {
			case *pb.MarketMessage_Offer, *pb.MarketMessage_Taken:
			default:
				err = fmt.Errorf("%w: %s", errNotForGossip, kindOf(s.Msg))
			}
		}
		if err == nil && len(msgs) > 0 && s.Signer != msgs[0].Signer {
			err = fmt.Errorf("%w: a gossip message of %s and %s", protocol.ErrSigner, msgs[0].Signer, s.Signer)
		}
		if err != nil {
			d.reject(err)
			d.n.log.Debug("gossip message rejected", "from", m.ReceivedFrom, "err", err)
			// A message that expired on the way, or that runs past the
			// limit of how far ahead it may expire only by this node's
			// clock being behind the relay's, is no one's fault: it is
			// dropped, the rest of the gossip message kept, and the relay
			// not scored down.
			if errors.Is(err, protocol.ErrExpired) || errors.Is(err, protocol.ErrTooFarAhead) {
				continue
			}
			return pubsub.ValidationReject
		}
		msgs = append(msgs, s)
	}
	if len(msgs) == 0 {
		return pubsub.ValidationIgnore
	}
	if !d.gossipSeen.anyNew(raws) {
		d.rejected.WithLabelValues("repacked").Inc()
		return pubsub.ValidationIgnore
	}
	m.ValidatorData = msgs
	return pubsub.ValidationAccept
}

// errNotForGossip is a signed market message of a kind that travels only
// directly.
var errNotForGossip = errors.New("not for gossip")

func (d *marketDriver) readTopic(ctx context.Context, sub *pubsub.Subscription) {
	defer d.n.wg.Done()
	defer sub.Cancel()
	for {
		m, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if msgs, ok := m.ValidatorData.([]*protocol.Signed); ok {
			for _, s := range msgs {
				d.step(s)
			}
		}
	}
}

// open verifies a market message, or recalls that the same bytes passed
// before: an interactive offer reaches a provider both directly and by
// gossip, and a signature check is the dearest step on the hot path.
func (d *marketDriver) open(data []byte) (*protocol.Signed, error) {
	key := sha256.Sum256(data)
	if s, ok := d.verified.get(key); ok && time.UnixMilli(s.Msg.ExpiresUnixMs).After(time.Now()) {
		return s, nil
	}
	s, err := protocol.OpenMarket(data, d.n.cfg.Network, time.Now())
	if err == nil {
		d.verified.put(key, s)
	}
	return s, err
}

// seenSet remembers which signed messages arrived on gossip, by content
// hash. It is bounded: when full it starts over.
type seenSet struct {
	mu sync.Mutex
	m  map[[32]byte]struct{}
}

const seenSetSize = 1 << 16

// anyNew records raws as seen and reports whether any was not seen before.
func (s *seenSet) anyNew(raws [][]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m)+len(raws) > seenSetSize {
		clear(s.m)
	}
	fresh := false
	for _, raw := range raws {
		k := sha256.Sum256(raw)
		if _, ok := s.m[k]; !ok {
			s.m[k] = struct{}{}
			fresh = true
		}
	}
	return fresh
}

// verifiedCache remembers recently verified messages by content hash. It
// is bounded, in messages and in their bytes: when full it starts over.
type verifiedCache struct {
	mu    sync.Mutex
	m     map[[32]byte]*protocol.Signed
	bytes int
}

// verifiedCacheSize and verifiedCacheBytes bound the cache. Each message
// is kept as received and decoded, about twice its bytes: 8 MiB of 64 KiB
// messages hold 16 MiB; a burst's small offers (a few hundred bytes) fill
// the count first.
const (
	verifiedCacheSize  = 4096
	verifiedCacheBytes = 8 << 20
)

func (c *verifiedCache) get(k [32]byte) (*protocol.Signed, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[k]
	return s, ok
}

func (c *verifiedCache) put(k [32]byte, s *protocol.Signed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= verifiedCacheSize || c.bytes+len(s.Raw) > verifiedCacheBytes {
		clear(c.m)
		c.bytes = 0
	}
	c.m[k] = s
	c.bytes += len(s.Raw)
}

// receive verifies one direct message; its signer must be the peer that
// sent it.
func (d *marketDriver) receive(from peer.ID, data []byte) {
	s, err := d.open(data)
	if err == nil && s.Signer != from {
		err = fmt.Errorf("%w: sent by %s, signed by %s", protocol.ErrSigner, from, s.Signer)
	}
	if err != nil {
		d.reject(err)
		d.n.log.Debug("market message rejected", "from", from, "err", err)
		return
	}
	d.step(s)
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

// reject counts a refused message under the reason its error names.
func (d *marketDriver) reject(err error) {
	reason := "malformed"
	for _, r := range []struct {
		err  error
		name string
	}{{protocol.ErrTooLarge, "oversized"}, {protocol.ErrSignature, "bad signature"}, {protocol.ErrSigner, "wrong signer"}, {protocol.ErrExpired, "expired"}, {protocol.ErrTooFarAhead, "too far ahead"}, {errNotForGossip, "not for gossip"}} {
		if errors.Is(err, r.err) {
			reason = r.name
			break
		}
	}
	d.rejected.WithLabelValues(reason).Inc()
}

func (d *marketDriver) step(s *protocol.Signed) {
	d.stepped.WithLabelValues(kindOf(s.Msg)).Inc()
	// Block rather than drop: a full queue pushes back on the stream or
	// topic reader, and so on the sender, instead of losing a bid or an
	// award that a timeout would later blame on an honest peer.
	select {
	case d.in <- func() {
		d.eng.SetRTT(s.Signer, d.n.host.Peerstore().LatencyEWMA(s.Signer))
		d.eng.Step(time.Now(), s)
	}:
	case <-d.n.runCtx.Done():
	}
}

func (d *marketDriver) loop(ctx context.Context) {
	defer d.n.wg.Done()
	timer := time.NewTimer(time.Hour)
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
		case <-timer.C:
			d.eng.Tick(time.Now())
		}
		d.process(ctx)
		timer.Reset(time.Hour)
		if next := d.eng.NextDeadline(); !next.IsZero() {
			timer.Reset(max(time.Until(next), time.Millisecond))
		}
	}
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
// then send and publish, then start and stop runs. Ledger writes (holds,
// settlements) go to the ledger writer; an award leaves once its hold is
// on disk, and the messages after it wait their turn behind it.
func (d *marketDriver) process(ctx context.Context) {
	r := d.eng.Ready()
	if r.Empty() {
		return
	}
	offers, bytes := d.eng.OfferMemory()
	d.offers.Set(float64(offers))
	d.offerBytes.Set(float64(bytes))
	for _, j := range r.Changed {
		d.notify(j)
	}
	if len(r.Save) > 0 {
		recs := map[string][]byte{}
		for _, j := range r.Save {
			b, err := json.Marshal(j)
			if err != nil {
				d.n.log.Error("encode job", "err", err)
				continue
			}
			recs[j.ID.String()] = b
			d.notify(j)
			d.n.results.Collect(j)
		}
		if err := d.n.db.PutJobs(recs); err != nil {
			d.n.log.Error("persist jobs; not sending", "err", err)
			return
		}
		// A posted job's hold is written once the job is on disk (so a
		// restart finds the job that settles it) and before any award of
		// it is queued.
		for _, j := range r.Save {
			if w, ok := d.postingHolds[j.ID]; ok {
				delete(d.postingHolds, j.ID)
				d.writer.add(w)
			}
		}
		if w := d.n.settleWrite(r.Save); w != nil {
			d.writer.add(w)
		}
	}
	// A message bound for several peers and gossip (an interactive offer)
	// is signed once, here; an award only once its hold is attached.
	signed := map[*pb.MarketMessage][]byte{}
	sign := func(m *pb.MarketMessage) []byte {
		raw, ok := signed[m]
		if !ok {
			raw = d.sign(m)
			signed[m] = raw
		}
		return raw
	}
	sends := make([]outgoing, 0, len(r.Send))
	for _, o := range r.Send {
		out := outgoing{to: o.To, msg: o.Msg}
		if b := o.Msg.GetBid(); b != nil {
			// So that an award carries the requester's entries we lack.
			if h, err := d.n.ledger.Head(o.To); err == nil {
				b.KnownSeq = h.Seq
			}
		}
		if o.Msg.GetAward() == nil {
			out.raw = sign(o.Msg)
		}
		sends = append(sends, out)
	}
	if reqs := d.escrowRequests(r.Send); len(reqs) > 0 {
		d.writer.add(d.n.escrowWrite(reqs, func(holds [][]byte, errs []error) {
			d.attachHolds(ctx, reqs, holds, errs)
			d.send(ctx, sends)
		}))
	} else if d.writer.sending() {
		d.writer.add(&ledgerWrite{sends: true, done: func([]*storage.Entry, []error) { d.send(ctx, sends) }})
	} else {
		d.send(ctx, sends)
	}
	for _, o := range r.Publish {
		if raw := sign(o.Msg); raw != nil {
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
}

// outgoing is a direct message: signed, or (an award) to be signed when
// its hold is attached.
type outgoing struct {
	to  peer.ID
	msg *pb.MarketMessage
	raw []byte
}

// send sends a Ready's direct messages, in order, signing the awards. An
// award without a hold (its escrow failed) is not sent.
func (d *marketDriver) send(ctx context.Context, sends []outgoing) {
	for _, o := range sends {
		raw := o.raw
		a := o.msg.GetAward()
		if a != nil {
			if a.Hold == nil {
				continue
			}
			raw = d.sign(o.msg)
		}
		if raw == nil {
			continue // signing failed (logged)
		}
		if res := o.msg.GetResult(); res != nil {
			d.writer.add(d.n.receiptWrite(res, raw))
		}
		d.outbox.send(ctx, o.to, raw, isBusiness(o.msg))
		if a != nil {
			// The provider's time to accept starts now, not when the
			// engine made the award. (An award with a hold is sent by
			// the ledger writer, never by the loop, which would block
			// here on its own queue.)
			id, attempt, sent := protocol.JobID(a.JobId), a.Attempt, time.Now()
			select {
			case d.in <- func() { d.eng.AwardSent(sent, id, attempt) }:
			case <-ctx.Done():
			}
		}
	}
}

// escrowRequests lists the awards among send, each with what its hold
// must cover.
func (d *marketDriver) escrowRequests(send []market.Outbound) []escrowRequest {
	var reqs []escrowRequest
	for _, o := range send {
		a := o.Msg.GetAward()
		if a == nil {
			continue
		}
		id := protocol.JobID(a.JobId)
		if j, ok := d.eng.Job(id); ok {
			r := escrowRequest{id: id, award: a, provider: j.Provider, price: a.Price, spec: j.Spec()}
			// An interactive award carries the requester's entries its
			// provider lacked when it bid; a batch job's window gives
			// gossip the time to bring them (carrying them too cost about
			// a tenth of a burst's leases/s).
			r.withChain = j.Tier == protocol.TierInteractive
			for _, b := range j.Bids {
				if b.Provider == j.Provider {
					r.knownSeq = b.KnownSeq // its latest bid
				}
			}
			reqs = append(reqs, r)
		}
	}
	return reqs
}

// attachHolds puts each award's hold entry into it, with the entries
// before the hold that its provider lacks, and the grant its lease entry
// will quote; a job whose award cannot be backed is cancelled (on the
// loop), its award left without a hold, so not sent.
func (d *marketDriver) attachHolds(ctx context.Context, reqs []escrowRequest, holds [][]byte, errs []error) {
	for i, r := range reqs {
		if errs[i] == nil {
			r.award.Grant, errs[i] = d.n.signGrant(r.award)
		}
		if errs[i] == nil {
			r.award.Hold = holds[i]
			if r.withChain {
				r.award.Chain = d.n.chainBefore(holds[i], r.knownSeq)
			}
			continue
		}
		d.n.log.Warn("no escrow for an award; job cancelled", "job", r.id, "err", errs[i])
		reason := "escrow failed: " + errs[i].Error()
		select {
		case d.in <- func() { d.eng.Cancel(time.Now(), r.id, reason) }:
		case <-ctx.Done():
		}
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
			d.eng.Finished(time.Now(), l.Job, out)
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
		now := time.Now()
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

// watcher is a WatchJob caller's channel, and how to stop waiting for the
// end of its context.
type watcher struct {
	ch   chan market.Job
	stop func() bool
}

// notify passes a job's new state to its watchers.
func (d *marketDriver) notify(j *market.Job) {
	for _, w := range d.watchers[j.ID] {
		select {
		case w.ch <- *j:
		default:
			// A slow watcher misses intermediate states, not the last:
			// the oldest queued state makes room for it.
			if j.State.Terminal() {
				select {
				case <-w.ch:
				default:
				}
				w.ch <- *j
			}
		}
	}
	if j.State.Terminal() {
		for _, w := range d.watchers[j.ID] {
			w.stop()
			close(w.ch)
		}
		delete(d.watchers, j.ID)
	}
}

// unwatch drops a watcher whose context ended (a client that went away)
// and closes its channel.
func (d *marketDriver) unwatch(id protocol.JobID, w *watcher) {
	ws := d.watchers[id]
	i := slices.Index(ws, w)
	if i < 0 {
		return // the job ended first
	}
	close(w.ch)
	if ws = slices.Delete(ws, i, i+1); len(ws) == 0 {
		delete(d.watchers, id)
	} else {
		d.watchers[id] = ws
	}
}

// SubmitJob signs an offer for spec and hands it to the market: an
// interactive job also goes directly to the best fitting providers (by
// price, then measured RTT).
func (n *Node) SubmitJob(ctx context.Context, spec *pb.JobSpec, deadline time.Time) (market.Job, error) {
	if err := protocol.CheckSpec(spec); err != nil {
		return market.Job{}, err
	}
	if err := n.diskLow(); err != nil {
		return market.Job{}, err
	}
	// A node that cannot sign cannot hold credits for the job.
	if err := n.canTakeJobs(); err != nil {
		return market.Job{}, err
	}
	now := time.Now()
	if !deadline.After(now) {
		return market.Job{}, errors.New("deadline: already passed")
	}
	if deadline.Sub(now) > protocol.MaxJobLifetime {
		// Providers refuse an offer that lives longer.
		return market.Job{}, fmt.Errorf("deadline: at most %v from now", protocol.MaxJobLifetime)
	}
	var candidates []peer.ID
	if spec.Tier == protocol.TierInteractive {
		var err error
		if candidates, err = n.rankCandidates(ctx, spec); err != nil {
			return market.Job{}, err
		}
	}
	nonce := make([]byte, 16)
	rand.Read(nonce)
	o := &pb.Offer{
		Requester: []byte(n.host.ID()), Network: n.cfg.Network, Spec: spec,
		CreatedUnixMs: now.UnixMilli(), DeadlineUnixMs: deadline.UnixMilli(), Nonce: nonce,
	}
	msg := &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: o}}
	raw, err := protocol.SealMarket(n.priv, n.cfg.Network, deadline, msg)
	if err != nil {
		return market.Job{}, err
	}
	id, err := protocol.OfferJobID(o)
	if err != nil {
		return market.Job{}, err
	}
	// Our own, just signed: no need to verify it again.
	offer := &protocol.Signed{Signer: n.host.ID(), Msg: msg, Raw: raw, Job: id}
	var job market.Job
	hold := n.offerHoldWrite(id, spec)
	err = n.market.do(ctx, func() {
		if hold != nil {
			n.market.postingHolds[id] = hold
		}
		job = *n.market.eng.Submit(time.Now(), offer, candidates)
	})
	return job, err
}

func (n *Node) rankCandidates(ctx context.Context, spec *pb.JobSpec) ([]peer.ID, error) {
	var r market.Requirements
	if res := spec.Resources; res != nil {
		r = market.Requirements{GPUModel: res.GpuModel, GPUs: int(res.Gpus), MinVRAMMiB: int(res.VramMib)}
	}
	recs, err := n.capacity.Candidates(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("find providers: %w", err)
	}
	recs = slices.DeleteFunc(recs, func(c *protocol.Capacity) bool {
		return c.Provider == n.host.ID() || c.PriceInteractive > spec.MaxPrice || !slices.Contains(c.Executors, spec.Executor)
	})
	lat := n.host.Peerstore().LatencyEWMA
	slices.SortFunc(recs, func(a, b *protocol.Capacity) int {
		return cmp.Or(cmp.Compare(a.PriceInteractive, b.PriceInteractive), cmp.Compare(lat(a.Provider), lat(b.Provider)))
	})
	out := make([]peer.ID, 0, len(recs))
	for _, c := range recs {
		out = append(out, c.Provider)
	}
	return out, nil
}

// Jobs returns copies of this node's jobs as requester.
func (n *Node) Jobs(ctx context.Context) ([]market.Job, error) {
	var out []market.Job
	err := n.market.do(ctx, func() {
		for _, j := range n.market.eng.Jobs() {
			out = append(out, *j)
		}
	})
	return out, err
}

// ErrNoJob is returned for a job ID this node does not know.
var ErrNoJob = errors.New("no such job")

// Job returns a copy of one job.
func (n *Node) Job(ctx context.Context, id protocol.JobID) (market.Job, error) {
	var (
		out market.Job
		ok  bool
	)
	err := n.market.do(ctx, func() {
		var j *market.Job
		if j, ok = n.market.eng.Job(id); ok {
			out = *j
		}
	})
	if err == nil && !ok {
		err = ErrNoJob
	}
	return out, err
}

// CancelJob cancels a job; it reports false if the job had already ended.
func (n *Node) CancelJob(ctx context.Context, id protocol.JobID) (market.Job, bool, error) {
	var (
		out       market.Job
		found, ok bool
	)
	err := n.market.do(ctx, func() {
		var j *market.Job
		if j, found = n.market.eng.Job(id); found {
			ok = n.market.eng.Cancel(time.Now(), id, "cancelled by requester")
			out = *j
		}
	})
	if err == nil && !found {
		err = ErrNoJob
	}
	return out, ok, err
}

// WatchJob returns a channel of a job's states, closed when the job ends
// or ctx does.
func (n *Node) WatchJob(ctx context.Context, id protocol.JobID) (<-chan market.Job, error) {
	ch := make(chan market.Job, 16)
	found := false
	err := n.market.do(ctx, func() {
		j, ok := n.market.eng.Job(id)
		if !ok {
			return
		}
		found = true
		ch <- *j
		if j.State.Terminal() {
			close(ch)
			return
		}
		w := &watcher{ch: ch}
		n.market.watchers[id] = append(n.market.watchers[id], w)
		w.stop = context.AfterFunc(ctx, func() {
			n.market.do(n.runCtx, func() { n.market.unwatch(id, w) })
		})
	})
	if err == nil && !found {
		err = ErrNoJob
	}
	return ch, err
}

// kindOf names a market message's body for metrics.
func kindOf(m *pb.MarketMessage) string {
	switch m.Body.(type) {
	case *pb.MarketMessage_Offer:
		return "offer"
	case *pb.MarketMessage_Bid:
		return "bid"
	case *pb.MarketMessage_Decline:
		return "decline"
	case *pb.MarketMessage_Award:
		return "award"
	case *pb.MarketMessage_Accept:
		return "accept"
	case *pb.MarketMessage_Taken:
		return "taken"
	case *pb.MarketMessage_Cancel:
		return "cancel"
	case *pb.MarketMessage_Heartbeat:
		return "heartbeat"
	case *pb.MarketMessage_Result:
		return "result"
	}
	return "unknown"
}

// OfferMemory returns how many offers this provider remembers and what
// they cost in bytes.
func (n *Node) OfferMemory(ctx context.Context) (offers, bytes int, err error) {
	err = n.market.do(ctx, func() { offers, bytes = n.market.eng.OfferMemory() })
	return offers, bytes, err
}

// MarketStats returns how many market messages of each kind reached the
// engine, and how many were refused before it, by reason.
func (n *Node) MarketStats() (stepped, rejected map[string]int) {
	return counts(n.market.stepped), counts(n.market.rejected)
}

func counts(v *prometheus.CounterVec) map[string]int {
	out := map[string]int{}
	ch := make(chan prometheus.Metric, 64)
	go func() { v.Collect(ch); close(ch) }()
	for m := range ch {
		var pm dto.Metric
		if m.Write(&pm) == nil && len(pm.Label) == 1 {
			out[pm.Label[0].GetValue()] = int(pm.Counter.GetValue())
		}
	}
	return out
}
