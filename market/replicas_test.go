package market

import (
	"crypto/sha256"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// simVotes is the sim's stand-in for the ledger's verdicts: each
// provider's first receipt of a job is its vote, and a majority claim or
// release is written only when the votes recorded so far support it, as
// protocol/ledger's rules check it.
type simVotes struct {
	votes    map[protocol.JobID]map[peer.ID]string // job → provider → outcome
	claimed  map[protocol.JobID][]peer.ID          // majority claims written
	released map[protocol.JobID][]peer.ID          // majority releases written
}

// settleVerdicts records a Ready's receipts as votes and answers its
// majority claims and releases.
func (s *sim) settleVerdicts(from peer.ID, r Ready) {
	v := &s.ledger
	if v.votes == nil {
		v.votes, v.claimed, v.released = map[protocol.JobID]map[peer.ID]string{}, map[protocol.JobID][]peer.ID{}, map[protocol.JobID][]peer.ID{}
	}
	for _, b := range r.Receipts {
		id := protocol.JobID(b.JobId)
		if v.votes[id] == nil {
			v.votes[id] = map[peer.ID]string{}
		}
		if _, ok := v.votes[id][from]; !ok {
			v.votes[id][from] = outcomeKey(b.ResultId, b.OutputsId)
		}
	}
	e := s.engines[from]
	for _, c := range r.MajorityClaims {
		err := v.verdict(s.engines[c.Requester], c.Job, from, true)
		if err == nil {
			v.claimed[c.Job] = append(v.claimed[c.Job], from)
		}
		e.MajorityClaimWritten(s.now, c, err)
	}
	for _, rel := range r.MajorityReleases {
		err := v.verdict(e, rel.Job, rel.Loser, false)
		if err == nil && !slices.Contains(v.released[rel.Job], rel.Loser) {
			v.released[rel.Job] = append(v.released[rel.Job], rel.Loser)
		}
		e.MajorityReleased(s.now, rel, err)
	}
}

// verdict is the ledger's answer to p's majority claim (claim) or to the
// release of p's hold: nil if the votes support it.
func (v *simVotes) verdict(requester *Engine, job protocol.JobID, p peer.ID, claim bool) error {
	j := requester.jobs[job]
	need := protocol.Replicas(j.Spec())/2 + 1
	own, ok := v.votes[job][p]
	if !ok {
		return ErrNoMajorityYet
	}
	count := map[string]int{}
	for _, o := range v.votes[job] {
		count[o]++
	}
	for o, n := range count {
		if n >= need && (o == own) == claim {
			return nil
		}
		if n >= need {
			return ErrMinority
		}
	}
	return ErrNoMajorityYet
}

var badID = func() string {
	sum := sha256.Sum256([]byte("random"))
	id, _ := protocol.BlobID(sum[:])
	return id.String()
}()

// submitReplicated submits a batch noop job asking k replicas and closes
// its bidding window.
func (s *sim) submitReplicated(req peer.ID, k uint32) *Job {
	s.t.Helper()
	j := s.submitSpec(req, &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, MaxPrice: 100, MaxDurationMs: 60_000,
		Resources: &pb.Resources{Gpus: 1}, Verify: &pb.Verify{Replicas: k}}, time.Hour)
	s.advance(simTiming.BatchWindow)
	return j
}

// replicaOf finishes p's run of j with output out.
func (s *sim) replicaOf(p peer.ID, j *Job, out string) {
	s.t.Helper()
	o := Outcome{Usage: &pb.Usage{WallMs: 100}}
	if out != "ok" {
		o.Output, o.ResultSize, o.ResultID = []byte(out), uint64(len(out)), badID
	}
	s.finishWith(p, j.ID, o)
}

// A job with replicas: 3 goes to three distinct providers, each award
// with a hold of its own naming its provider and stating 3; the two that
// agree are the majority, whose result is the job's and who claim their
// holds by the majority; the third (the cheapest bidder, a rogue that
// returns random output) is released by the majority and paid nothing.
func TestReplicasMajorityIsPaidMinorityReleased(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	rogue := s.add(provider(1))
	honest := []peer.ID{s.add(provider(5)), s.add(provider(6)), s.add(provider(7))}
	s.heldBack = true
	j := s.submitReplicated(req, 3)
	holds := s.holds[req]
	s.writeHolds(req, nil)
	s.flush()
	var named []peer.ID
	for _, h := range holds {
		if h.Replicas != 3 || slices.Contains(named, h.Provider) {
			t.Fatalf("hold requests %+v: want one per distinct provider, each stating 3 replicas", holds)
		}
		named = append(named, h.Provider)
	}
	want := []peer.ID{rogue, honest[0], honest[1]} // the three cheapest
	if len(named) != 3 || !sameSet(named, want) {
		t.Fatalf("awards to %v, want %v", named, want)
	}
	wantState(t, j, Running)
	s.replicaOf(rogue, j, "random")
	s.replicaOf(honest[0], j, "ok")
	wantState(t, j, Running) // one vote each way: no majority yet
	s.replicaOf(honest[1], j, "ok")
	for range 3 {
		s.advance(simTiming.HeartbeatInterval)
	}
	wantState(t, j, Succeeded)
	if j.ResultID != okID || j.Provider == rogue {
		t.Fatalf("job's result %s from %s, want the majority's %s", j.ResultID, j.Provider, okID)
	}
	if got := s.ledger.claimed[j.ID]; !sameSet(got, honest[:2]) {
		t.Fatalf("majority claims by %v, want %v", got, honest[:2])
	}
	if got := s.ledger.released[j.ID]; !slices.Equal(got, []peer.ID{rogue}) {
		t.Fatalf("majority releases of %v, want the rogue's", got)
	}
	if len(s.claims[rogue])+len(s.claims[honest[0]]) != 0 {
		t.Fatal("a replica claimed by acceptance")
	}
	for _, p := range append(honest[:2], rogue) {
		if n := s.engines[p].Bills(); n != 0 {
			t.Fatalf("provider %s has %d bills left", p, n)
		}
	}
	if a := j.award(awardOf(j, rogue).Attempt, rogue); a.Verdict != VerdictMinority || !a.Released {
		t.Fatalf("the rogue's award %+v", a)
	}
}

// Replicas that cannot make a majority fail the job with "no majority",
// and nobody claims or is released.
func TestReplicasWithoutMajorityFail(t *testing.T) {
	for _, tc := range []struct {
		name    string
		outputs []string // the three replicas' results ("" : silent)
	}{
		{"three different results", []string{"ok", "random", "other"}},
		{"one silent, two differ", []string{"ok", "random", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			ps := []peer.ID{s.add(provider(1)), s.add(provider(2)), s.add(provider(3))}
			j := s.submitReplicated(req, 3)
			wantState(t, j, Running)
			for i, out := range tc.outputs {
				switch out {
				case "":
					s.cut[ps[i]] = true
				case "ok":
					s.replicaOf(ps[i], j, out)
				default:
					o := Outcome{Usage: &pb.Usage{WallMs: 100}, Output: []byte(out), ResultSize: uint64(len(out))}
					sum := sha256.Sum256([]byte(out))
					id, _ := protocol.BlobID(sum[:])
					o.ResultID = id.String()
					s.finishWith(ps[i], j.ID, o)
				}
			}
			for range 5 {
				s.advance(simTiming.HeartbeatTimeout)
			}
			wantState(t, j, Failed)
			if j.Error != ReasonNoMajority || len(s.ledger.claimed[j.ID])+len(s.ledger.released[j.ID]) != 0 {
				t.Fatalf("error %q, claims %v, releases %v", j.Error, s.ledger.claimed[j.ID], s.ledger.released[j.ID])
			}
		})
	}
}

// A replica that goes silent is not replaced (it could not vote): the two
// others agree, and that is a majority of three.
func TestSilentReplicaLeavesAMajorityOfTheOthers(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	ps := []peer.ID{s.add(provider(1)), s.add(provider(2)), s.add(provider(3)), s.add(provider(4))}
	j := s.submitReplicated(req, 3)
	wantState(t, j, Running)
	s.cut[ps[0]] = true
	for range 4 {
		s.advance(simTiming.HeartbeatInterval)
	}
	s.replicaOf(ps[1], j, "ok")
	s.replicaOf(ps[2], j, "ok")
	for range 3 {
		s.advance(simTiming.HeartbeatInterval)
	}
	wantState(t, j, Succeeded)
	if n := len(j.Awards); n != 3 || awardOf(j, ps[3]) != nil {
		t.Fatalf("%d awards, the fourth provider awarded: %v", n, awardOf(j, ps[3]) != nil)
	}
	if !awardOf(j, ps[0]).Gone || !sameSet(s.ledger.claimed[j.ID], ps[1:3]) {
		t.Fatalf("silent award %+v, claims %v", awardOf(j, ps[0]), s.ledger.claimed[j.ID])
	}
}

// Fewer acceptable bidders than replicas: no award, the job waits.
func TestReplicasWaitForKDistinctBidders(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	s.add(provider(1))
	s.add(provider(2))
	j := s.submitReplicated(req, 3)
	if j.State != Bidding || len(j.Awards) != 0 {
		t.Fatalf("state %s with %d awards, want bidding without awards", j.State, len(j.Awards))
	}
}

func awardOf(j *Job, p peer.ID) *AwardRecord {
	for i := range j.Awards {
		if j.Awards[i].Provider == p {
			return &j.Awards[i]
		}
	}
	return nil
}

func sameSet(a, b []peer.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			return false
		}
	}
	return true
}

// A replica its requester cancels (the job failed, say) gives its award
// back with a waive, and writes no receipt: a vote cut short would count
// as a verification loss against it.
func TestCancelledReplicaWaivesAndDoesNotVote(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	ps := []peer.ID{s.add(provider(1)), s.add(provider(2)), s.add(provider(3))}
	j := s.submitReplicated(req, 3)
	wantState(t, j, Running)
	if !s.engines[req].Cancel(s.now, j.ID, "user") {
		t.Fatal("not cancelled")
	}
	s.flush()
	for _, p := range ps {
		if got := s.stops[p]; len(got) != 1 {
			t.Fatalf("provider %s stopped %v", p, got)
		}
		l := s.engines[p].stopping[j.ID]
		s.engines[p].Finished(s.now, j.ID, Outcome{Attempt: l.Attempt, HoldSeq: 1, Usage: &pb.Usage{WallMs: 10}})
		s.flush()
		if len(s.waives[p]) != 1 || s.engines[p].Bills() != 0 || len(s.ledger.votes[j.ID]) != 0 {
			t.Fatalf("provider %s: waives %d, bills %d, votes %v", p, len(s.waives[p]), s.engines[p].Bills(), s.ledger.votes[j.ID])
		}
	}
}

// The attack replicas stop: without them (replicas 1), a rogue's random
// output is the job's result and is paid.
func TestWithoutReplicasARogueResultIsPaid(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	rogue := s.add(provider(1))
	j := s.submitReplicated(req, 1)
	wantState(t, j, Running)
	s.replicaOf(rogue, j, "random")
	wantState(t, j, Succeeded)
	if j.ResultID != badID || len(s.claims[rogue]) != 1 {
		t.Fatalf("result %s, claims %v", j.ResultID, s.claims[rogue])
	}
}

// A requester restarted before the release of a minority replica's hold
// was written asks for it again: the record keeps the verdict.
func TestRestartedRequesterReleasesTheMinorityAgain(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	rogue := s.add(provider(1))
	honest := []peer.ID{s.add(provider(5)), s.add(provider(6))}
	j := s.submitReplicated(req, 3)
	s.cut[req] = true // the releases and results do not get through
	s.replicaOf(rogue, j, "random")
	s.replicaOf(honest[0], j, "ok")
	s.replicaOf(honest[1], j, "ok")
	s.cut[req] = false
	s.advance(simTiming.HeartbeatInterval) // the bills come again
	a := awardOf(j, rogue)
	if a.Verdict != VerdictMinority || !a.Released {
		t.Fatalf("the rogue's award %+v", a)
	}
	a.Released = false // as if the node died before the release was written
	rec, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	var restored Job
	if err := json.Unmarshal(rec, &restored); err != nil {
		t.Fatal(err)
	}
	cfg := simTiming
	cfg.Self = req
	s.engines[req] = NewEngine(cfg)
	s.engines[req].Restore(s.now, &restored, s.sign(req, &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: j.offer}}))
	r := s.engines[req].Ready()
	if len(r.MajorityReleases) != 1 || r.MajorityReleases[0].Loser != rogue {
		t.Fatalf("releases after the restart: %+v", r.MajorityReleases)
	}
}
