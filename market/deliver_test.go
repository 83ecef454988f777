package market

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// checkDeliveries holds every Ready of every simulated engine to the fair
// exchange on blobs: a result leaves only with its blobs opened to its
// requester (a Delivery in the same Ready), and a Delivery comes only for
// a job whose claim (or majority claim) from is written.
func (s *sim) checkDeliveries(from peer.ID, r Ready) {
	s.t.Helper()
	for _, o := range r.Send {
		res := o.Msg.GetResult()
		if res == nil {
			continue
		}
		want := Delivery{protocol.JobID(res.JobId), o.To, res.ResultId, res.OutputsId}
		if !slices.Contains(r.Deliveries, want) {
			s.t.Fatalf("%s sent a result without opening its blobs: %+v not in %+v", from, want, r.Deliveries)
		}
	}
	for _, d := range r.Deliveries {
		if !s.claimed(from, d) {
			s.t.Fatalf("%s opened the blobs of job %s to %s before its claim was written", from, d.Job, d.Requester)
		}
	}
}

// claimed reports whether provider p has a final claim (or a majority
// claim) of d's job written.
func (s *sim) claimed(p peer.ID, d Delivery) bool {
	for _, c := range s.claims[p] {
		if c.Job == d.Job && c.Requester == d.Requester && c.Final {
			return true
		}
	}
	return slices.Contains(s.ledger.claimed[d.Job], p)
}

// A result's blobs open to its requester with the result, after the
// claim, and again with each re-send of it, also from a provider that
// restarted after the claim: the grant of the first send may not have
// been carried out before the restart. Never while the bill waits.
func TestResultBlobsOpenOnlyOnceClaimed(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	wantState(t, j, Running)
	s.withhold = true
	o := Outcome{Usage: &pb.Usage{WallMs: 10, GpuMs: 10}, ResultID: okID, ResultSize: 40 << 10, OutputsID: okID, OutputsSize: 1}
	s.finishWith(prov, j.ID, o)
	for range 3 {
		s.advance(simTiming.HeartbeatInterval) // checkDeliveries: none without a claim
	}
	if len(s.claims[prov]) != 0 || s.engines[prov].Bills() != 1 {
		t.Fatal("the bill was settled although acceptances are withheld")
	}
	// Accepted and claimed; the result is not acknowledged (the
	// requester is cut off) when the provider restarts.
	s.withhold, s.claimsHeld = false, true
	s.advance(simTiming.HeartbeatInterval)
	s.claimsHeld, s.cut[req] = false, true
	for _, c := range s.heldClaims[prov] {
		s.claims[prov] = append(s.claims[prov], c)
		s.engines[prov].ClaimWritten(s.now, c, nil)
	}
	want := []Delivery{{j.ID, req, okID, okID}}
	if got := s.takeChecked(prov); !slices.Equal(got.Deliveries, want) {
		t.Fatalf("deliveries after the claim: %+v, want %+v", got.Deliveries, want)
	}
	s.restart(prov)
	s.engines[prov].Tick(s.now)
	if got := s.takeChecked(prov); !slices.Equal(got.Deliveries, want) {
		t.Fatalf("deliveries of the restarted provider's re-send: %+v, want %+v", got.Deliveries, want)
	}
	s.cut[req] = false
	s.advance(simTiming.HeartbeatInterval)
	wantState(t, j, Succeeded)
}

// takeChecked takes p's Ready, checked (checkDeliveries), and stores its
// bills, leaving its messages undelivered.
func (s *sim) takeChecked(p peer.ID) Ready {
	r := take(s.engines[p])
	s.checkDeliveries(p, r)
	s.storeBills(p, r.Bills)
	return r
}
