package node

import (
	"context"
	"sync"
	"time"
)

// ledgerGossipDelay is how long this node's new ledger entries wait before
// they are gossiped, so that the entries of many writes go out as one
// message: every other node checks and stores each message the moment it
// arrives, on the same cores the market's messages need. An award carries
// its hold (a provider that lacks the requester's entries before it
// fetches them), and reconciliation repairs what gossip misses, including
// what is still queued when the node stops.
const ledgerGossipDelay = 100 * time.Millisecond

// entryGossip collects own entries and gossips them in batches.
type entryGossip struct {
	n    *Node
	wake chan struct{}

	mu      sync.Mutex
	pending [][]byte
}

func newEntryGossip(n *Node) *entryGossip {
	return &entryGossip{n: n, wake: make(chan struct{}, 1)}
}

// add queues entries for the next batch; it never blocks.
func (g *entryGossip) add(raws [][]byte) {
	g.mu.Lock()
	g.pending = append(g.pending, raws...)
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// run gossips what was queued ledgerGossipDelay after the first entry of
// each batch, until ctx ends.
func (g *entryGossip) run(ctx context.Context) {
	defer g.n.wg.Done()
	timer := time.NewTimer(0)
	<-timer.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.wake:
		}
		timer.Reset(ledgerGossipDelay)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		g.mu.Lock()
		raws := g.pending
		g.pending = nil
		g.mu.Unlock()
		g.n.publishEntries(raws)
	}
}
