package marketd

import (
	"context"
	"log/slog"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/protocol"
)

// batchGossipLinger is how long a batch-tier offer or taken notice waits
// for others to share its gossip message. A batch offer collects bids for
// a window hundreds of times longer.
const batchGossipLinger = 5 * time.Millisecond

// newGossipOut returns the publisher of one tier's signed offers and taken
// notices: those queued together (and, for the batch tier, those that
// follow within batchGossipLinger, on clk) go out as one gossip message,
// since every node validates, forwards and delivers a gossip message at a
// cost of its own, whatever it carries. A full queue blocks the caller
// (the market loop) until the publisher catches up, as publishing itself
// did: nothing is dropped (see the package doc on queues).
func newGossipOut(t *pubsub.Topic, tier string, clk clock.Clock, log *slog.Logger) *gossip.Batcher {
	cfg := gossip.Config{
		FlushAt: protocol.MaxGossipMarketMessages,
		Limit:   4096,
		Pack:    protocol.JoinMarketGossip,
		Publish: func(ctx context.Context, msg []byte) {
			if err := t.Publish(ctx, msg); err != nil {
				log.Debug("publish", "err", err)
			}
		},
		Clock: clk,
	}
	if tier == protocol.TierBatch {
		cfg.Delay = batchGossipLinger
	}
	return gossip.NewBatcher(cfg)
}
