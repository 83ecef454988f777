package node

import (
	"context"
	"crypto/sha256"
	"time"

	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The market's wiring: the driver built from the node's parts, and the
// node's ledger as the driver sees it (marketd.Ledger).

// startMarket starts the ledger writer and the market driver, which
// restores the persisted jobs, joins the tier topics and opens the market
// stream protocol.
func (n *Node) startMarket(ctx context.Context) error {
	n.ledgerWriter = newLedgerWriter(n)
	n.wg.Add(1)
	go n.ledgerWriter.run(ctx)
	d := marketd.Deps{
		Host: n.host, PubSub: n.pubsub, Key: n.priv, Jobs: n.db, Ledger: marketLedger{n},
		Results: n.results, Limits: marketLimits{n.limits}, Capacity: n.capacity, Log: n.log, Metrics: n.metrics,
	}
	if n.runner != nil {
		d.Runner = n.runner
	}
	m, err := marketd.New(marketd.Config{Network: n.cfg.Network, Engine: n.marketEngineConfig(), Slots: n.cfg.Provider.Slots}, d)
	if err != nil {
		return err
	}
	n.market = m
	return m.Start(ctx)
}

func (n *Node) marketEngineConfig() market.Config {
	cfg := market.Config{
		Self:                    n.host.ID(),
		InteractiveWindow:       time.Duration(n.cfg.Market.InteractiveWindow),
		BatchWindow:             time.Duration(n.cfg.Market.BatchWindow),
		AcceptTimeout:           time.Duration(n.cfg.Market.AcceptTimeout),
		HeartbeatTimeout:        time.Duration(n.cfg.Market.HeartbeatTimeout),
		HeartbeatInterval:       time.Duration(n.cfg.Market.HeartbeatTimeout) / 3,
		MaxCandidates:           3,
		OfferMemory:             n.cfg.Limits.OfferMemory,
		OfferMemoryPerRequester: n.cfg.Limits.OfferMemoryPerRequester,
	}
	if n.IsProvider() {
		var gpus []protocol.GPU
		for _, g := range n.capacity.GPUs() {
			gpus = append(gpus, protocol.GPU{Model: g.Model, VRAMMiB: g.VRAMMiB, Count: g.Count})
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

// marketLedger is the node's ledger as the market driver sees it: each
// method queues or calls what the node's ledger code provides.
type marketLedger struct{ n *Node }

func (l marketLedger) HoldPosted(job protocol.JobID, spec *pb.JobSpec) {
	if w := l.n.offerHoldWrite(job, spec); w != nil {
		l.n.ledgerWriter.add(w)
	}
}

func (l marketLedger) WriteHolds(reqs []market.HoldRequest, done func(holds [][]byte, errs []error)) {
	l.n.ledgerWriter.add(l.n.escrowWrite(reqs, done))
}

func (l marketLedger) SignGrant(req market.HoldRequest) ([]byte, error) { return l.n.signGrant(req) }

func (l marketLedger) ChainBefore(hold []byte, after uint64) [][]byte {
	return l.n.chainBefore(hold, after)
}

func (l marketLedger) CheckGrant(requester peer.ID, job protocol.JobID, a *pb.Award) error {
	return l.n.checkGrant(requester, job, a)
}

func (l marketLedger) Settle(jobs []*market.Job) {
	if w := l.n.settleWrite(jobs); w != nil {
		l.n.ledgerWriter.add(w)
	}
}

func (l marketLedger) CheckHold(ctx context.Context, lease *market.Lease) error {
	return l.n.checkHold(ctx, lease)
}

func (l marketLedger) RecordLease(lease *market.Lease) { l.n.ledgerWriter.add(l.n.leaseWrite(lease)) }

func (l marketLedger) RecordReceipt(r *pb.Result, signed []byte) {
	l.n.ledgerWriter.add(l.n.receiptWrite(r, signed))
}

func (l marketLedger) RequesterHead(requester peer.ID) (uint64, error) {
	h, err := l.n.ledger.Head(requester)
	return h.Seq, err
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
