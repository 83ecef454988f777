package gossip

import (
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
)

// ScoreThresholds: a peer whose invalid messages drive its score down
// first loses gossip, then publishing to it, then is ignored altogether.
var ScoreThresholds = &pubsub.PeerScoreThresholds{
	GossipThreshold:   -100,
	PublishThreshold:  -500,
	GraylistThreshold: -1000,
}

// ScoreParams penalises only what a peer does wrong: invalid messages
// (P4) and protocol misbehaviour. Delivery counters (P3) stay off, since
// quiet topics would punish honest peers, and IP colocation is off, since
// testnets put every peer on 127.0.0.1. The ledger topic counts like the
// job topics: its validator rejects only what an honest peer never sends
// (an entry the rules refuse for good, a malformed message), so a peer
// that gossips unfunded receipts or forged entries loses gossip after a
// message or two and is ignored after four (P4 grows with the square of
// the invalid messages: 4² × −100 is the graylist threshold).
func ScoreParams(network string) *pubsub.PeerScoreParams {
	topic := func() *pubsub.TopicScoreParams {
		return &pubsub.TopicScoreParams{
			TopicWeight:                    1,
			TimeInMeshQuantum:              time.Second,
			InvalidMessageDeliveriesWeight: -100,
			InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(10 * time.Minute),
		}
	}
	return &pubsub.PeerScoreParams{
		Topics: map[string]*pubsub.TopicScoreParams{
			protocol.JobsTopic(network, protocol.TierInteractive): topic(),
			protocol.JobsTopic(network, protocol.TierBatch):       topic(),
			protocol.LedgerTopic(network):                         topic(),
		},
		AppSpecificScore:          func(peer.ID) float64 { return 0 },
		AppSpecificWeight:         1,
		IPColocationFactorWeight:  0,
		BehaviourPenaltyWeight:    -10,
		BehaviourPenaltyThreshold: 6,
		BehaviourPenaltyDecay:     pubsub.ScoreParameterDecay(10 * time.Minute),
		DecayInterval:             time.Second,
		DecayToZero:               0.01,
		RetainScore:               10 * time.Minute,
		SkipAtomicValidation:      true,
	}
}

// ScoreInspectPeriod is how often pubsub reports its peer scores (to
// Scores.Update).
const ScoreInspectPeriod = time.Second

// Scores keeps the peer scores pubsub reported last.
type Scores struct {
	mu     sync.Mutex
	scores map[peer.ID]float64
}

// Update takes pubsub's report (a pubsub.PeerScoreInspectFn).
func (s *Scores) Update(scores map[peer.ID]float64) {
	s.mu.Lock()
	s.scores = scores
	s.mu.Unlock()
}

// Score returns p's gossip score as pubsub last computed it (every
// ScoreInspectPeriod), and whether it had one: a peer that drops below
// ScoreThresholds' limits loses gossip, then is ignored.
func (s *Scores) Score(p peer.ID) (float64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	score, ok := s.scores[p]
	return score, ok
}
