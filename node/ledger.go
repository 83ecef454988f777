package node

import (
	"context"
	"path/filepath"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/ledgerd"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/storage"
)

// GenesisFile is the network's genesis in a node's data dir.
const GenesisFile = "genesis.json"

// startLedger loads the genesis, starts the ledger service (which runs
// until the node stops) and serves its sync protocol.
func (n *Node) startLedger(context.Context) error {
	var swarmKey func() (string, error)
	if n.cfg.Private {
		swarmKey = func() (string, error) {
			psk, err := LoadSwarmKey(n.cfg.DataDir)
			if err != nil {
				return "", err
			}
			return SwarmKeyFingerprint(psk), nil
		}
	}
	g, err := ledgerd.LoadGenesis(filepath.Join(n.cfg.DataDir, GenesisFile), n.cfg.Network, swarmKey)
	if err != nil {
		return err
	}
	c := n.cfg.Ledger
	n.ledger, err = ledgerd.New(n.runCtx, ledgerd.Config{
		Network: n.cfg.Network, Genesis: g,
		ReconcileSymbols: n.cfg.ReconcileSymbols, ReconcileInterval: time.Duration(n.cfg.ReconcileInterval),
		HeadPeers: c.HeadPeers, HeadQuorum: c.HeadQuorum, HeadWait: time.Duration(c.HeadWait),
		HoldSweepInterval: time.Duration(c.HoldSweepInterval),
		Bootstrapped:      len(n.bootstrap) > 0,
	}, ledgerd.Deps{
		Host: n.host, PubSub: n.pubsub, DB: n.db, Key: n.priv, Clock: n.clock, Log: n.log, Metrics: n.metrics,
		Disk: n.disk, Market: lazyMarket{n},
	})
	if err != nil {
		return err
	}
	n.onClose(n.ledger.Close)
	n.host.SetStreamHandler(libp2pproto.ID(protocol.ReconcileProtocol(n.cfg.Network)), n.limits.limitStreams("sync", n.ledger.HandleSync))
	return nil
}

// Ledger is the node's ledger.
func (n *Node) Ledger() *storage.Ledger { return n.ledger.Ledger() }

// IngestEntry validates a ledger entry from elsewhere (a tool, a test) and,
// if this node stores it, gossips it like its own; an entry that convicts
// its account of equivocation has the proof gossiped instead.
func (n *Node) IngestEntry(raw []byte) error { return n.ledger.IngestEntry(raw) }

// Reconcile runs one reconciliation session with p: both ledgers end up
// with the union of their entries (those that validate).
func (n *Node) Reconcile(ctx context.Context, p peer.ID) error { return n.ledger.Reconcile(ctx, p) }

// ReconcileStats returns the node's reconciliation counters.
func (n *Node) ReconcileStats() ledgerd.ReconcileStats { return n.ledger.ReconcileStats() }

// Balance answers GET /v1/ledger/balance.
func (b apiBackend) Balance(ctx context.Context, account string) (api.BalanceInfo, error) {
	return b.ledger.Balance(ctx, account)
}

// Entries answers GET /v1/ledger/entries.
func (b apiBackend) Entries(ctx context.Context, account string, after uint64, limit int) ([]api.EntryInfo, error) {
	return b.ledger.Entries(ctx, account, after, limit)
}

// Verify answers GET /v1/ledger/verify.
func (b apiBackend) Verify(ctx context.Context) (api.VerifyInfo, error) { return b.ledger.Verify(ctx) }

// lazyMarket is the node's market as the ledger service asks it
// (ledgerd.Market): the service starts before the market does, and asks
// only once the market has started.
type lazyMarket struct{ n *Node }

func (m lazyMarket) Lookup(ctx context.Context, ids []protocol.JobID) (map[protocol.JobID]*market.Job, error) {
	return m.n.market.Lookup(ctx, ids)
}

func (m lazyMarket) End(ctx context.Context, reasons map[protocol.JobID]string) (int, error) {
	return m.n.market.End(ctx, reasons)
}

// GossipScore returns p's gossip score as this node's pubsub last computed
// it (see gossip.Scores.Score): a peer that gossips invalid entries or
// market messages loses it.
func (n *Node) GossipScore(p peer.ID) (float64, bool) { return n.scores.Score(p) }
