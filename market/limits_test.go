package market

import (
	"crypto/rand"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// rogue makes a key that signs in the sim but runs no engine.
func (s *sim) rogue() peer.ID {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	s.keys[id] = k
	return id
}

func declineOf(j *Job, p peer.ID, reason string) *pb.MarketMessage {
	return &pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{JobId: j.ID[:], Provider: []byte(p), Reason: reason}}}
}

func bidOf(j *Job, p peer.ID, price uint64) *pb.MarketMessage {
	return &pb.MarketMessage{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{JobId: j.ID[:], Provider: []byte(p), Price: price}}}
}

// step feeds one signed message to an engine and returns its Ready.
func (s *sim) step(to, from peer.ID, m *pb.MarketMessage) Ready {
	s.engines[to].Step(s.now, s.sign(from, m))
	return take(s.engines[to])
}

// A job takes declines only from providers asked about its round, one per
// provider and round, and keeps a bounded number; a decline that changes
// nothing asks for no work at all, and none asks for a write.
func TestDeclinesAreBoundedAndOnlyFromThoseAsked(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	c1, c2 := s.add(provider(10)), s.add(provider(10))
	s.cut[c1], s.cut[c2] = true, true // they answer only what the test sends
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, c1, c2)
	wantState(t, j, Bidding)

	// The first round went to the candidates only: a stranger was not asked.
	stranger := s.rogue()
	if r := s.step(req, stranger, declineOf(j, stranger, "busy")); !r.Empty() || len(j.Declines) != 0 {
		t.Fatalf("a stranger's decline: ready %+v, declines %v", r, j.Declines)
	}
	// A candidate's decline is kept, for watchers only (not written).
	if r := s.step(req, c1, declineOf(j, c1, ReasonNoSlot)); len(r.Save) != 0 || len(r.Changed) != 1 || len(j.Declines) != 1 {
		t.Fatalf("a candidate's decline: %d saved, %d changed, declines %v", len(r.Save), len(r.Changed), j.Declines)
	}
	// Once per round: its next decline, whatever its reason, changes nothing.
	for i := range 100 {
		if r := s.step(req, c1, declineOf(j, c1, fmt.Sprint("reason ", i))); !r.Empty() {
			t.Fatalf("a repeated decline asked for work: %+v", r)
		}
	}
	// Every candidate declined: the round goes to gossip.
	if r := s.step(req, c2, declineOf(j, c2, ReasonNoGPU)); len(r.Publish) != 1 || len(r.Save) != 0 {
		t.Fatalf("the last candidate's decline: published %d, saved %d", len(r.Publish), len(r.Save))
	}
	// Gossiped, the round asks anyone: strangers' declines are kept, up to
	// MaxDeclines besides the candidates'.
	for range 3 * MaxDeclines {
		r := s.rogue()
		s.step(req, r, declineOf(j, r, strings.Repeat("x", 256)))
	}
	if len(j.Declines) != MaxDeclines+2 || !hasDecline(j, c1) || !hasDecline(j, c2) {
		t.Fatalf("%d declines kept, want %d with both candidates'", len(j.Declines), MaxDeclines+2)
	}

	// A later round: a new decline takes the place of one from before.
	s.advance(simTiming.InteractiveWindow) // the window ends
	s.advance(simTiming.InteractiveWindow) // offered again
	if j.Round != 2 {
		t.Fatalf("round %d, want 2", j.Round)
	}
	late := s.rogue()
	if r := s.step(req, late, declineOf(j, late, "busy")); len(r.Changed) != 1 || !hasDecline(j, late) || len(j.Declines) != MaxDeclines+2 {
		t.Fatalf("a decline of round 2: changed %d, %d kept, the new one kept %v", len(r.Changed), len(j.Declines), hasDecline(j, late))
	}
	// A candidate's new round replaces its own older decline.
	s.step(req, c1, declineOf(j, c1, ReasonNoGPU))
	if n := countDeclines(j, c1); n != 1 {
		t.Fatalf("candidate has %d declines, want 1", n)
	}
}

func hasDecline(j *Job, p peer.ID) bool { return countDeclines(j, p) > 0 }

func countDeclines(j *Job, p peer.ID) int {
	n := 0
	for _, d := range j.Declines {
		if d.Provider == p {
			n++
		}
	}
	return n
}

// The lease holder's decline (it filled up, or was preempted) still sends
// the job back to the market; anyone else's decline of a leased job is
// ignored.
func TestOnlyTheLeaseHolderDeclinesALease(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, j, Running)
	stranger := s.rogue()
	if r := s.step(req, stranger, declineOf(j, stranger, ReasonPreempted)); !r.Empty() {
		t.Fatalf("a stranger's decline of a lease asked for work: %+v", r)
	}
	wantState(t, j, Running)
	s.engines[req].Step(s.now, s.sign(p, declineOf(j, p, ReasonPreempted)))
	wantState(t, j, Bidding)
	if j.Preemptions != 1 || j.Round != 2 {
		t.Fatalf("preemptions %d, round %d", j.Preemptions, j.Round)
	}
}

// A round keeps at most MaxBids bids, and they are the cheapest: a flood of
// bids from new identities does not change who wins the window.
func TestBidsAreBoundedAndTheCheapestKept(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	j := s.submit(req, protocol.TierBatch, 1000, time.Minute, 1)
	var cheapest peer.ID
	for price := uint64(500); price >= 1; price-- {
		p := s.rogue()
		s.step(req, p, bidOf(j, p, price))
		cheapest = p
	}
	if len(j.Bids) != MaxBids {
		t.Fatalf("%d bids kept, want %d", len(j.Bids), MaxBids)
	}
	for _, b := range j.Bids {
		if b.Price > MaxBids {
			t.Fatalf("a bid of %d kept over a cheaper one", b.Price)
		}
	}
	s.advance(simTiming.BatchWindow)
	if j.State != Assigned || j.Provider != cheapest || j.Price != 1 {
		t.Fatalf("state %s, awarded to %s at %d; want the bid of 1", j.State, j.Provider, j.Price)
	}
}

// A late result counts as refused only from a provider that held the job;
// a stranger's changes nothing. Neither is written at once.
func TestRefusedResultsOnlyFromFormerHolders(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	s.finish(p, j.ID)
	wantState(t, j, Succeeded)
	result := &pb.MarketMessage{Body: &pb.MarketMessage_Result{Result: &pb.Result{JobId: j.ID[:], Attempt: 9}}}
	if r := s.step(req, s.rogue(), result); !r.Empty() || j.RefusedResults != 0 {
		t.Fatalf("a stranger's result: ready %+v, refused %d", r, j.RefusedResults)
	}
	if r := s.step(req, p, result); len(r.Save) != 0 || j.RefusedResults != 1 {
		t.Fatalf("the holder's late result: saved %d, refused %d", len(r.Save), j.RefusedResults)
	}
}

// offerFor is a requester's offer of spec; the sim signs it.
func (s *sim) offerFor(requester peer.ID, round uint32, deadline time.Time, spec *pb.JobSpec) *protocol.Signed {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	return s.sign(requester, &pb.MarketMessage{Round: round, Body: &pb.MarketMessage_Offer{Offer: &pb.Offer{
		Requester: []byte(requester), Network: simNet, Nonce: nonce,
		CreatedUnixMs: s.now.UnixMilli(), DeadlineUnixMs: deadline.UnixMilli(), Spec: spec,
	}}})
}

func noopSpec(gpus uint32) *pb.JobSpec {
	return &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, MaxPrice: 50, MaxDurationMs: 1000, Resources: &pb.Resources{Gpus: gpus}}
}

// An award passes the rules a bid passed, checked again when it comes: an
// offer the provider declined cannot be leased, and one it bid on is
// declined if the provider can no longer take it.
func TestAwardPassesTheRulesOfABid(t *testing.T) {
	for _, tc := range []struct {
		name string
		// before is what happens between the offer and the award.
		before func(s *sim, p, req peer.ID)
		spec   *pb.JobSpec
		price  uint64
		late   time.Duration // the award comes this long after the offer
		want   string        // the award's decline; "" for a lease
	}{
		{"an offer it bid on", nil, noopSpec(1), 10, 0, ""},
		{"an offer it declined: GPUs it lacks", nil, noopSpec(2), 10, 0, ReasonUnknownJob},
		{"an offer it declined: an executor it does not allow", nil,
			&pb.JobSpec{Executor: "process", Tier: protocol.TierBatch, MaxPrice: 50, MaxDurationMs: 1000}, 10, 0, ReasonUnknownJob},
		{"a price below its floor", nil, noopSpec(1), 9, 0, ReasonPrice},
		{"a price over the offer's maximum", nil, noopSpec(1), 51, 0, ReasonPrice},
		{"after the deadline", nil, noopSpec(1), 10, 2 * time.Minute, ReasonExpired},
		{"its slot taken since", func(s *sim, p, req peer.ID) {
			other := s.offerFor(req, 1, s.now.Add(time.Minute), noopSpec(1))
			s.engines[p].Step(s.now, other)
			s.engines[p].Step(s.now, s.sign(req, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
				JobId: other.Job[:], Provider: []byte(p), Price: 10, Attempt: 1,
			}}}))
		}, noopSpec(1), 10, 0, ReasonNoSlot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			p := s.add(provider(10))
			req := s.rogue()
			offer := s.offerFor(req, 1, s.now.Add(time.Minute), tc.spec)
			s.engines[p].Step(s.now, offer)
			if tc.before != nil {
				tc.before(s, p, req)
			}
			leases := s.engines[p].ActiveLeases()
			take(s.engines[p])
			s.engines[p].Step(s.now.Add(tc.late), s.sign(req, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
				JobId: offer.Job[:], Provider: []byte(p), Price: tc.price, Attempt: 1,
			}}}))
			r := take(s.engines[p])
			if len(r.Send) != 1 {
				t.Fatalf("%d replies to the award", len(r.Send))
			}
			if tc.want == "" {
				if r.Send[0].Msg.GetAccept() == nil || len(r.Run) != 1 {
					t.Fatalf("award not taken: %v, %d runs", r.Send[0].Msg.Body, len(r.Run))
				}
				return
			}
			d := r.Send[0].Msg.GetDecline()
			if d == nil || d.Reason != tc.want || len(r.Run) != 0 || s.engines[p].ActiveLeases() != leases {
				t.Fatalf("award answered %v with %d runs, want a decline: %q", r.Send[0].Msg.Body, len(r.Run), tc.want)
			}
		})
	}
}

// unsignedOffer is a verified-looking offer for the memory tests, where
// signing 20,000 of them would only slow the test down.
func unsignedOffer(t testing.TB, requester peer.ID, now time.Time, args []string) *protocol.Signed {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	o := &pb.Offer{Requester: []byte(requester), Network: simNet, Nonce: nonce,
		CreatedUnixMs: now.UnixMilli(), DeadlineUnixMs: now.Add(protocol.MaxJobLifetime).UnixMilli(),
		Spec: &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, MaxPrice: 50, MaxDurationMs: 1000, Args: args,
			Resources: &pb.Resources{Gpus: 1}}}
	id, err := protocol.OfferJobID(o)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.Signed{Signer: requester, Job: id, Msg: &pb.MarketMessage{Round: 1, Body: &pb.MarketMessage_Offer{Offer: o}}}
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// 20,000 offers of 8 KiB with the longest deadline, from twenty requesters,
// leave a provider's memory within its budget: it remembers the most
// recently answered (whose awards it still leases) and forgets the rest.
func TestOfferFloodStaysWithinBudget(t *testing.T) {
	const (
		requesters = 20
		offers     = 20000
		slack      = 8 << 20 // the heap beyond the budget: the engine, maps, garbage
	)
	cfg := simTiming
	cfg.Self, cfg.Provider = "provider", provider(10)
	e := NewEngine(cfg)
	var from [requesters]peer.ID
	for i := range from {
		k, _, _ := crypto.GenerateEd25519Key(rand.Reader)
		from[i], _ = peer.IDFromPrivateKey(k)
	}
	pad := strings.Repeat("a", 4000)
	base := liveHeap()
	var first, last *protocol.Signed
	for i := range offers {
		o := unsignedOffer(t, from[i%requesters], t0, []string{pad, pad})
		e.Step(t0, o)
		if i%64 == 0 {
			take(e) // the bids go out
		}
		if i == 0 {
			first = o
		}
		last = o
	}
	take(e)
	growth := int64(liveHeap()) - int64(base)
	kept, bytes := e.OfferMemory()
	t.Logf("%d offers remembered in %d KiB; heap grew by %d KiB", kept, bytes>>10, growth>>10)
	if bytes > DefaultOfferMemory || growth > DefaultOfferMemory+slack {
		t.Fatalf("offers cost %d bytes (budget %d), heap grew by %d (limit %d)", bytes, DefaultOfferMemory, growth, DefaultOfferMemory+slack)
	}
	for r, l := range e.offers.byRequester {
		if l.bytes > DefaultOfferMemoryPerRequester {
			t.Fatalf("requester %s holds %d bytes", r, l.bytes)
		}
	}
	award := func(o *protocol.Signed) *pb.MarketMessage {
		e.Step(t0, &protocol.Signed{Signer: o.Signer, Job: o.Job, Msg: &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
			JobId: o.Job[:], Provider: []byte("provider"), Price: 10, Attempt: 1,
		}}}})
		return take(e).Send[0].Msg
	}
	if m := award(first); m.GetDecline().GetReason() != ReasonUnknownJob {
		t.Fatalf("the oldest offer's award: %v, want it forgotten", m.Body)
	}
	if m := award(last); m.GetAccept() == nil {
		t.Fatalf("the newest offer's award: %v, want a lease", m.Body)
	}
	runtime.KeepAlive(first)
}

// A requester past its budget loses its own least recently answered
// offers, not other requesters'; past the total, the requester holding the
// most bytes loses its least recently answered. A forgotten spec still
// leaves the round known.
func TestOfferMemosEvict(t *testing.T) {
	spec := make([]byte, 1000)
	cost := memoOverhead + len("a") + len(spec)
	m := newOfferMemos(10*cost, 4*cost)
	job := func(i int) protocol.JobID { return protocol.JobID{byte(i)} }
	for i := range 6 {
		m.put(job(i), "a", 1, t0.Add(time.Duration(i)*time.Second), spec)
	}
	// a keeps its four newest.
	for i := range 6 {
		if got, want := m.get(job(i)) != nil, i >= 2; got != want {
			t.Fatalf("a's offer %d remembered: %v, want %v", i, got, want)
		}
	}
	for i := 10; i < 18; i++ {
		m.put(job(i), peer.ID(rune('b'+i)), 1, t0.Add(time.Hour), spec) // IDs of one byte, as "a"
	}
	// Ten fit: the two oldest of a, which held the most, went.
	if m.len() != 10 || m.get(job(2)) != nil || m.get(job(3)) != nil || m.get(job(4)) == nil {
		t.Fatalf("%d remembered: %x", m.len(), slices.Collect(maps.Keys(m.byJob)))
	}
	// Forgetting a spec frees its bytes and keeps its round.
	before := m.bytes()
	m.forget(m.get(job(4)))
	if m.bytes() != before-len(spec) || m.get(job(4)) == nil || m.get(job(4)).spec != nil {
		t.Fatalf("forget: %d bytes, was %d", m.bytes(), before)
	}
	// Expiry drops what passed its deadline.
	m.expire(t0.Add(6 * time.Second))
	if m.get(job(5)) != nil || m.get(job(10)) == nil {
		t.Fatal("expire kept an expired offer or dropped a live one")
	}
	total := 0
	for _, o := range m.byJob {
		total += o.cost
	}
	if total != m.bytes() {
		t.Fatalf("memos cost %d, accounted %d", total, m.bytes())
	}
}

// memoOverhead covers what a memo costs beyond its bytes: 20,000 memos of
// small specs take no more heap than they are accounted.
func TestOfferMemoCostCoversHeap(t *testing.T) {
	const n = 20000
	m := newOfferMemos(1<<30, 1<<30)
	reqs := make([]peer.ID, 100)
	for i := range reqs {
		k, _, _ := crypto.GenerateEd25519Key(rand.Reader)
		reqs[i], _ = peer.IDFromPrivateKey(k)
	}
	base := liveHeap()
	for i := range n {
		var job protocol.JobID
		rand.Read(job[:])
		m.put(job, peer.ID(string([]byte(reqs[i%len(reqs)]))), 1, t0, make([]byte, 40))
	}
	growth := int64(liveHeap()) - int64(base)
	t.Logf("%d memos: %d bytes of heap, %d accounted (%d per memo)", n, growth, m.bytes(), growth/n)
	if growth > int64(m.bytes()) {
		t.Fatalf("memos took %d bytes of heap, accounted %d", growth, m.bytes())
	}
	runtime.KeepAlive(m)
}

// Round-trip times are kept for a bounded number of peers, however many
// identities send messages.
func TestRTTsAreBounded(t *testing.T) {
	e := NewEngine(simTiming)
	for i := range 3 * maxRTTPeers {
		e.SetRTT(peer.ID(fmt.Sprint(i)), time.Millisecond)
	}
	if n := len(e.rtt); n > maxRTTPeers {
		t.Fatalf("%d round-trip times kept, limit %d", n, maxRTTPeers)
	}
}

// An award the provider took, sent again (the outbox retries a write that
// broke), changes nothing: it is not declined, which would send the
// running job back to the market.
func TestRepeatedAwardIsIgnored(t *testing.T) {
	s := newSim(t)
	p := s.add(provider(10))
	req := s.rogue()
	offer := s.offerFor(req, 1, s.now.Add(time.Minute), noopSpec(1))
	s.engines[p].Step(s.now, offer)
	award := s.sign(req, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: offer.Job[:], Provider: []byte(p), Price: 10, Attempt: 1,
	}}})
	s.engines[p].Step(s.now, award)
	if r := take(s.engines[p]); len(r.Run) != 1 {
		t.Fatalf("the award started %d runs", len(r.Run))
	}
	s.engines[p].Step(s.now, award)
	if r := take(s.engines[p]); !r.Empty() {
		t.Fatalf("the repeated award asked for work: %+v", r)
	}
}

// awardDecliner is a rogue provider's script: it bids 1 (the cheapest
// possible) on every offer it sees, directly or by gossip, and answers
// the first declines awards with reply (then accepts, as an honest
// provider that filled up once does).
func awardDecliner(self peer.ID, declines int, reply func(job []byte) []*pb.MarketMessage) func(*pb.MarketMessage) []*pb.MarketMessage {
	return func(m *pb.MarketMessage) []*pb.MarketMessage {
		switch b := m.Body.(type) {
		case *pb.MarketMessage_Offer:
			id, _ := protocol.OfferJobID(b.Offer)
			return []*pb.MarketMessage{{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{JobId: id[:], Provider: []byte(self), Price: 1}}}}
		case *pb.MarketMessage_Award:
			if declines <= 0 {
				return []*pb.MarketMessage{{Body: &pb.MarketMessage_Accept{Accept: &pb.Accept{JobId: b.Award.JobId, Attempt: b.Award.Attempt}}}}
			}
			declines--
			return reply(b.Award.JobId)
		}
		return nil
	}
}

// declineAward answers an award with a decline, as a provider that filled
// up since it bid does.
func declineAward(self peer.ID) func([]byte) []*pb.MarketMessage {
	return func(job []byte) []*pb.MarketMessage {
		return []*pb.MarketMessage{{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{JobId: job, Provider: []byte(self), Reason: ReasonNoSlot}}}}
	}
}

// acceptThenPreempt takes an award and gives it up at once as preempted.
func acceptThenPreempt(self peer.ID, attempt *uint32) func([]byte) []*pb.MarketMessage {
	return func(job []byte) []*pb.MarketMessage {
		*attempt++
		return []*pb.MarketMessage{
			{Body: &pb.MarketMessage_Accept{Accept: &pb.Accept{JobId: job, Attempt: *attempt}}},
			{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{JobId: job, Provider: []byte(self), Reason: ReasonPreempted}}},
		}
	}
}

// submitQuiet submits an interactive job of req to candidates, its
// deadline an hour away, without delivering anything yet.
func (s *sim) submitQuiet(req peer.ID, candidates ...peer.ID) *Job {
	spec := &pb.JobSpec{Executor: "noop", Tier: protocol.TierInteractive, MaxPrice: 50, MaxDurationMs: 1000, Resources: &pb.Resources{Gpus: 1}}
	return s.engines[req].Submit(s.now, s.offerFor(req, 0, s.now.Add(time.Hour), spec), records(candidates))
}

// runFor advances the clock by up to d, from one time an engine has work
// to the next, until done reports true.
func (s *sim) runFor(d time.Duration, done func() bool) {
	end := s.now.Add(d)
	for !done() && s.now.Before(end) {
		next := end
		for _, id := range s.order {
			if t := s.engines[id].NextDeadline(); !t.IsZero() && t.Before(next) {
				next = t
			}
		}
		s.advance(max(next.Sub(s.now), time.Millisecond))
	}
}

// A rogue provider that bids first and cheapest and gives every award
// back at once (declined, or accepted and given up as preempted) cannot
// keep a job going round: each award after the first costs the requester
// a release and a hold in its ledger chain, and at about a hundred rounds
// a second its per-account entry budget would be gone in minutes. A
// provider that gave an award back has its bids on the job held off for a
// window, doubling each time, at most a minute, so the other bidders get
// the job; and a job awarded MaxAttempts times fails with a reason.
func TestAwardDecliningProviderIsBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		// rogues is how many identities the attacker uses, each a
		// candidate (the first three are asked directly).
		rogues int
		// preempt: each rogue accepts the award and gives it up as
		// preempted.
		preempt bool
		// honest adds an honest provider as the last candidate.
		honest bool
		// maxAttempts and wantState are how the job ends, within an hour.
		maxAttempts uint32
		wantState   State
		// perMinute bounds the awards in any minute after the first.
		perMinute uint32
	}{
		{"a rogue, then an honest provider", 1, false, true, 2, Succeeded, 0},
		// The rogue's acceptance gossips a taken notice, on which the
		// honest provider forgets the offer: its bid of the first round,
		// awarded next, is declined as unknown (and held off) once.
		{"a rogue that gives awards up as preempted, then an honest provider", 1, true, true, 4, Succeeded, 0},
		{"ten rogue identities, then an honest provider", 10, false, true, 11, Succeeded, 0},
		{"a rogue alone", 1, false, false, MaxAttempts, Failed, 1},
		{"ten rogue identities", 10, false, false, MaxAttempts, Failed, 10},
		{"ten rogue identities that give awards up as preempted", 10, true, false, MaxAttempts, Failed, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			var candidates []peer.ID
			for range tc.rogues {
				r := s.rogue()
				reply := declineAward(r)
				if tc.preempt {
					reply = acceptThenPreempt(r, new(uint32))
				}
				s.scripts[r] = awardDecliner(r, 1<<30, reply)
				s.scripted = append(s.scripted, r)
				candidates = append(candidates, r)
			}
			var honest peer.ID
			if tc.honest {
				honest = s.add(provider(10))
				candidates = append(candidates[:min(len(candidates), 2)], honest)
			}
			j := s.submitQuiet(req, candidates...)
			// Unbounded, the job goes round as long as the rogue answers,
			// with no time passing: delivery never settles.
			if !s.settle(10 * MaxAttempts) {
				t.Fatalf("still going round after %d rounds of delivery: %d awards so far", 10*MaxAttempts, j.Attempt)
			}
			// Past the first minute, the hold-offs have reached their
			// longest.
			minute, atMinute := s.now.Add(time.Minute), uint32(0)
			s.runFor(time.Hour, func() bool {
				if !s.now.Before(minute) {
					if n := j.Attempt - atMinute; atMinute > 0 && tc.perMinute > 0 && n > tc.perMinute {
						t.Fatalf("%d awards in the minute before %v, want at most %d", n, s.now.Sub(t0), tc.perMinute)
					}
					minute, atMinute = s.now.Add(time.Minute), j.Attempt
				}
				if tc.honest && j.State == Running && j.Provider == honest {
					s.finish(honest, j.ID)
				}
				return j.State.Terminal()
			})
			if j.Attempt > tc.maxAttempts || j.State != tc.wantState {
				t.Fatalf("%d awards, state %s (error %q); want at most %d awards, %s", j.Attempt, j.State, j.Error, tc.maxAttempts, tc.wantState)
			}
			if tc.wantState == Failed && !strings.Contains(j.Error, fmt.Sprint(MaxAttempts, " awards")) {
				t.Fatalf("the job failed with %q, want the reason to name its %d awards", j.Error, MaxAttempts)
			}
		})
	}
}

// An honest provider that filled up between its bid and the award
// declines that award once: it is not excluded, and wins the job when it
// bids again, once its hold-off has passed.
func TestProviderDecliningOneAwardIsNotExcluded(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.rogue()
	s.scripts[p] = awardDecliner(p, 1, declineAward(p))
	s.scripted = append(s.scripted, p)
	j := s.submitQuiet(req, p)
	s.flush()
	s.runFor(time.Minute, func() bool { return j.State == Running })
	if j.State != Running || j.Provider != p || j.Attempt != 2 || len(j.Excluded) != 0 {
		t.Fatalf("state %s, provider %s, %d awards, excluded %v; want it running with p at the second award", j.State, j.Provider, j.Attempt, j.Excluded)
	}
	if took := s.now.Sub(t0); took > 4*simTiming.InteractiveWindow {
		t.Fatalf("the second award came after %v", took)
	}
}

// A few identities sending biddable offers with 60 KB specs, more than the
// provider's whole offer memory, do not evict an honest requester's offer
// that the provider just bid on: past the total, memos go from the
// requester holding the most bytes first, so one within its fair share
// keeps its memos and its award is leased, not declined as unknown.
func TestOfferFloodDoesNotEvictAnHonestRequestersOffer(t *testing.T) {
	const identities = 5 // each within its own budget, together over the total
	s := newSim(t)
	p := s.add(provider(10))
	honest := s.rogue()
	offer := s.offerFor(honest, 1, s.now.Add(time.Minute), noopSpec(1))
	s.engines[p].Step(s.now, offer)
	if b := take(s.engines[p]).Send[0].Msg.GetBid(); b == nil {
		t.Fatal("the provider did not bid on the honest offer")
	}
	big := noopSpec(1)
	for range 15 {
		big.Args = append(big.Args, strings.Repeat("x", 4000))
	}
	perIdentity := DefaultOfferMemoryPerRequester/(memoOverhead+4000*15) + 8
	for range identities {
		attacker := s.rogue()
		for range perIdentity {
			s.engines[p].Step(s.now, s.offerFor(attacker, 1, s.now.Add(protocol.MaxJobLifetime), big))
		}
		take(s.engines[p])
	}
	if _, bytes := s.engines[p].OfferMemory(); bytes > DefaultOfferMemory || bytes < DefaultOfferMemory*9/10 {
		t.Fatalf("the flood left %d bytes of memos, want the budget (%d) nearly full", bytes, DefaultOfferMemory)
	}
	s.engines[p].Step(s.now, s.sign(honest, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: offer.Job[:], Provider: []byte(p), Price: 10, Attempt: 1,
	}}}))
	r := take(s.engines[p])
	if len(r.Send) != 1 || r.Send[0].Msg.GetAccept() == nil || len(r.Run) != 1 {
		t.Fatalf("the honest award after the flood was answered %v, want a lease", r.Send[0].Msg.Body)
	}
}

// Fail ends a job with its reason and stops the provider running it; an
// ended job stays as it ended.
func TestFailEndsAJobAndStopsItsLease(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, j, Running)
	if !s.engines[req].Fail(s.now, j.ID, "offer no longer valid") {
		t.Fatal("Fail refused a running job")
	}
	s.flush()
	wantState(t, j, Failed)
	if j.Error != "offer no longer valid" || !slices.Contains(s.stops[p], j.ID) || s.engines[p].ActiveLeases() != 0 {
		t.Fatalf("error %q, provider stopped %v with %d leases", j.Error, s.stops[p], s.engines[p].ActiveLeases())
	}
	if s.engines[req].Fail(s.now, j.ID, "again") || j.Error != "offer no longer valid" {
		t.Fatalf("Fail changed an ended job: %q", j.Error)
	}
}
