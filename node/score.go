package node

import (
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
)

// peerScoreThresholds: a peer whose invalid messages drive its score down
// first loses gossip, then publishing to it, then is ignored altogether.
var peerScoreThresholds = &pubsub.PeerScoreThresholds{
	GossipThreshold:   -100,
	PublishThreshold:  -500,
	GraylistThreshold: -1000,
}

// peerScoreParams penalises only what a peer does wrong: invalid messages
// (P4) and protocol misbehaviour. Delivery counters (P3) stay off, since
// quiet topics would punish honest peers, and IP colocation is off, since
// testnets put every peer on 127.0.0.1. The ledger topic counts like the
// job topics: its validator rejects only what an honest peer never sends
// (an entry the rules refuse for good, a malformed message), so a peer
// that gossips unfunded receipts or forged entries loses gossip after a
// message or two and is ignored after four (P4 grows with the square of
// the invalid messages: 4² × −100 is the graylist threshold).
func peerScoreParams(network string) *pubsub.PeerScoreParams {
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
			ledgerTopic(network):                                  topic(),
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

// scoreInspectPeriod is how often pubsub reports its peer scores to the
// node (GossipScore).
const scoreInspectPeriod = time.Second

// gossipScores keeps the peer scores pubsub reported last.
type gossipScores struct {
	mu     sync.Mutex
	scores map[peer.ID]float64
}

func (s *gossipScores) update(scores map[peer.ID]float64) {
	s.mu.Lock()
	s.scores = scores
	s.mu.Unlock()
}

// GossipScore returns p's gossip score as this node's pubsub last computed
// it (every scoreInspectPeriod), and whether it had one: a peer that drops
// below peerScoreThresholds' limits loses gossip, then is ignored.
func (n *Node) GossipScore(p peer.ID) (float64, bool) {
	n.scores.mu.Lock()
	defer n.scores.mu.Unlock()
	s, ok := n.scores.scores[p]
	return s, ok
}
