package marketd

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
)

// messageTTL bounds the life of a market message other than an offer.
const messageTTL = time.Minute

// loop owns the engine: it runs what comes in, ticks it at its deadlines
// and carries out its Ready, until the driver closes.
func (m *Driver) loop() {
	timer := m.clock.NewTimer(time.Hour)
	defer timer.Stop()
	m.process() // what restore left: jobs it ended
	for {
		select {
		case <-m.ctx.Done():
			for _, r := range m.running {
				r.cancel()
			}
			return
		case fn := <-m.in:
			fn()
			m.drainInputs()
		case <-timer.C():
			m.eng.Tick(m.clock.Now())
		}
		m.process()
		timer.Reset(m.sleep())
	}
}

// sleep is how long the loop may wait for input: until the engine's next
// deadline, or the retry of a Ready it could not persist, an hour at most.
func (m *Driver) sleep() time.Duration {
	now, wake := m.clock.Now(), m.eng.NextDeadline()
	if !m.retry.IsZero() && (wake.IsZero() || m.retry.Before(wake)) {
		wake = m.retry
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
func (m *Driver) drainInputs() {
	for range maxInputsPerReady - 1 {
		select {
		case fn := <-m.in:
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
func (m *Driver) process() {
	r := m.eng.Ready()
	if r.Empty() {
		return
	}
	offers, bytes := m.eng.OfferMemory()
	m.offers.Set(float64(offers))
	m.offerBytes.Set(float64(bytes))
	if err := m.persist(r.Save); err != nil {
		m.persistFailed(err)
		return
	}
	if err := m.persistBills(r.Bills); err != nil {
		m.persistFailed(err)
		return
	}
	m.retry, m.backoff = time.Time{}, 0
	for _, j := range r.Changed {
		m.notify(j)
	}
	for _, j := range r.Save {
		m.notify(j)
		m.results.Collect(j)
	}
	m.queueLedgerWrites(r)
	m.deliver(r.Deliveries)
	signed := m.signer()
	m.send(r.Send, signed)
	for _, o := range r.Publish {
		if raw := signed(o.Msg); raw != nil {
			m.gossip[o.Tier].Add(m.ctx, raw)
		}
	}
	m.settle(r)
	m.pauseRuns(r.Pauses)
	for _, l := range r.Run {
		m.run(l)
	}
	for _, id := range r.Stop {
		if r, ok := m.running[id]; ok {
			r.cancel()
			delete(m.running, id)
		}
	}
	if len(r.Run)+len(r.Stop) > 0 {
		m.capacity.SetFreeSlots(m.slots - m.eng.ActiveLeases())
	}
	m.eng.Advance()
	if len(r.NeedAcceptances) > 0 {
		// Signed here, on the loop: the Accepted leaves at once, not at
		// the next input.
		now := m.clock.Now()
		for _, a := range r.NeedAcceptances {
			sig, err := m.signAcceptance(a)
			if err != nil && !errors.Is(err, errWithheld) {
				m.log.Error("sign acceptance", "job", a.Job, "err", err)
			}
			m.eng.AcceptanceSigned(now, a, sig, err)
		}
		m.process()
	}
}

// settle carries out a Ready's settlement work on the provider's side:
// receipts recorded, claims written (the result leaves once each is,
// ClaimWritten), awards given back (the decline leaves once the waive is
// written, Waived).
func (m *Driver) settle(r market.Ready) {
	for _, b := range r.Receipts {
		m.ledger.RecordReceipt(b)
	}
	for _, c := range r.Claims {
		m.ledger.WriteClaim(c, func(err error) {
			if err != nil {
				m.log.Warn("claim refused; billing again", "job", c.Job, "requester", c.Requester, "err", err)
			}
			// Blocks (see the package doc on queues): this node's business.
			select {
			case m.in <- func() { m.eng.ClaimWritten(m.clock.Now(), c, err) }:
			case <-m.ctx.Done():
			}
		})
	}
	m.settleVerdicts(r)
	for _, w := range r.Waives {
		m.wg.Go(func() {
			raw, err := m.ledger.WriteWaive(m.ctx, w)
			if err != nil {
				m.log.Debug("no waive for a declined award", "job", w.Job, "err", err)
			}
			select {
			case m.in <- func() { m.eng.Waived(w, raw) }:
			case <-m.ctx.Done():
			}
		})
	}
}

// deliver opens the blobs of the results a Ready sends to their
// requesters, before the results leave: only now, their claims written,
// may a requester fetch them (market.Delivery). A grant that fails
// (the database closing) is asked again with the result's next re-send.
func (m *Driver) deliver(ds []market.Delivery) {
	if m.readers == nil {
		return // no provider: it delivers nothing
	}
	for _, d := range ds {
		for _, id := range []string{d.ResultID, d.OutputsID} {
			if id == "" {
				continue
			}
			if err := m.readers.AllowReader(id, d.Requester); err != nil {
				m.log.Warn("open result to its requester", "blob", id, "requester", d.Requester, "err", err)
			}
		}
	}
}

// persist writes the records of jobs, in one write.
func (m *Driver) persist(jobs []*market.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	recs := map[string][]byte{}
	for _, j := range jobs {
		b, err := json.Marshal(j)
		if err != nil {
			m.log.Error("encode job", "err", err)
			continue
		}
		recs[j.ID.String()] = b
	}
	return m.jobs.PutJobs(recs)
}

// persistBills writes the records of a provider's bills that changed,
// and drops those of bills settled or given up, in one write.
func (m *Driver) persistBills(bills []market.BillRecord) error {
	if len(bills) == 0 {
		return nil
	}
	recs := map[string][]byte{}
	var drop []string
	for _, b := range bills {
		if b.Done {
			drop = append(drop, b.Key())
			continue
		}
		raw, err := json.Marshal(b)
		if err != nil {
			m.log.Error("encode bill", "err", err)
			continue
		}
		recs[b.Key()] = raw
	}
	return m.jobs.PutBills(recs, drop)
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
func (m *Driver) persistFailed(err error) {
	m.backoff = min(max(2*m.backoff, persistRetryFirst), persistRetryMax)
	m.retry = m.clock.Now().Add(m.backoff)
	m.log.Error("persist jobs; not sending, will retry", "in", m.backoff, "err", err)
}

// queueLedgerWrites queues a persisted Ready's ledger writes. A posted
// job's hold is written once the job is on disk (so a restart finds the
// job that settles it), and so is a finished job's settlement and an
// award's hold; the ledger keeps their order for each job.
func (m *Driver) queueLedgerWrites(r market.Ready) {
	for _, j := range r.Save {
		if spec, ok := m.postingHolds[j.ID]; ok {
			delete(m.postingHolds, j.ID)
			m.ledger.HoldPosted(j.ID, spec)
		}
	}
	m.ledger.ReleaseUnawarded(r.Save)
	if len(r.NeedHolds) > 0 {
		m.writeHolds(r.NeedHolds)
	}
}

// writeHolds queues the escrow write that backs awards with holds; the
// holds, with what their awards carry, go back to the engine on the loop
// (HoldWritten), which sends the awards or cancels the jobs.
func (m *Driver) writeHolds(reqs []market.HoldRequest) {
	m.ledger.WriteHolds(reqs, func(holds [][]byte, errs []error) {
		results := make([]market.HoldResult, len(reqs))
		for i, r := range reqs {
			results[i] = m.holdResult(r, holds[i], errs[i])
		}
		// Blocks (see the package doc on queues): the awards' jobs are
		// this node's business.
		select {
		case m.in <- func() {
			now := m.clock.Now()
			for i, r := range reqs {
				if err := results[i].Err; err != nil {
					m.log.Warn("no escrow for an award; job cancelled", "job", r.Job, "err", err)
				}
				m.eng.HoldWritten(now, r.Job, r.Attempt, results[i])
			}
		}:
		case <-m.ctx.Done():
		}
	})
}

// holdResult is what an award carries with its hold: the grant its lease
// entry will quote and, if asked, the entries before the hold that its
// provider lacks. It runs on the ledger writer's goroutine (ChainBefore
// reads the ledger), not the loop's.
func (m *Driver) holdResult(r market.HoldRequest, hold []byte, err error) market.HoldResult {
	res := market.HoldResult{Hold: hold, Err: err}
	if res.Err == nil {
		var e ledger.Entry
		if e, res.Err = ledger.DecodeEntry(hold); res.Err == nil {
			res.Seq = e.Seq
		}
	}
	if res.Err == nil {
		res.Grant, res.Err = m.ledger.SignGrant(r)
	}
	if res.Err == nil && r.WithChain {
		res.Chain = m.ledger.ChainBefore(hold, r.KnownSeq)
	}
	return res
}

// signer returns a function that signs messages for one Ready: a message
// bound for several peers and gossip (an interactive offer) is signed
// once. It returns nil (logged) for a message it could not sign.
func (m *Driver) signer() func(*pb.MarketMessage) []byte {
	signed := map[*pb.MarketMessage][]byte{}
	return func(msg *pb.MarketMessage) []byte {
		raw, ok := signed[msg]
		if !ok {
			raw = m.sign(msg)
			signed[msg] = raw
		}
		return raw
	}
}

// send signs and sends a Ready's direct messages, in order.
func (m *Driver) send(sends []market.Outbound, sign func(*pb.MarketMessage) []byte) {
	for _, o := range sends {
		raw := sign(o.Msg)
		if raw == nil {
			continue // signing failed (logged)
		}
		m.outbox.send(m.ctx, o.To, raw, isBusiness(o.Msg))
	}
}

// sign seals msg for the network; nil (logged) if that fails.
func (m *Driver) sign(msg *pb.MarketMessage) []byte {
	expires := m.clock.Now().Add(messageTTL)
	if o := msg.GetOffer(); o != nil {
		expires = time.UnixMilli(o.DeadlineUnixMs)
	}
	raw, err := protocol.SealMarket(m.key, m.network, expires, msg)
	if err != nil {
		m.log.Error("sign market message", "err", err)
		return nil
	}
	return raw
}

// settleVerdicts writes the verdicts among replicas a Ready asks for: a
// provider's majority claims (its result leaves once one is written) and a
// requester's majority releases; the answers go back to the engine.
func (m *Driver) settleVerdicts(r market.Ready) {
	for _, c := range r.MajorityClaims {
		m.ledger.WriteMajorityClaim(c, func(err error) {
			if err != nil && !errors.Is(err, market.ErrNoMajorityYet) {
				m.log.Info("no majority claim", "job", c.Job, "requester", c.Requester, "err", err)
			}
			select {
			case m.in <- func() { m.eng.MajorityClaimWritten(m.clock.Now(), c, err) }:
			case <-m.ctx.Done():
			}
		})
	}
	for _, rel := range r.MajorityReleases {
		m.ledger.WriteMajorityRelease(rel, func(err error) {
			if err != nil && !errors.Is(err, market.ErrNoMajorityYet) {
				m.log.Warn("majority release refused", "job", rel.Job, "loser", rel.Loser, "err", err)
			}
			select {
			case m.in <- func() { m.eng.MajorityReleased(m.clock.Now(), rel, err) }:
			case <-m.ctx.Done():
			}
		})
	}
}
