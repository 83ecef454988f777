package node

import (
	"context"
	"log/slog"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/protocol"
)

// batchGossipLinger is how long a batch-tier offer or taken notice waits
// for others to share its gossip message. A batch offer collects bids for
// a window hundreds of times longer.
const batchGossipLinger = 5 * time.Millisecond

// newMarketGossip returns the publisher of one tier's signed offers and
// taken notices: those queued together (and, for the batch tier, those
// that follow within batchGossipLinger) go out as one gossip message. A
// full queue blocks the caller (the market loop) until the publisher
// catches up, as publishing itself did: nothing is dropped.
func newMarketGossip(t *pubsub.Topic, tier string, log *slog.Logger) *gossip.Batcher {
	cfg := gossip.Config{
		FlushAt: protocol.MaxGossipMarketMessages,
		Limit:   4096,
		Pack:    protocol.JoinMarketGossip,
		Publish: func(ctx context.Context, msg []byte) {
			if err := t.Publish(ctx, msg); err != nil {
				log.Debug("publish", "err", err)
			}
		},
	}
	if tier == protocol.TierBatch {
		cfg.Delay = batchGossipLinger
	}
	return gossip.NewBatcher(cfg)
}

// GossipScore returns p's gossip score as this node's pubsub last computed
// it (see gossip.Scores.Score).
func (n *Node) GossipScore(p peer.ID) (float64, bool) { return n.scores.Score(p) }
