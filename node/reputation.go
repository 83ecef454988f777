package node

import (
	"context"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol/ledger"
)

// Peers' reputations, as the node's ledger counts them (ledger.Reputation):
// for the API, and for the market's choice of bid.

// counters are a ledger reputation as the API shows it.
func counters(r ledger.Reputation) api.ReputationCounters {
	return api.ReputationCounters{
		Provider: api.ProviderCounters{
			Leases: r.Leases, Receipts: r.Receipts, JobsPaid: r.JobsPaid, EarnedMicro: r.Earned,
			GPUMS: r.GPUMS, WallMS: r.WallMS, Waived: r.Waived, NotRun: r.NotRun, Unclaimed: r.Unclaimed,
			VerificationLosses: r.VerificationLosses,
		},
		Requester: api.RequesterCounters{Awards: r.Awards, PaidFor: r.PaidFor, SpentMicro: r.Spent, LeftUnpaid: r.LeftUnpaid},
	}
}

// Reputation answers GET /v1/reputation/{peer}.
func (b apiBackend) Reputation(_ context.Context, p peer.ID) (api.ReputationCounters, error) {
	r, err := b.Ledger().Reputation(p)
	return counters(r), err
}

// Reputations answers GET /v1/reputation.
func (b apiBackend) Reputations(_ context.Context, fn func(peer.ID, api.ReputationCounters) error) error {
	return b.Ledger().Reputations(func(p peer.ID, r ledger.Reputation) error { return fn(p, counters(r)) })
}

// reputation is p's record with its derived figures, for GET /v1/providers.
func (b apiBackend) reputation(p peer.ID) (api.Reputation, error) {
	r, err := b.Ledger().Reputation(p)
	return api.NewReputation(counters(r)), err
}

// marketRecord is p's record as the market's choice of bid weighs it. The
// market's loop asks it for each bidder when a window closes: a read of
// the store. A record the store cannot give is an empty one (p counts as
// a newcomer), and the error is logged: a choice of bid goes on.
func (n *Node) marketRecord(p peer.ID) market.Record {
	r, err := n.Ledger().Reputation(p)
	if err != nil {
		n.log.Warn("reputation for the choice of bid", "peer", p, "err", err)
		return market.Record{}
	}
	return counters(r).MarketRecord()
}
