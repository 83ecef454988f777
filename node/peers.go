package node

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/mira-market/mira/node/clock"
)

// parseBootstrap turns /p2p/-terminated multiaddrs into peer infos, merging
// several addresses of one peer.
func parseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	mas := make([]ma.Multiaddr, 0, len(addrs))
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		mas = append(mas, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, fmt.Errorf("need multiaddrs ending in /p2p/<peer id>: %w", err)
	}
	return infos, nil
}

// dialBootstrap dials every bootstrap peer that is not connected, in
// parallel, and waits for the dials to finish or ctx to end.
func (n *Node) dialBootstrap(ctx context.Context) {
	done := make(chan struct{}, len(n.bootstrap))
	pending := 0
	for _, b := range n.bootstrap {
		if b.ID == n.host.ID() || n.host.Network().Connectedness(b.ID) == network.Connected {
			continue
		}
		pending++
		go func() {
			defer func() { done <- struct{}{} }()
			n.dialPeer(ctx, b)
		}()
	}
	for ; pending > 0; pending-- {
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}

func (n *Node) dialPeer(ctx context.Context, info peer.AddrInfo) {
	// The swarm backs off from peers whose dials failed; a bootstrap peer
	// that comes back must be reachable at once, so clear the backoff.
	if sw, ok := n.host.Network().(*swarm.Swarm); ok {
		sw.Backoff().Clear(info.ID)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := n.host.Connect(dctx, info); err != nil {
		n.log.Debug("bootstrap dial failed", "peer", info.ID, "err", err)
		return
	}
	n.log.Debug("connected to bootstrap peer", "peer", info.ID)
}

func (n *Node) onDisconnect(p peer.ID) {
	for _, b := range n.bootstrap {
		if b.ID == p {
			select {
			case n.redial <- p:
			default: // a redial is already queued
			}
			return
		}
	}
}

// maintainBootstrap re-dials bootstrap peers when a connection drops and
// every RedialInterval, so a node finds its network again after a peer
// restarts or a link heals.
func (n *Node) maintainBootstrap(ctx context.Context) {
	defer n.wg.Done()
	redialLoop(ctx, n.clock, time.Duration(n.cfg.RedialInterval), n.redial, n.dialBootstrap)
}

// redialLoop calls dial every interval on clk and whenever a bootstrap
// peer dropped, until ctx ends.
func redialLoop(ctx context.Context, clk clock.Clock, interval time.Duration, dropped <-chan peer.ID, dial func(context.Context)) {
	t := clk.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-dropped:
		}
		dial(ctx)
	}
}

// measureLatency pings each connected peer every PingInterval; the ping
// service records the round-trip time in the peerstore, where the API and
// the market's ranking read it.
func (n *Node) measureLatency(ctx context.Context) {
	defer n.wg.Done()
	t := n.clock.NewTicker(time.Duration(n.cfg.PingInterval))
	defer t.Stop()
	for {
		n.pingPeers(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// pingPeers pings the connected peers one after the other.
func (n *Node) pingPeers(ctx context.Context) {
	for _, p := range n.host.Network().Peers() {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res := <-ping.Ping(pctx, n.host, p)
		cancel()
		if res.Error != nil {
			n.log.Debug("ping failed", "peer", p, "err", res.Error)
		}
	}
}

// Connect dials a peer given as a multiaddr ending in /p2p/<peer id>.
func (n *Node) Connect(ctx context.Context, addr string) (peer.ID, error) {
	infos, err := parseBootstrap([]string{addr})
	if err != nil {
		return "", err
	}
	if err := n.host.Connect(ctx, infos[0]); err != nil {
		return "", fmt.Errorf("connect to %s: %w", infos[0].ID, err)
	}
	return infos[0].ID, nil
}
