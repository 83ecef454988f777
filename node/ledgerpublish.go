package node

import (
	"context"
	"time"

	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/protocol"
)

// ledgerGossipDelay is how long this node's new ledger entries wait before
// they are gossiped, so that the entries of many writes go out as one
// message: every other node checks and stores each message the moment it
// arrives, on the same cores the market's messages need. An award carries
// its hold (a provider that lacks the requester's entries before it
// fetches them), and reconciliation repairs what gossip misses, including
// what is still queued when the node stops.
const ledgerGossipDelay = 100 * time.Millisecond

// newEntryGossip returns the publisher of this node's own new entries:
// those written within ledgerGossipDelay of the first go out together.
// Queueing never blocks.
func newEntryGossip(n *Node) *gossip.Batcher {
	return gossip.NewBatcher(gossip.Config{
		Delay: ledgerGossipDelay,
		Pack:  packEntries,
		Publish: func(ctx context.Context, msg []byte) {
			if err := n.ledgerTopic.Publish(ctx, msg); err != nil {
				n.log.Debug("publish ledger gossip", "err", err)
			}
		},
	})
}

// packEntries packs entries into ledger gossip messages, as few as the
// size limit allows: a node's batch of writes costs its peers one
// validation.
func packEntries(raws [][]byte) [][]byte {
	var msgs [][]byte
	for len(raws) > 0 {
		k := min(len(raws), protocol.MaxGossipEntries)
		msg := []byte{protocol.LedgerGossipEntries}
		for _, raw := range raws[:k] {
			msg = protocol.AppendFrame(msg, raw)
		}
		msgs = append(msgs, msg)
		raws = raws[k:]
	}
	return msgs
}
