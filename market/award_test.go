package market

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/mira-market/mira/protocol"
)

// An award waits for its hold; the provider's time to accept starts when
// the hold is written and the award leaves.
func TestAcceptTimeoutCountsFromTheAwardLeaving(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	first := s.add(provider(10))
	s.add(provider(20))
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	s.cut[first] = true // bid, then silent
	s.heldBack = true   // the holds are slow to write
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Assigned)
	if len(s.holds[req]) != 1 || slices.ContainsFunc(s.log[req], func(l string) bool { return strings.HasPrefix(l, "send Award") }) {
		t.Fatalf("hold requests %+v, log %v; want the award waiting for its hold", s.holds[req], s.log[req])
	}
	// However long the hold takes, the provider is not blamed for it.
	s.advance(simTiming.AcceptTimeout * 2)
	wantState(t, j, Assigned)
	// An answer for another attempt changes nothing.
	s.engines[req].HoldWritten(s.now, j.ID, j.Attempt+1, HoldResult{Hold: []byte("hold")})
	s.flush()
	wantState(t, j, Assigned)
	s.writeHolds(req, nil) // the award leaves only now
	s.flush()
	if l := s.log[req][len(s.log[req])-1]; l != "send Award 0" {
		t.Fatalf("last sent %q, want the award", l)
	}
	s.advance(simTiming.AcceptTimeout * 3 / 4)
	wantState(t, j, Assigned)
	s.advance(simTiming.AcceptTimeout / 2)
	wantState(t, j, Bidding)
}

// An award whose hold cannot be written cancels its job with the reason,
// and the award never leaves.
func TestFailedHoldCancelsTheJob(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	s.heldBack = true
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, j, Assigned)
	if len(s.holds[req]) != 1 {
		t.Fatalf("hold requests %+v", s.holds[req])
	}
	h := s.holds[req][0]
	if h.Job != j.ID || h.Attempt != 1 || h.Provider != p || h.Price != 10 || h.Amount != 10 || !h.WithChain {
		t.Fatalf("hold request %+v", h)
	}
	s.writeHolds(req, errors.New("no credits"))
	s.flush()
	wantState(t, j, Cancelled)
	if j.Error != "escrow failed: no credits" {
		t.Fatalf("error %q", j.Error)
	}
	if slices.ContainsFunc(s.log[req], func(l string) bool { return strings.HasPrefix(l, "send Award") }) || len(s.runs[p]) != 0 {
		t.Fatalf("log %v, runs %v: the award left", s.log[req], s.runs[p])
	}
}

// A job that ends while its award waits for its hold tells no provider to
// stop: the award never left, so no provider holds the job.
func TestJobEndedBeforeItsAwardLeftSendsNoCancel(t *testing.T) {
	for _, c := range []struct {
		name string
		end  func(s *sim, req peer.ID, j *Job)
	}{
		{"cancelled", func(s *sim, req peer.ID, j *Job) { s.engines[req].Cancel(s.now, j.ID, "changed my mind") }},
		{"failed", func(s *sim, req peer.ID, j *Job) { s.engines[req].Fail(s.now, j.ID, "offer no longer valid") }},
		{"hold failed", func(s *sim, req peer.ID, _ *Job) { s.writeHolds(req, errors.New("no credits")) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			p := s.add(provider(10))
			s.heldBack = true
			j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
			wantState(t, j, Assigned)
			c.end(s, req, j)
			s.flush()
			if !j.State.Terminal() {
				t.Fatalf("state %s", j.State)
			}
			if slices.ContainsFunc(s.log[req], func(l string) bool { return strings.HasPrefix(l, "send Cancel") }) {
				t.Fatalf("log %v: a Cancel for an award that never left", s.log[req])
			}
		})
	}
}
