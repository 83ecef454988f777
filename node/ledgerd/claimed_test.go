package ledgerd

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
)

// A restored requester's job with replicas is paid by majority claims,
// which quote no acceptance of its: the watch notes them like final claims
// by acceptance, and the job is ended when its record was copied before
// the claimed replica's award (it would be offered and run again), and
// left to the market when the record knows that award or a later one.
func TestMajorityClaimEndsRestoredReplicaJob(t *testing.T) {
	const requester, other, a, b = peer.ID("requester"), peer.ID("other"), peer.ID("a"), peer.ID("b")
	job := ledger.Hash{7}
	majority := func(to peer.ID, holdSeq uint64) ledger.Entry {
		return ledger.Entry{Account: a, Body: ledger.MajorityClaimBody{Job: job, Requester: to, HoldSeq: holdSeq, Amount: 5}}
	}
	claim := func(final bool) ledger.Entry {
		return ledger.Entry{Account: a, Body: ledger.ClaimBody{Job: job, Requester: requester, HoldSeq: 10, Amount: 5, Final: final}}
	}
	w := newClaimWatch()
	for _, e := range []ledger.Entry{majority(requester, 10), majority(other, 10), claim(false), claim(true)} {
		w.stored(requester, e)
	}
	noted := w.take()[protocol.JobID(job)]
	if len(noted) != 2 || noted[0].Body.Kind() != ledger.KindMajorityClaim || noted[1].Body.(ledger.ClaimBody).Amount != 5 {
		t.Fatalf("noted %+v; want the majority claim and the final claim against the requester", noted)
	}

	for _, tc := range []struct {
		name   string
		awards []market.AwardRecord
		ends   bool
	}{
		{"copied before the award", nil, true},
		{"copied before the award, an earlier one known", []market.AwardRecord{{Provider: a, HoldSeq: 4}}, true},
		{"awarded again since, its hold pending", []market.AwardRecord{{Provider: b}}, true},
		{"the award known, no verdict", []market.AwardRecord{{Provider: a, HoldSeq: 10}, {Provider: b, HoldSeq: 11}}, false},
		{"the award known, its hold not noted", []market.AwardRecord{{Provider: a}, {Provider: b}}, false},
		{"awarded again since, held", []market.AwardRecord{{Provider: b, HoldSeq: 12}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ok := finalClaimOf(noted[0])
			if !ok || !c.Majority || c.HoldSeq != 10 || c.Amount != 5 {
				t.Fatalf("finalClaimOf = %+v, %v", c, ok)
			}
			j := &market.Job{Awards: tc.awards}
			// A majority claim is judged by the record alone (no ledger).
			if ends := !(*Service)(nil).carriesOn(j, a, c); ends != tc.ends {
				t.Errorf("job ended: %v; want %v", ends, tc.ends)
			}
		})
	}
}
