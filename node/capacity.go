package node

import (
	"context"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol"
)

// IsProvider reports whether the node sells capacity: it has GPUs and slots.
func (n *Node) IsProvider() bool { return n.capacity.IsProvider() }

// GPUs are the node's detected and declared GPUs.
func (n *Node) GPUs() []gpu.Device { return n.capacity.GPUs() }

// SetFreeSlots changes the free capacity the node announces and re-announces
// at once.
func (n *Node) SetFreeSlots(free int) { n.capacity.SetFreeSlots(free) }

// FindProviders looks up the providers that fit r in the DHT (see
// capacity.Service.FindProviders).
func (n *Node) FindProviders(ctx context.Context, r market.Requirements) ([]*protocol.Capacity, error) {
	return n.capacity.FindProviders(ctx, r)
}
