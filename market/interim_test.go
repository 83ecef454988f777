package market

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
)

// payInterval is the tests' settlement interval: interim bills every 3 s,
// a pause after 1 s unanswered. The price is 1 per millisecond.
const (
	payInterval = 4 * time.Second
	payPrice    = 1000
	payStep     = 250 * time.Millisecond
)

// meter is a provider's run as the runner meters it: active time since
// its start, paused spans left out.
type meter struct {
	start, pausedAt time.Time
	paused          time.Duration
	pauses, resumes int
}

func (m *meter) active(now time.Time) time.Duration {
	d := now.Sub(m.start) - m.paused
	if !m.pausedAt.IsZero() {
		d -= now.Sub(m.pausedAt)
	}
	return d
}

func (m *meter) usage(now time.Time) *pb.Usage {
	ms := m.active(now).Milliseconds()
	return &pb.Usage{WallMs: ms, GpuMs: ms}
}

func (m *meter) set(now time.Time, resume bool) {
	switch {
	case resume && !m.pausedAt.IsZero():
		m.paused += now.Sub(m.pausedAt)
		m.pausedAt = time.Time{}
		m.resumes++
	case !resume && m.pausedAt.IsZero():
		m.pausedAt = now
		m.pauses++
	}
}

// payRun is one long noop job of a requester on a provider, billed as it
// goes; unpaid is the most the provider ran beyond what it held an
// acceptance for, in credits (sampled at every step).
type payRun struct {
	s         *sim
	req, prov peer.ID
	j         *Job
	m         *meter
	unpaid    uint64
}

func startPayRun(t *testing.T, checkAcceptances bool) *payRun {
	s := newSim(t)
	r := &payRun{s: s, req: s.add(nil), prov: s.add(provider(payPrice)), m: &meter{}}
	for _, id := range []peer.ID{r.req, r.prov} {
		s.engines[id].cfg.SettlementInterval = payInterval
	}
	pe := s.engines[r.prov]
	pe.cfg.RunUsage = func(_ protocol.JobID, _ uint32) (*pb.Usage, bool) { return r.m.usage(s.now), true }
	if checkAcceptances {
		pe.cfg.CheckAcceptance = func(c ClaimRequest) error {
			return ledger.Acceptance{Job: ledger.Hash(c.Job), Requester: c.Requester, Provider: r.prov, HoldSeq: c.HoldSeq,
				Amount: c.Amount, Final: c.Final, Receipt: c.Receipt}.Verify(simNet, c.Acceptance)
		}
	}
	s.onPause = func(_ peer.ID, p PauseRequest) { r.m.set(s.now, p.Resume) }
	r.j = s.submitExec(r.req, "noop", 1, payPrice, r.prov) // max_duration 1 h
	wantState(t, r.j, Running)
	r.m.start = s.now
	pe.RunStarted(s.now, r.j.ID, r.j.Attempt, 1, s.now.Add(time.Hour))
	return r
}

// runFor advances the clock by d in steps, sampling what the provider
// ran unpaid.
func (r *payRun) runFor(d time.Duration) {
	for end := r.s.now.Add(d); r.s.now.Before(end); {
		r.s.advance(payStep)
		if ran, acc := uint64(r.m.active(r.s.now).Milliseconds()), r.accepted(); ran > acc {
			r.unpaid = max(r.unpaid, ran-acc)
		}
	}
}

// accepted is the latest interim acceptance the provider holds.
func (r *payRun) accepted() uint64 {
	pe := r.s.engines[r.prov]
	if l, ok := pe.leases[r.j.ID]; ok && l.pay != nil {
		return l.pay.accepted
	}
	if b := pe.bills[billKey{r.j.ID, r.j.Attempt, r.req}]; b != nil && b.pay != nil {
		return b.pay.accepted
	}
	return 0
}

// end ends the run now, with the usage metered so far.
func (r *payRun) end(reason string) {
	r.s.finishWith(r.prov, r.j.ID, Outcome{Usage: r.m.usage(r.s.now), Error: reason})
}

// intervalCost is one settlement interval's price.
const intervalCost = uint64(payInterval/time.Millisecond) * payPrice / 1000

// A requester that answers every interim bill: the provider holds an
// acceptance of the usage at each bill, never pauses, claims nothing
// until the end, and then claims the final amount once.
func TestInterimBillsAreCountersignedAsTheRunGoes(t *testing.T) {
	r := startPayRun(t, true)
	r.runFor(10 * time.Second)
	if got := r.accepted(); got != 9000 {
		t.Fatalf("provider holds an acceptance of %d, want 9000 (bills at 3, 6 and 9 s)", got)
	}
	if a := r.j.award(r.j.Attempt, r.prov); a.Accepted != 9000 || a.Final {
		t.Fatalf("requester accepted %d (final %v)", a.Accepted, a.Final)
	}
	if r.m.pauses != 0 || len(r.s.claims[r.prov]) != 0 || r.unpaid > intervalCost {
		t.Fatalf("pauses %d, claims %v, ran %d unpaid", r.m.pauses, r.s.claims[r.prov], r.unpaid)
	}
	r.end("")
	wantState(t, r.j, Succeeded)
	if c := r.s.claims[r.prov]; len(c) != 1 || !c[0].Final || c[0].Amount != 10000 {
		t.Fatalf("claims %+v, want one final claim of 10000", c)
	}
}

// A requester that stops countersigning: the run is paused a quarter
// interval after the unanswered bill, the bill is sent again, and the run
// resumes when the acceptance comes; at no time did the provider run
// more than one interval beyond what it held an acceptance for.
func TestSilentRequesterPausesTheRunUntilItAnswers(t *testing.T) {
	r := startPayRun(t, true)
	r.runFor(4 * time.Second) // the 3 s bill is accepted
	r.s.withhold = true
	r.runFor(4 * time.Second) // the 6 s bill is not: paused at 7 s
	if r.m.pauses != 1 || !r.s.engines[r.prov].Paused(r.j.ID) || r.m.active(r.s.now) != 7*time.Second {
		t.Fatalf("pauses %d, paused %v, ran %v: want a pause at 7 s", r.m.pauses, r.s.engines[r.prov].Paused(r.j.ID), r.m.active(r.s.now))
	}
	wantState(t, r.j, Running) // heartbeats go on: the job is not re-awarded
	r.s.withhold = false
	r.runFor(time.Second) // the bill comes again, is accepted, the run resumes
	if r.m.resumes != 1 || r.s.engines[r.prov].Paused(r.j.ID) || r.accepted() != 6000 {
		t.Fatalf("resumes %d, paused %v, accepted %d", r.m.resumes, r.s.engines[r.prov].Paused(r.j.ID), r.accepted())
	}
	r.runFor(10 * time.Second)
	if r.m.pauses != 1 || r.unpaid > intervalCost {
		t.Fatalf("pauses %d; the provider ran %d unpaid, more than an interval's %d", r.m.pauses, r.unpaid, intervalCost)
	}
	if r.unpaid != intervalCost {
		t.Fatalf("ran %d unpaid at most, want exactly an interval's %d (the 3 s acceptance to the 7 s pause)", r.unpaid, intervalCost)
	}
}

// A requester that vanishes for good: the run stays paused until the
// runner's grace stops it; its final bill goes unanswered, and the
// provider claims the last interim acceptance (not closing the hold). The
// provider lost at most one interval; the requester paid only for time it
// observed. Should the requester come back, the final bill is paid.
func TestVanishedRequesterIsClaimedItsLastAcceptance(t *testing.T) {
	r := startPayRun(t, true)
	r.runFor(4 * time.Second)
	r.s.cut[r.req] = true
	r.runFor(4*time.Second + 2*payInterval) // paused at 7 s, the grace (2 intervals) passes
	r.end("stopped: usage receipts not countersigned within grace")
	r.runFor(2 * time.Second)
	claims := r.s.claims[r.prov]
	if len(claims) != 1 || claims[0].Final || claims[0].Amount != 3000 || claims[0].Receipt != InterimReceipt(r.j.ID, r.j.Attempt, 1) {
		t.Fatalf("claims %+v, want one interim claim of the 3 s acceptance", claims)
	}
	if ran := uint64(r.m.active(r.s.now).Milliseconds()); ran-claims[0].Amount > intervalCost {
		t.Fatalf("ran %d, claimed %d: lost more than an interval", ran, claims[0].Amount)
	}
	limit, _ := MaxCost(payPrice, r.j.Spec())
	if observed := BillCap(payPrice, r.j.Spec(), 3*time.Second, DefaultBillTolerance, limit); claims[0].Amount > observed {
		t.Fatalf("requester paid %d, more than the %d it observed", claims[0].Amount, observed)
	}
	r.s.cut[r.req] = false
	r.runFor(2 * time.Second)
	claims = r.s.claims[r.prov]
	if len(claims) != 2 || !claims[1].Final || claims[1].Amount != 7000 {
		t.Fatalf("claims %+v, want the final 7000 once the requester is back", claims)
	}
}

// A run that pauses stretched towards its hold's expiry claims what was
// countersigned half a claim window before the expiry, while a claim can
// still draw on the hold, and runs on; each later acceptance is claimed as
// it comes.
func TestInterimAcceptanceIsClaimedBeforeTheHoldExpires(t *testing.T) {
	r := startPayRun(t, true)
	pe := r.s.engines[r.prov]
	pe.cfg.ClaimWindow = 8 * time.Second
	pe.leases[r.j.ID].pay.expiry = r.s.now.Add(20 * time.Second) // claimed from 16 s
	r.runFor(15 * time.Second)
	if len(r.s.claims[r.prov]) != 0 {
		t.Fatalf("claims %+v before the time", r.s.claims[r.prov])
	}
	r.runFor(2 * time.Second)
	if c := r.s.claims[r.prov]; len(c) != 1 || c[0].Final || c[0].Amount != 15000 {
		t.Fatalf("claims %+v, want one interim claim of the 15 s acceptance", c)
	}
	r.runFor(5 * time.Second)
	var amounts []uint64
	for _, c := range r.s.claims[r.prov] {
		amounts = append(amounts, c.Amount)
	}
	if !slices.Equal(amounts, []uint64{15000, 18000, 21000}) || r.m.pauses != 0 {
		t.Fatalf("claimed %v (want each acceptance from then on), pauses %d", amounts, r.m.pauses)
	}
}

// A patched provider's interim bills are accepted only up to what the
// requester observed since the lease's acceptance, plus the tolerance,
// and never above their own usage; a bill accepted already gets the same
// acceptance again.
func TestInterimBillIsCappedByWhatTheRequesterObserved(t *testing.T) {
	for _, tc := range []struct {
		name   string
		usage  int64
		amount uint64
		want   uint64
	}{
		{"an honest bill", 3000, 3000, 3000},
		// 3 s observed: 3 s + 1 s + 5% of 3 s.
		{"an hour of usage after 3 s", 3_600_000, 3_600_000, 4150},
		{"an amount above its own usage", 3000, 9000, 3000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startPayRun(t, true)
			r.s.now = r.s.now.Add(3 * time.Second)
			bill := &pb.Bill{JobId: r.j.ID[:], Attempt: r.j.Attempt, HoldSeq: 1, Receipt: make([]byte, 32),
				Usage: &pb.Usage{WallMs: tc.usage, GpuMs: tc.usage}, Amount: tc.amount}
			r.s.engines[r.req].Step(r.s.now, r.s.sign(r.prov, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: bill}}))
			r.s.flush()
			a := r.j.award(r.j.Attempt, r.prov)
			if a.Accepted != tc.want || a.Final || a.Acceptance == nil {
				t.Fatalf("accepted %d (final %v), want %d", a.Accepted, a.Final, tc.want)
			}
			sent := len(r.s.log[r.req])
			r.s.engines[r.req].Step(r.s.now, r.s.sign(r.prov, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: bill}}))
			r.s.flush()
			if a.Accepted != tc.want || len(r.s.log[r.req]) != sent+1 {
				t.Fatalf("the bill again: accepted %d, sends %v", a.Accepted, r.s.log[r.req][sent:])
			}
		})
	}
}

// A requester that answers interim bills with acceptances no ledger would
// take (garbage where the signature goes) would keep a run going that it
// never has to pay for: without the check the run resumes on it; with the
// provider's check (Config.CheckAcceptance, the ledger's own) it stays
// paused.
func TestForgedInterimAcceptanceDoesNotResumeTheRun(t *testing.T) {
	for _, tc := range []struct {
		name    string
		check   bool
		resumed bool
	}{
		{"unchecked: the attack works", false, true},
		{"checked", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startPayRun(t, tc.check)
			r.s.cut[r.req] = true
			r.runFor(4 * time.Second) // the 3 s bill unanswered: paused at 4 s
			if r.m.pauses != 1 {
				t.Fatalf("pauses %d", r.m.pauses)
			}
			forged := &pb.Accepted{JobId: r.j.ID[:], Attempt: r.j.Attempt, Amount: 3000, Acceptance: make([]byte, ledger.AcceptanceSize)}
			r.s.engines[r.prov].Step(r.s.now, r.s.sign(r.req, &pb.MarketMessage{Body: &pb.MarketMessage_Accepted{Accepted: forged}}))
			r.s.flush()
			if got := r.m.resumes == 1; got != tc.resumed {
				t.Fatalf("resumed %v, want %v", got, tc.resumed)
			}
		})
	}
}

// A lease no longer than the interval is billed once, at its end.
func TestShortLeaseHasNoInterimBills(t *testing.T) {
	s := newSim(t)
	req, prov := s.add(nil), s.add(provider(payPrice))
	s.engines[prov].cfg.SettlementInterval = payInterval
	s.engines[prov].cfg.RunUsage = func(_ protocol.JobID, _ uint32) (*pb.Usage, bool) { return &pb.Usage{WallMs: 1, GpuMs: 1}, true }
	j := s.submit(req, "interactive", payPrice, time.Minute, 1, prov) // max_duration 1 s
	s.engines[prov].RunStarted(s.now, j.ID, j.Attempt, 1, s.now.Add(time.Hour))
	s.advance(2 * payInterval)
	for _, l := range s.log[prov] {
		if l == "send Bill 0" {
			t.Fatalf("a 1 s lease was billed as it ran: %v", s.log[prov])
		}
	}
}

// A rogue provider that raises its interim bill by 1 µcr at every
// message would cost its requester a signature and a job write each: the
// requester signs at most one new interim acceptance per half interval of
// each award, and answers the rest with the acceptance it holds.
func TestInterimAcceptancesAreRateLimited(t *testing.T) {
	r := startPayRun(t, false)
	r.runFor(4 * time.Second) // one honest bill at 3 s, accepted
	first := r.j.award(r.j.Attempt, r.prov).Accepted
	l := r.s.engines[r.prov].leases[r.j.ID]
	re := r.s.engines[r.req]
	asked := 0
	for i := range uint64(50) {
		r.s.now = r.s.now.Add(10 * time.Millisecond)
		bill := &pb.Bill{JobId: r.j.ID[:], Attempt: r.j.Attempt, HoldSeq: 1, Receipt: l.pay.receipt[:],
			Usage: &pb.Usage{WallMs: int64(first + 1 + i)}, Amount: first + 1 + i}
		re.Step(r.s.now, r.s.sign(r.prov, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: bill}}))
		rd := take(re)
		asked += len(rd.NeedAcceptances)
		r.s.settleBills(r.req, rd) // signed as the node signs them
	}
	if got := r.j.award(r.j.Attempt, r.prov).Accepted; got > first+1 {
		t.Errorf("requester raised its acceptance from %d to %d within half an interval", first, got)
	}
	if asked > 1 {
		t.Errorf("50 bills raised by 1 µcr each within half an interval cost the requester %d signatures", asked)
	}
}
