package marketd

import (
	"context"
	"log/slog"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol"
)

// batchGossipLinger is how long a batch-tier offer or taken notice waits
// for others to share its gossip message. A batch offer collects bids for
// a window hundreds of times longer.
const batchGossipLinger = 5 * time.Millisecond

// gossipOut publishes one tier's signed offers and taken notices, packing
// those queued together (and, for the batch tier, those that follow within
// linger) into one gossip message: every node validates, forwards and
// delivers a gossip message at a cost of its own, whatever it carries.
type gossipOut struct {
	log    *slog.Logger
	clock  clock.Clock
	topic  *pubsub.Topic
	linger time.Duration
	in     chan []byte
}

// publish queues a signed message. A full queue blocks the caller (the
// market loop) until the publisher catches up, as publishing itself did:
// nothing is dropped (see the package doc on queues).
func (g *gossipOut) publish(ctx context.Context, raw []byte) {
	select {
	case g.in <- raw:
	case <-ctx.Done():
	}
}

func (g *gossipOut) run(ctx context.Context) {
	for {
		var batch [][]byte
		select {
		case <-ctx.Done():
			return
		case raw := <-g.in:
			batch = append(batch, raw)
		}
		if g.linger > 0 {
			t := g.clock.NewTimer(g.linger)
		linger:
			for len(batch) < protocol.MaxGossipMarketMessages {
				select {
				case raw := <-g.in:
					batch = append(batch, raw)
				case <-t.C():
					break linger
				case <-ctx.Done():
					t.Stop()
					return
				}
			}
			t.Stop()
		}
	drain:
		for len(batch) < protocol.MaxGossipMarketMessages {
			select {
			case raw := <-g.in:
				batch = append(batch, raw)
			default:
				break drain
			}
		}
		for _, data := range protocol.JoinMarketGossip(batch) {
			if err := g.topic.Publish(ctx, data); err != nil {
				g.log.Debug("publish", "err", err)
			}
		}
	}
}
