package node

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// gater refuses connections to and from blocked peers, in both directions
// and at every stage, so a blocked peer can neither dial us nor be dialed.
type gater struct {
	mu      sync.RWMutex
	blocked map[peer.ID]bool
}

func newGater(blocked []peer.ID) *gater {
	g := &gater{blocked: map[peer.ID]bool{}}
	for _, p := range blocked {
		g.blocked[p] = true
	}
	return g
}

func (g *gater) set(p peer.ID, blocked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if blocked {
		g.blocked[p] = true
	} else {
		delete(g.blocked, p)
	}
}

func (g *gater) isBlocked(p peer.ID) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.blocked[p]
}

func (g *gater) InterceptPeerDial(p peer.ID) bool                 { return !g.isBlocked(p) }
func (g *gater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return !g.isBlocked(p) }
func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return !g.isBlocked(p)
}
func (g *gater) InterceptUpgraded(c network.Conn) (bool, control.DisconnectReason) {
	return !g.isBlocked(c.RemotePeer()), 0
}

// BlockPeer cuts every connection to p and refuses new ones until
// UnblockPeer. Operators use it (and the blocked_peers config) against
// misbehaving peers; tests use it to shape topologies and partitions.
func (n *Node) BlockPeer(p peer.ID) {
	n.gater.set(p, true)
	n.host.Network().ClosePeer(p)
}

// UnblockPeer lets p connect again.
func (n *Node) UnblockPeer(p peer.ID) { n.gater.set(p, false) }
