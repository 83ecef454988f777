package market

import (
	"crypto/sha256"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// testJob is the i-th of a fixed sequence of job IDs.
func testJob(i int) protocol.JobID {
	return protocol.JobID(sha256.Sum256(fmt.Appendf(nil, "job-%d", i)))
}

// jobWhere is the first fixed job ID whose draw falls inside the newcomer
// share (in true) or outside it, so that a test's choice does not hang on
// a random ID.
func jobWhere(t *testing.T, share float64, in bool) protocol.JobID {
	t.Helper()
	for i := range 1000 {
		if id := testJob(i); (newcomerDraw(id) < share) == in {
			return id
		}
	}
	t.Fatal("no such job among 1000")
	return protocol.JobID{}
}

// records maps peers to records, for ReputationPolicy.Of.
type recordBook map[peer.ID]Record

func (b recordBook) of(p peer.ID) Record { return b[p] }

func TestRecordRisk(t *testing.T) {
	for _, tc := range []struct {
		rec           Record
		risk          float64
		newcomer, pro bool
	}{
		{Record{}, 1, true, false},
		{Record{JobsPaid: 1}, 0.5, false, true},
		{Record{JobsPaid: 10}, 1.0 / 11, false, true},
		{Record{JobsPaid: 10, Losses: 1}, 2.0/12 + 1.0/11, false, true},
		{Record{Losses: 1}, 2, false, false},
		{Record{JobsPaid: 1, Losses: 1}, 2.0/3 + 0.5, false, false},
		{Record{JobsPaid: 3, Losses: 3}, 4.0/7 + 0.5, false, false},
	} {
		t.Run(fmt.Sprintf("%+v", tc.rec), func(t *testing.T) {
			if got := tc.rec.Risk(); math.Abs(got-tc.risk) > 1e-12 {
				t.Errorf("risk %v, want %v", got, tc.risk)
			}
			if tc.rec.Newcomer() != tc.newcomer || tc.rec.Proven() != tc.pro {
				t.Errorf("newcomer %v proven %v, want %v %v", tc.rec.Newcomer(), tc.rec.Proven(), tc.newcomer, tc.pro)
			}
		})
	}
	// A record with losses and no more jobs paid than losses ranks below
	// a newcomer at the same price.
	for paid := range uint64(20) {
		for lost := max(paid, 1); lost < 20; lost++ {
			if r := (Record{JobsPaid: paid, Losses: lost}); r.Risk() <= 1 {
				t.Fatalf("%+v has risk %v, not above a newcomer's", r, r.Risk())
			}
		}
	}
}

func TestChooseBid(t *testing.T) {
	book := recordBook{
		"veteran":  {JobsPaid: 10},
		"veteran2": {JobsPaid: 10},
		"lossy":    {JobsPaid: 10, Losses: 1},
		"once":     {JobsPaid: 1},
		"failed":   {Losses: 1},
		"even":     {JobsPaid: 2, Losses: 2},
	}
	const share = 0.1
	policy := ReputationPolicy{Of: book.of, Weight: 1, NewcomerShare: share}
	outside, inside := jobWhere(t, share, false), jobWhere(t, share, true)
	rtt := map[peer.ID]time.Duration{"near": time.Millisecond, "far": 40 * time.Millisecond}
	bid := func(p string, price uint64) Bid { return Bid{Provider: peer.ID(p), Price: price} }
	for _, tc := range []struct {
		name     string
		policy   ReputationPolicy
		job      protocol.JobID
		bids     []Bid
		excluded []peer.ID
		want     peer.ID // "" for none
	}{
		{"off: the cheapest, whatever its record", ReputationPolicy{}, outside,
			[]Bid{bid("veteran", 100), bid("failed", 10)}, nil, "failed"},
		{"weight 0 is off", ReputationPolicy{Of: book.of, NewcomerShare: 1}, inside,
			[]Bid{bid("veteran", 100), bid("new", 50), bid("failed", 10)}, nil, "failed"},
		{"a proven provider before a cheaper newcomer", policy, outside,
			[]Bid{bid("new", 1), bid("veteran", 100)}, nil, "veteran"},
		{"a proven provider before a cheaper failed one", policy, outside,
			[]Bid{bid("failed", 1), bid("once", 100)}, nil, "once"},
		{"a long record beats a short one a little cheaper", policy, outside,
			[]Bid{bid("once", 100), bid("veteran", 110)}, nil, "veteran"},
		{"a short record wins when much cheaper", policy, outside,
			[]Bid{bid("once", 50), bid("veteran", 110)}, nil, "once"},
		{"losses rank below no losses at the same price", policy, outside,
			[]Bid{bid("lossy", 100), bid("veteran", 100)}, nil, "veteran"},
		{"losses rank below no losses a little cheaper", policy, outside,
			[]Bid{bid("lossy", 95), bid("veteran", 100)}, nil, "veteran"},
		{"no proven bid: a newcomer before a failed one at the same price", policy, outside,
			[]Bid{bid("failed", 100), bid("new", 100)}, nil, "new"},
		{"no proven bid: a newcomer before an even record", policy, outside,
			[]Bid{bid("even", 100), bid("new", 100)}, nil, "new"},
		{"no proven bid: among newcomers the cheapest", policy, outside,
			[]Bid{bid("new2", 30), bid("new", 20)}, nil, "new"},
		{"newcomer share: the newcomer, dearer than a veteran", policy, inside,
			[]Bid{bid("veteran", 10), bid("new", 40)}, nil, "new"},
		{"newcomer share: the cheapest newcomer", policy, inside,
			[]Bid{bid("veteran", 10), bid("new", 40), bid("new2", 30)}, nil, "new2"},
		{"newcomer share, no newcomer bid: the usual choice", policy, inside,
			[]Bid{bid("failed", 1), bid("veteran", 10)}, nil, "veteran"},
		{"newcomer share: not over the max price", policy, inside,
			[]Bid{bid("veteran", 10), bid("new", 201)}, nil, "veteran"},
		{"a proven bid over the max price is not taken", policy, outside,
			[]Bid{bid("veteran", 201), bid("new", 40)}, nil, "new"},
		{"an excluded provider is not taken", policy, outside,
			[]Bid{bid("veteran", 10), bid("new", 40)}, []peer.ID{"veteran"}, "new"},
		{"a tie: the nearer", policy, outside,
			[]Bid{bid("far", 10), bid("near", 10)}, nil, "near"},
		{"a tie of price and rtt: the lower peer ID", policy, outside,
			[]Bid{bid("veteran2", 10), bid("veteran", 10)}, nil, "veteran"},
		{"nothing acceptable", policy, outside,
			[]Bid{bid("veteran", 260)}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &Job{ID: tc.job, MaxPrice: 200, Bids: tc.bids, Excluded: tc.excluded}
			i := chooseBid(j, tc.policy, func(p peer.ID) time.Duration { return rtt[p] })
			got := peer.ID("")
			if i >= 0 {
				got = j.Bids[i].Provider
			}
			if got != tc.want {
				t.Fatalf("chose %q, want %q", got, tc.want)
			}
		})
	}
}

// The newcomer share is a property of the job: the same job draws the
// same way every time, and over many jobs the share is what was set.
func TestNewcomerShareIsDeterministicAndProportional(t *testing.T) {
	for _, share := range []float64{0, 0.05, 0.1, 0.5, 1} {
		p := ReputationPolicy{Of: recordBook{}.of, Weight: 1, NewcomerShare: share}
		const n = 20000
		in := 0
		for i := range n {
			id := testJob(i)
			if p.NewcomerJob(id) != p.NewcomerJob(id) {
				t.Fatalf("job %d drew two ways", i)
			}
			if p.NewcomerJob(id) {
				in++
			}
		}
		if got := float64(in) / n; math.Abs(got-share) > 0.01 {
			t.Errorf("share %v: %v of jobs drawn", share, got)
		}
	}
}

// A Sybil, a new identity that bids far under everyone on every job (to
// fail them), against one proven provider. Without reputation it wins
// every job; with it, only the newcomer share.
func TestNewcomerShareBoundsASybil(t *testing.T) {
	book := recordBook{"veteran": {JobsPaid: 5}}
	for _, tc := range []struct {
		name     string
		policy   ReputationPolicy
		min, max float64
	}{
		{"without reputation", ReputationPolicy{}, 1, 1},
		{"with reputation", ReputationPolicy{Of: book.of, Weight: DefaultReputationWeight, NewcomerShare: DefaultNewcomerShare}, 0.09, 0.11},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 10000
			won := 0
			for i := range n {
				j := &Job{ID: testJob(i), MaxPrice: 100, Bids: []Bid{{Provider: "veteran", Price: 100}, {Provider: "sybil", Price: 1}}}
				if j.Bids[chooseBid(j, tc.policy, func(peer.ID) time.Duration { return 0 })].Provider == "sybil" {
					won++
				}
			}
			if got := float64(won) / n; got < tc.min || got > tc.max {
				t.Fatalf("the Sybil won %v of jobs, want %v..%v", got, tc.min, tc.max)
			}
		})
	}
}

func TestRankByReputation(t *testing.T) {
	book := recordBook{"veteran": {JobsPaid: 10}, "failed": {Losses: 2}}
	prices := map[peer.ID]uint64{"veteran": 30, "failed": 10, "new": 10, "new2": 20}
	const share = 0.1
	policy := ReputationPolicy{Of: book.of, Weight: 1, NewcomerShare: share}
	// Cheapest first, as RankCandidates hands them. At weight 1 the
	// failed provider's 10 counts 30: below a newcomer's 10, above 20.
	byPrice := []peer.ID{"failed", "new", "new2", "veteran"}
	for _, tc := range []struct {
		name   string
		policy ReputationPolicy
		job    protocol.JobID
		want   []peer.ID
	}{
		{"off: as given", ReputationPolicy{}, jobWhere(t, share, false), byPrice},
		{"proven first, then by weighted price", policy, jobWhere(t, share, false), []peer.ID{"veteran", "new", "failed", "new2"}},
		{"newcomer share: the cheapest newcomer first", policy, jobWhere(t, share, true), []peer.ID{"new", "veteran", "failed", "new2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rankByReputation(tc.job, slices.Clone(byPrice), func(p peer.ID) uint64 { return prices[p] }, tc.policy,
				func(peer.ID) time.Duration { return 0 })
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ranked %v, want %v", got, tc.want)
			}
		})
	}
}

// A round keeps MaxBids bids. Sybils (as many new identities as it keeps)
// bidding the floor must not push a proven provider's bid out of a full
// round before the window closes: the bid dropped is the worst ranked,
// not the dearest.
func TestFullRoundKeepsTheProvenBid(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	veteran := s.add(provider(40))
	for range MaxBids {
		s.add(provider(1)) // a Sybil
	}
	book := recordBook{veteran: {JobsPaid: 3}}
	e := s.engines[req]
	e.cfg.Reputation = ReputationPolicy{Of: book.of, Weight: 1} // no newcomer share: the job's ID is random here
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	if len(j.Bids) != MaxBids || !slices.ContainsFunc(j.Bids, func(b Bid) bool { return b.Provider == veteran }) {
		t.Fatalf("%d bids kept, the veteran's among them: %v", len(j.Bids),
			slices.ContainsFunc(j.Bids, func(b Bid) bool { return b.Provider == veteran }))
	}
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Running)
	if j.Provider != veteran {
		t.Fatalf("awarded to %s, want the proven provider", j.Provider)
	}
}

// An interactive job's direct candidates are ranked by the records too.
func TestInteractiveCandidatesWeighReputation(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	veteran := s.add(provider(40))
	var news []peer.ID
	for range 3 {
		news = append(news, s.add(provider(10)))
	}
	book := recordBook{veteran: {JobsPaid: 3}}
	s.engines[req].cfg.Reputation = ReputationPolicy{Of: book.of, Weight: 1}
	recs := records(append(slices.Clone(news), veteran))
	for _, r := range recs {
		r.PriceInteractive = 10
		if r.Provider == veteran {
			r.PriceInteractive = 40
		}
	}
	nonce := make([]byte, 16)
	offer := s.sign(req, &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: &pb.Offer{
		Requester: []byte(req), Network: simNet, Nonce: nonce,
		CreatedUnixMs: s.now.UnixMilli(), DeadlineUnixMs: s.now.Add(time.Minute).UnixMilli(),
		Spec: &pb.JobSpec{Executor: "noop", Tier: protocol.TierInteractive, MaxPrice: 50, MaxDurationMs: 1000,
			Resources: &pb.Resources{Gpus: 1}},
	}}})
	j := s.engines[req].Submit(s.now, offer, recs)
	if len(j.Candidates) != simTiming.MaxCandidates || j.Candidates[0] != veteran {
		t.Fatalf("candidates %v, want the proven provider first", j.Candidates)
	}
}
