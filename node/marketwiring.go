package node

import (
	"context"
	"crypto/sha256"
	"time"

	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/protocol"
)

// The market's wiring: the driver built from the node's parts (the
// ledger service is its marketd.Ledger).

// startMarket starts the market driver, which restores the persisted
// jobs, joins the tier topics and opens the market stream protocol.
func (n *Node) startMarket(context.Context) error {
	d := marketd.Deps{
		Host: n.host, PubSub: n.pubsub, Key: n.priv, Jobs: n.db, Ledger: n.ledger,
		Results: n.results, Limits: marketLimits{n.limits}, Capacity: n.capacity, Clock: n.clock, Log: n.log, Metrics: n.metrics,
	}
	if n.runner != nil {
		d.Runner, d.Readers = n.runner, n.blobs
	}
	m, err := marketd.New(marketd.Config{Network: n.cfg.Network, Engine: n.marketEngineConfig(), Slots: n.cfg.Provider.Slots}, d)
	if err != nil {
		return err
	}
	n.market = m
	n.onClose(func() error { m.Close(); return nil }) // its runs end before the runner closes
	return m.Start(n.runCtx)
}

func (n *Node) marketEngineConfig() market.Config {
	cfg := market.Config{
		Self:                    n.host.ID(),
		InteractiveWindow:       time.Duration(n.cfg.Market.InteractiveWindow),
		BatchWindow:             time.Duration(n.cfg.Market.BatchWindow),
		AcceptTimeout:           time.Duration(n.cfg.Market.AcceptTimeout),
		HeartbeatTimeout:        time.Duration(n.cfg.Market.HeartbeatTimeout),
		HeartbeatInterval:       time.Duration(n.cfg.Market.HeartbeatTimeout) / 3,
		BillTolerance:           market.Tolerance(n.cfg.Market.BillTolerance),
		ClaimWindow:             time.Duration(n.cfg.Market.ClaimWindow),
		MaxCandidates:           3,
		SettlementInterval:      time.Duration(n.cfg.Market.SettlementInterval),
		OfferMemory:             n.cfg.Limits.OfferMemory,
		OfferMemoryPerRequester: n.cfg.Limits.OfferMemoryPerRequester,
		Reputation: market.ReputationPolicy{
			Of: n.marketRecord, Weight: n.cfg.Market.ReputationWeight, NewcomerShare: n.cfg.Market.NewcomerShare,
		},
	}
	if n.IsProvider() {
		var gpus []protocol.GPU
		for _, g := range n.capacity.GPUs() {
			// Detected or not decides which jobs it may take (gpu_source).
			gpus = append(gpus, protocol.GPU{Model: g.Model, VRAMMiB: g.VRAMMiB, Count: g.Count, Detected: g.Source == gpu.SourceDetected})
		}
		cfg.Provider = &market.ProviderPolicy{
			GPUs: gpus, Slots: n.cfg.Provider.Slots, Executors: n.cfg.Provider.Executors,
			MaxMemoryMiB: n.jobLimits.MemoryMiB, MaxCPUMillis: n.jobLimits.CPUMillis, DockerImages: n.cfg.Provider.DockerImages,
			FloorInteractive: capacity.MicroCredits(n.cfg.Provider.PriceInteractive),
			FloorBatch:       capacity.MicroCredits(n.cfg.Provider.PriceBatch),
		}
	}
	return cfg
}

// marketLimits are the node's per-peer limits as the driver sees them.
type marketLimits struct{ l *peerLimits }

func (m marketLimits) AllowMarket(p peer.ID) bool        { return m.l.allowMarket(p) }
func (m marketLimits) AllowGossip(p peer.ID, n int) bool { return m.l.allowGossip(p, n) }

// messageID is gossipsub's message ID: the content's hash, so that a
// replayed message is a duplicate.
func messageID(m *pubsubpb.Message) string {
	sum := sha256.Sum256(m.Data)
	return string(sum[:])
}
