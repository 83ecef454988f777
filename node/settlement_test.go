package node_test

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol/ledger"
)

// jobSettlement is what a node's ledger holds of the settlement of one of
// a requester's jobs (docs/TRUST.md): the requester's holds (Posted names
// no provider, Named one each award) and releases of each, the final
// claims by provider, the waives, and any requester-written payment
// (refused since version 3, so none is expected).
type jobSettlement struct {
	Posted, Named                  int
	ReleasedPosted, ReleasedNamed  int
	Claims                         map[peer.ID]int
	Claimed                        uint64 // summed over the final claims
	Waives, Payments, PartialClaim int
}

// paidOnceTo reports whether the job was paid by exactly one final claim,
// by provider.
func (s *jobSettlement) paidOnceTo(provider peer.ID) bool {
	return s != nil && len(s.Claims) == 1 && s.Claims[provider] == 1 && s.Payments == 0
}

// settlements reads n's ledger for the settlement of requester's jobs, by
// job.
func settlements(t *testing.T, n *node.Node, requester peer.ID) map[ledger.Hash]*jobSettlement {
	t.Helper()
	out := map[ledger.Hash]*jobSettlement{}
	of := func(job ledger.Hash) *jobSettlement {
		s := out[job]
		if s == nil {
			s = &jobSettlement{Claims: map[peer.ID]int{}}
			out[job] = s
		}
		return s
	}
	for _, e := range allEntries(t, n) {
		switch b := e.Body.(type) {
		case ledger.HoldBody:
			if e.Account != requester {
				continue
			}
			if b.Provider == "" {
				of(b.Job).Posted++
			} else {
				of(b.Job).Named++
			}
		case ledger.ReleaseBody:
			if e.Account != requester {
				continue
			}
			if b.Provider == "" {
				of(b.Job).ReleasedPosted++
			} else {
				of(b.Job).ReleasedNamed++
			}
		case ledger.PaymentBody:
			if e.Account == requester {
				of(b.Job).Payments++
			}
		case ledger.ClaimBody:
			if b.Requester != requester {
				continue
			}
			if !b.Final {
				of(b.Job).PartialClaim++
				continue
			}
			of(b.Job).Claims[e.Account]++
			of(b.Job).Claimed += b.Amount
		case ledger.WaiveBody:
			if b.Requester == requester {
				of(b.Job).Waives++
			}
		}
	}
	return out
}
