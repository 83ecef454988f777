package market

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The requester's choice of bid weighs the providers' records, as every
// node's ledger holds them (ledger.Reputation). The market reads no
// ledger: the caller hands it a lookup (ReputationPolicy.Of).

// Record is the part of a provider's ledger reputation that the choice of
// bid weighs.
type Record struct {
	// JobsPaid counts the provider's jobs paid in full (final claims).
	JobsPaid uint64
	// Losses counts what went wrong through its fault: awards it leased
	// and never ran, receipts it never claimed, verifications it lost.
	// Awards it gave back (waives) are not losses: an honest provider
	// that filled up gives one back, and holdOff already bounds them.
	Losses uint64
}

// Newcomer reports whether the record is empty: the provider has no job
// paid and no loss, so nothing tells good from bad yet.
func (r Record) Newcomer() bool { return r.JobsPaid == 0 && r.Losses == 0 }

// Proven reports whether the provider was paid for more jobs than it lost.
// Outside the newcomer share, a proven provider's bid is taken before any
// other's: a new identity costs nothing, so an identity without such a
// record (new, or one whose losses caught up with its work) gets work only
// through the newcomer share or when no proven provider bid. An identity
// that wants to fail jobs must first have been paid for as many.
func (r Record) Proven() bool { return r.JobsPaid > r.Losses }

// Risk is the record's handicap, 0 (a long spotless record) to 2 (losses
// only): how little the record shows, (Losses+1)/(JobsPaid+Losses+1), plus
// the share of its outcomes that were losses. A newcomer's is 1; a record
// with losses and no more jobs paid than losses always has more than 1, so
// it ranks below a newcomer at the same price.
func (r Record) Risk() float64 {
	n := float64(r.JobsPaid) + float64(r.Losses)
	risk := (float64(r.Losses) + 1) / (n + 1)
	if n > 0 {
		risk += float64(r.Losses) / n
	}
	return risk
}

// ReputationPolicy is how a requester weighs records in its choice of bid.
type ReputationPolicy struct {
	// Of returns a provider's record. nil, like a zero Weight, turns
	// reputation off: the cheapest bid wins.
	Of func(peer.ID) Record
	// Weight scales the handicap: a bid's price counts as
	// price × (1 + Weight × Risk). With 1, a newcomer's bid counts 1.5
	// times its price if it has one job paid, 1.09 times with ten.
	Weight float64
	// NewcomerShare is the fraction of jobs, 0..1, that go to the best
	// newcomer bid when there is one, whatever the other bids: without
	// it, a network whose providers all have records would never take a
	// new one. Which jobs is drawn from the job's ID (newcomerDraw), so
	// every run of a test, and every requester, makes the same choice.
	NewcomerShare float64
}

// DefaultReputationWeight and DefaultNewcomerShare are the [market]
// defaults of reputation_weight and newcomer_share.
const (
	DefaultReputationWeight = 1.0
	DefaultNewcomerShare    = 0.1
)

func (p ReputationPolicy) on() bool { return p.Of != nil && p.Weight > 0 }

// newcomerDraw is the job's deterministic draw in [0, 1): its ID hashed
// under a domain of its own (so that the draw is not the ID's own bytes,
// which other choices use), its first 53 bits as a fraction.
func newcomerDraw(job protocol.JobID) float64 {
	h := sha256.New()
	h.Write([]byte("mira/newcomer-share/1"))
	h.Write(job[:])
	return float64(binary.BigEndian.Uint64(h.Sum(nil))>>11) / (1 << 53)
}

// NewcomerJob reports whether job falls in the policy's newcomer share.
func (p ReputationPolicy) NewcomerJob(job protocol.JobID) bool {
	return p.on() && p.NewcomerShare > 0 && newcomerDraw(job) < p.NewcomerShare
}

// bidRank orders bids by a policy: proven providers first, then by price
// weighted by the record's risk, then by round-trip time, then by peer ID
// (so the choice is stable). With the policy off it is price, rtt, ID: the
// cheapest bid wins.
type bidRank struct {
	policy ReputationPolicy
	rtt    func(peer.ID) time.Duration
	// records caches the lookups of one choice: a bid's record is read
	// once, not at each comparison.
	records map[peer.ID]Record
}

func newBidRank(p ReputationPolicy, rtt func(peer.ID) time.Duration) *bidRank {
	return &bidRank{policy: p, rtt: rtt, records: map[peer.ID]Record{}}
}

func (r *bidRank) record(p peer.ID) Record {
	rec, ok := r.records[p]
	if !ok {
		rec = r.policy.Of(p)
		r.records[p] = rec
	}
	return rec
}

func (r *bidRank) weighted(b Bid) float64 {
	return float64(b.Price) * (1 + r.policy.Weight*r.record(b.Provider).Risk())
}

// compare is < 0 when a ranks before b; only a bid compares equal to
// itself.
func (r *bidRank) compare(a, b Bid) int {
	return cmp.Or(r.order(a, b), cmp.Compare(a.Provider, b.Provider))
}

// order is compare without the last tie-break, the peer ID.
func (r *bidRank) order(a, b Bid) int {
	if !r.policy.on() {
		return cmp.Or(cmp.Compare(a.Price, b.Price), cmp.Compare(r.rtt(a.Provider), r.rtt(b.Provider)))
	}
	pa, pb := r.record(a.Provider).Proven(), r.record(b.Provider).Proven()
	if pa != pb {
		if pa {
			return -1
		}
		return 1
	}
	return cmp.Or(cmp.Compare(r.weighted(a), r.weighted(b)), cmp.Compare(a.Price, b.Price),
		cmp.Compare(r.rtt(a.Provider), r.rtt(b.Provider)))
}

// best is the index of the bid that ranks first among those keep admits;
// -1 if it admits none.
func (r *bidRank) best(bids []Bid, keep func(Bid) bool) int {
	best := -1
	for i, b := range bids {
		if keep(b) && (best < 0 || r.compare(b, bids[best]) < 0) {
			best = i
		}
	}
	return best
}

// chooseBid is the bid a batch job's window awards: among the acceptable
// bids (within the max price, from providers not excluded), the best
// newcomer's if the job falls in the newcomer share and one bid, else the
// first by bidRank. -1 if no bid is acceptable.
func chooseBid(j *Job, p ReputationPolicy, rtt func(peer.ID) time.Duration) int {
	r := newBidRank(p, rtt)
	acceptable := func(b Bid) bool { return b.Price <= j.MaxPrice && !slices.Contains(j.Excluded, b.Provider) }
	if p.NewcomerJob(j.ID) {
		// Among newcomers every record is empty: the cheapest wins.
		if i := r.best(j.Bids, func(b Bid) bool { return acceptable(b) && r.record(b.Provider).Newcomer() }); i >= 0 {
			return i
		}
	}
	return r.best(j.Bids, acceptable)
}

// worstBid is the index of the bid a full job drops for a better one: the
// last by bidRank. Were it the dearest, as many new identities as a round
// keeps bids could bid the floor and push every proven provider's bid out
// before the window closes.
func worstBid(bids []Bid, p ReputationPolicy, rtt func(peer.ID) time.Duration) int {
	r := newBidRank(p, rtt)
	worst := 0
	for i := range bids {
		if r.compare(bids[i], bids[worst]) > 0 {
			worst = i
		}
	}
	return worst
}

// rankByReputation reorders an interactive job's candidates (best first by
// price and rtt, from RankCandidates) by the policy: proven providers
// first, by price weighted by risk; and for a job in the newcomer share,
// the first newcomer ahead of all, so that it is among those asked.
func rankByReputation(job protocol.JobID, candidates []peer.ID, price func(peer.ID) uint64, p ReputationPolicy, rtt func(peer.ID) time.Duration) []peer.ID {
	if !p.on() {
		return candidates
	}
	r := newBidRank(p, rtt)
	// The candidates' interactive prices, as bids would carry them; on a
	// full tie, the lookup's order stays.
	slices.SortStableFunc(candidates, func(a, b peer.ID) int {
		return r.order(Bid{Provider: a, Price: price(a)}, Bid{Provider: b, Price: price(b)})
	})
	if p.NewcomerJob(job) {
		if i := slices.IndexFunc(candidates, func(c peer.ID) bool { return r.record(c).Newcomer() }); i > 0 {
			c := candidates[i]
			candidates = slices.Insert(slices.Delete(candidates, i, i+1), 0, c)
		}
	}
	return candidates
}

// rankCandidates is RankCandidates reordered by the engine's reputation
// policy (rankByReputation).
func (e *Engine) rankCandidates(job protocol.JobID, spec *pb.JobSpec, providers []*protocol.Capacity) []peer.ID {
	rtt := func(p peer.ID) time.Duration { return e.rtt[p] }
	candidates := RankCandidates(e.cfg.Self, spec, providers, rtt)
	prices := make(map[peer.ID]uint64, len(providers))
	for _, c := range providers {
		prices[c.Provider] = c.PriceInteractive
	}
	return rankByReputation(job, candidates, func(p peer.ID) uint64 { return prices[p] }, e.cfg.Reputation, rtt)
}

// rttOf is the measured round-trip time to p (zero if none).
func (e *Engine) rttOf(p peer.ID) time.Duration { return e.rtt[p] }

// ranksBefore reports whether bid a ranks before b by the engine's policy.
func (e *Engine) ranksBefore(a, b Bid) bool {
	return newBidRank(e.cfg.Reputation, e.rttOf).compare(a, b) < 0
}
