package node

import (
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
// testnets put every peer on 127.0.0.1.
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
