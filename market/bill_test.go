package market

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// finishWith ends p's run of job id with outcome o (its attempt and hold
// filled in) and delivers what follows.
func (s *sim) finishWith(p peer.ID, id protocol.JobID, o Outcome) {
	s.t.Helper()
	if l, ok := s.engines[p].leases[id]; ok {
		o.Attempt = l.Attempt
	}
	if o.HoldSeq == 0 && o.Declined == "" {
		o.HoldSeq = 1
	}
	if o.ResultID == "" {
		o.Output, o.ResultID, o.ResultSize = []byte("ok"), okID, 2
	}
	s.engines[p].Finished(s.now, id, o)
	s.flush()
}

func (s *sim) submitExec(req peer.ID, executor string, gpus uint32, price uint64, cands ...peer.ID) *Job {
	s.t.Helper()
	spec := &pb.JobSpec{Executor: executor, Tier: protocol.TierInteractive, MaxPrice: price, MaxDurationMs: 3_600_000,
		Resources: &pb.Resources{Gpus: gpus}}
	return s.submitSpec(req, spec, time.Hour, cands...)
}

func wasmProvider(floor uint64) *ProviderPolicy {
	p := provider(floor)
	p.Executors = []string{"noop", "wasm", "process"}
	return p
}

// A patched provider that bills an hour of GPU time for a run the
// requester saw take 6 ms is accepted at most what the requester observed
// plus the tolerance. Its engine takes such an acceptance (far below the
// bill) as short: the result stays, and only shortly before the hold's
// expiry is the acceptance claimed, that amount, final.
func TestBillIsCappedByWhatTheRequesterObserved(t *testing.T) {
	for _, tc := range []struct {
		name     string
		executor string
		gpus     uint32
		usage    *pb.Usage
		want     uint64 // at price 1000 per GPU-second: 1 per GPU-ms
	}{
		// 6 ms observed: 6 ms + 1 s + 5% of 6 ms = 1006 ms of one GPU.
		{"an hour of GPU time for 6 ms", "process", 1, &pb.Usage{WallMs: 3_600_000, GpuMs: 3_600_000}, 1006},
		{"two GPUs: the cap doubles", "process", 2, &pb.Usage{WallMs: 3_600_000, GpuMs: 7_200_000}, 2012},
		{"an honest bill under the cap is paid as billed", "process", 1, &pb.Usage{WallMs: 6, GpuMs: 6}, 6},
		// A wasm job is handed no GPU: billed its wall time as one unit.
		{"wasm: wall time, no GPU-ms", "wasm", 4, &pb.Usage{WallMs: 5, GpuMs: 20}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			prov := s.add(wasmProvider(1000))
			s.engines[prov].cfg.Provider.GPUs = []protocol.GPU{{Model: "nvidia-h100", VRAMMiB: 80000, Count: 4}}
			j := s.submitExec(req, tc.executor, tc.gpus, 1000, prov)
			wantState(t, j, Running)
			s.now = s.now.Add(6 * time.Millisecond)
			s.finishWith(prov, j.ID, Outcome{Usage: tc.usage})
			if a := j.award(j.Attempt, prov); a.Accepted != tc.want || !a.Final {
				t.Fatalf("requester accepted %d (final %v), want %d", a.Accepted, a.Final, tc.want)
			}
			if short := int64(tc.want) < BillableMS(j.Spec(), tc.usage); short {
				if len(s.claims[prov]) != 0 || sentResult(s, prov) || s.engines[prov].ShortAcceptances() != 1 {
					t.Fatalf("short acceptance: claims %+v, result sent %v", s.claims[prov], sentResult(s, prov))
				}
				s.advance(DefaultClaimWindow / 2) // the bill's hold expires a claim window after the run
				if sentResult(s, prov) || s.engines[prov].Bills() != 0 {
					t.Fatal("the result left, or the bill stayed, after the short acceptance was claimed")
				}
			} else {
				wantState(t, j, Succeeded)
			}
			claims := s.claims[prov]
			if len(claims) != 1 || claims[0].Amount != tc.want || !claims[0].Final {
				t.Fatalf("claims %+v, want one final claim of %d", claims, tc.want)
			}
			if tc.executor == "wasm" && j.Usage.GpuMs != 0 {
				t.Fatalf("a wasm job's receipt bills %d GPU-ms", j.Usage.GpuMs)
			}
		})
	}
}

// A requester that goes silent once the run ended: the bill is re-sent
// until it answers; one that goes silent after it accepted: the provider
// has its claim, and the result is re-sent until acknowledged.
func TestBillsAndResultsAreResentUntilAnswered(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	wantState(t, j, Running)
	s.cut[req] = true
	s.finishWith(prov, j.ID, Outcome{Usage: &pb.Usage{WallMs: 10, GpuMs: 10}})
	for range 5 {
		s.advance(simTiming.HeartbeatInterval)
	}
	if s.engines[prov].Bills() != 1 || len(s.claims[prov]) != 0 {
		t.Fatal("the bill was dropped while the requester was silent")
	}
	s.cut[req] = false
	s.advance(simTiming.HeartbeatInterval)
	wantState(t, j, Succeeded)
	if len(s.claims[prov]) != 1 || s.engines[prov].Bills() != 0 {
		t.Fatalf("claims %d, bills left %d", len(s.claims[prov]), s.engines[prov].Bills())
	}
	if j.Leases != 1 || j.Attempt != 1 {
		t.Fatalf("job leased %d times, attempt %d: a silent requester re-awarded it", j.Leases, j.Attempt)
	}
}

// A claim the ledger refuses (a bad acceptance, say) sends the bill again;
// no result leaves before a claim is written.
func TestNoResultBeforeTheClaim(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	s.claimErr = errBadTest
	s.finishWith(prov, j.ID, Outcome{Usage: &pb.Usage{WallMs: 10, GpuMs: 10}})
	wantState(t, j, Running)
	s.claimErr = nil
	s.advance(simTiming.HeartbeatInterval)
	wantState(t, j, Succeeded)
	if len(s.claims[prov]) != 1 {
		t.Fatalf("claims %v", s.claims[prov])
	}
}

// A result sent without a bill the requester accepted (a provider that
// skips the bill) does not end the job.
func TestResultWithoutAcceptedBillIsRefused(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	s.engines[req].Step(s.now, s.sign(prov, &pb.MarketMessage{Body: &pb.MarketMessage_Result{Result: &pb.Result{
		JobId: j.ID[:], Attempt: j.Attempt, Output: []byte("ok"), ResultId: okID, ResultSize: 2}}}))
	s.flush()
	wantState(t, j, Running)
	if j.RefusedResults != 1 {
		t.Fatalf("refused %d", j.RefusedResults)
	}
}

// A requester restarted after its provider's run ended (its heartbeat
// timeout long past) hears the provider's re-sent bill before it gives the
// job to another: the provider that ran it is paid, once, and the job is
// not awarded again.
func TestRestartedRequesterPaysTheRunNotASecond(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	other := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Hour, 1, prov, other)
	wantState(t, j, Running)
	rec, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	s.cut[req] = true // killed
	s.advance(simTiming.HeartbeatInterval)
	s.finishWith(prov, j.ID, Outcome{Usage: &pb.Usage{WallMs: 1500, GpuMs: 1500}})
	s.advance(10 * simTiming.HeartbeatTimeout) // down a long while

	var restored Job
	if err := json.Unmarshal(rec, &restored); err != nil {
		t.Fatal(err)
	}
	cfg := simTiming
	cfg.Self = req
	s.engines[req] = NewEngine(cfg)
	s.engines[req].Restore(s.now, &restored, s.sign(req, &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: j.offer}}))
	s.cut[req] = false
	s.engines[req].Tick(s.now)
	s.flush()
	wantState(t, &restored, Running)
	s.advance(simTiming.HeartbeatInterval) // the bill comes again
	wantState(t, &restored, Succeeded)
	if restored.Attempt != 1 || len(s.runs[other]) != 0 || len(s.claims[prov]) != 1 {
		t.Fatalf("attempt %d, runs elsewhere %d, claims %d", restored.Attempt, len(s.runs[other]), len(s.claims[prov]))
	}
}

// An award a provider declines is given back with a waive before the
// decline leaves; a run the escrow check stopped is declined, not billed.
func TestDeclinedAwardsAreWaived(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	wantState(t, j, Running)
	s.finishWith(prov, j.ID, Outcome{Declined: "escrow hold expires too soon", Waive: []byte("waive")})
	if len(s.claims[prov]) != 0 || j.State == Succeeded {
		t.Fatalf("a run stopped at the escrow check was billed: state %s", j.State)
	}
	if !hasDecline(j, prov) {
		t.Fatalf("declines %v", j.Declines)
	}
	// An award of a job the provider does not know: waived, declined.
	s2 := newSim(t)
	req2 := s2.add(nil)
	prov2 := s2.add(provider(10))
	id := protocol.JobID{7}
	s2.engines[prov2].Step(s2.now, s2.sign(req2, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: id[:], Provider: []byte(prov2), Price: 10, Attempt: 1, Hold: []byte("hold")}}}))
	r := take(s2.engines[prov2])
	if len(r.Waives) != 1 || len(r.Send) != 0 || r.Waives[0].Reason != ReasonUnknownJob {
		t.Fatalf("waives %+v, sends %d: want a waive first, no decline yet", r.Waives, len(r.Send))
	}
	s2.engines[prov2].Waived(r.Waives[0], []byte("waive"))
	r = take(s2.engines[prov2])
	if len(r.Send) != 1 || string(r.Send[0].Msg.GetDecline().GetWaive()) != "waive" {
		t.Fatalf("sends %v, want the decline with its waive", kinds(r.Send))
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errBadTest = testError("refused")
