package market

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// kinds names the kinds of a Ready's messages, in order.
func kinds(os []Outbound) []string {
	var out []string
	for _, o := range os {
		out = append(out, kindName(o.Msg))
	}
	return out
}

// A state change whose Ready could not be persisted is not lost: the
// engine hands the Ready out again until the caller advances it, the job
// written as it is now, while the engine goes on with other inputs.
func TestFailedPersistDoesNotLoseAStateChange(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	e := s.engines[req]
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	wantState(t, j, Bidding)

	e.Cancel(s.now, j.ID, "cancelled by requester")
	r := e.Ready()
	if len(r.Save) != 1 || r.Save[0] != j || j.State != Cancelled {
		t.Fatalf("save %v", r.Save)
	}
	// The write failed: no Advance. Time passes, other jobs come.
	s.now = s.now.Add(time.Second)
	e.Tick(s.now)
	other := s.engines[req].Submit(s.now, s.offerFor(req, 0, s.now.Add(time.Minute), noopSpec(1)), nil)
	r = e.Ready()
	if !slices.Equal(r.Save, []*Job{j, other}) || j.State != Cancelled {
		t.Fatalf("after a failed write: save %v (%s); want the cancelled job, then the new one", r.Save, j.State)
	}
	// Handed out again, as long as it is not advanced.
	if again := e.Ready(); !slices.Equal(again.Save, r.Save) || len(again.Publish) != len(r.Publish) {
		t.Fatalf("the same Ready asked again: %+v, was %+v", again, r)
	}
	e.Advance()
	if r := e.Ready(); !r.Empty() {
		t.Fatalf("after Advance: %+v", r)
	}
}

// A Ready that was not carried out is merged with the next: each job
// written once, each message sent once, in the order asked, and a hold
// asked for an award only while the job still waits for it.
func TestUnadvancedReadyMergesWithoutRepeats(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	e := s.engines[req]
	j := e.Submit(s.now, s.offerFor(req, 0, s.now.Add(time.Minute), interactiveSpec()), records([]peer.ID{p}))
	first := e.Ready() // not carried out: the offer to p never left
	if len(first.Save) != 1 || !slices.Equal(kinds(first.Send), []string{"Offer"}) {
		t.Fatalf("first Ready: save %v, send %v", first.Save, kinds(first.Send))
	}
	// p's bid wins (as if it came by gossip): an award waiting for its
	// hold.
	s.engines[req].Step(s.now, s.sign(p, bidOf(j, p, 10)))
	r := e.Ready()
	if !slices.Equal(r.Save, []*Job{j}) || !slices.Equal(kinds(r.Send), []string{"Offer"}) || len(r.NeedHolds) != 1 || j.State != Assigned {
		t.Fatalf("merged: save %v, send %v, holds %v, state %s", r.Save, kinds(r.Send), r.NeedHolds, j.State)
	}
	// Cancelled before the Ready was carried out: the award needs no hold,
	// and p, which never got it, no Cancel.
	e.Cancel(s.now, j.ID, "cancelled by requester")
	r = e.Ready()
	if !slices.Equal(r.Save, []*Job{j}) || !slices.Equal(kinds(r.Send), []string{"Offer"}) || len(r.NeedHolds) != 0 {
		t.Fatalf("after the cancel: save %v, send %v, holds %v", r.Save, kinds(r.Send), r.NeedHolds)
	}
	e.Advance()
	if r := e.Ready(); !r.Empty() {
		t.Fatalf("after Advance: %+v", r)
	}
}

// What the engine asks for between a Ready and its Advance is not taken
// by that Advance.
func TestInputsBetweenReadyAndAdvanceAreKept(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	e := s.engines[req]
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	e.Cancel(s.now, j.ID, "cancelled")
	r := e.Ready()
	j2 := e.Submit(s.now, s.offerFor(req, 0, s.now.Add(time.Minute), noopSpec(1)), nil)
	e.Advance() // r was carried out; j2's posting was not
	if !slices.Equal(r.Save, []*Job{j}) {
		t.Fatalf("save %v", r.Save)
	}
	if r := e.Ready(); !slices.Equal(r.Save, []*Job{j2}) || len(r.Publish) != 1 {
		t.Fatalf("after Advance: save %v, publish %d; want the job submitted meanwhile", r.Save, len(r.Publish))
	}
}

// A provider's bid names the requester's head it knows (SetKnownHead),
// and the award asks for a hold carrying the entries after it.
func TestBidNamesTheKnownHead(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	s.engines[p].SetKnownHead(req, 41)
	s.heldBack = true
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, j, Assigned)
	if len(j.Bids) != 1 || j.Bids[0].KnownSeq != 41 {
		t.Fatalf("bids %+v", j.Bids)
	}
	if h := s.holds[req]; len(h) != 1 || h[0].KnownSeq != 41 || !h[0].WithChain {
		t.Fatalf("hold requests %+v", h)
	}
}

func interactiveSpec() *pb.JobSpec {
	return &pb.JobSpec{Executor: "noop", Tier: protocol.TierInteractive, MaxPrice: 50, MaxDurationMs: 1000, Resources: &pb.Resources{Gpus: 1}}
}

// kindName is a message's kind: "Offer", "Award", ...
func kindName(m *pb.MarketMessage) string {
	return strings.TrimPrefix(fmt.Sprintf("%T", m.Body), "*pb.MarketMessage_")
}
