package market

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// storeBills keeps a provider's bill records as the node's store does:
// JSON by key, a Done one deleted.
func (s *sim) storeBills(from peer.ID, recs []BillRecord) {
	for _, r := range recs {
		if s.bills[from] == nil {
			s.bills[from] = map[string]BillRecord{}
		}
		if r.Done {
			delete(s.bills[from], r.Key())
			continue
		}
		s.bills[from][r.Key()] = r
	}
}

// restart replaces p's engine with a fresh one that has only p's stored
// bills, read back through JSON (the job and attempt come from the key).
func (s *sim) restart(p peer.ID) {
	s.t.Helper()
	e := NewEngine(s.engines[p].cfg)
	for _, rec := range s.bills[p] {
		raw, err := json.Marshal(rec)
		if err != nil {
			s.t.Fatal(err)
		}
		var back BillRecord
		if err := json.Unmarshal(raw, &back); err != nil {
			s.t.Fatal(err)
		}
		back.Job, back.Attempt = rec.Job, rec.Attempt
		if err := e.RestoreBill(s.now, back); err != nil {
			s.t.Fatal(err)
		}
	}
	s.engines[p] = e
}

// A provider restarted at any point between its run's end and the
// requester's acknowledgement of the result still settles the run: it
// bills again, claims the acceptance it holds (once), or delivers the
// result it claimed; then its records are gone.
func TestRestartedProviderSettlesItsBills(t *testing.T) {
	for _, tc := range []struct {
		name string
		// upTo runs the settlement up to the restart.
		upTo func(s *sim, req, prov peer.ID, j *Job)
	}{
		{"billed, not accepted", func(s *sim, req, prov peer.ID, j *Job) {
			s.cut[req] = true
			s.finishWith(prov, j.ID, Outcome{Usage: &pb.Usage{WallMs: 10, GpuMs: 10}})
		}},
		{"accepted, claim not written", func(s *sim, req, prov peer.ID, j *Job) {
			s.claimsHeld = true
			s.finishWith(prov, j.ID, Outcome{Usage: &pb.Usage{WallMs: 10, GpuMs: 10}})
			if len(s.heldClaims[prov]) != 1 {
				s.t.Fatalf("claims asked for: %v", s.heldClaims[prov])
			}
			s.claimsHeld, s.heldClaims[prov] = false, nil
		}},
		{"claimed, result not acknowledged", func(s *sim, req, prov peer.ID, j *Job) {
			s.claimsHeld = true
			s.finishWith(prov, j.ID, Outcome{Usage: &pb.Usage{WallMs: 10, GpuMs: 10}})
			s.claimsHeld, s.cut[req] = false, true
			for _, c := range s.heldClaims[prov] {
				s.claims[prov] = append(s.claims[prov], c)
				s.engines[prov].ClaimWritten(s.now, c, nil)
			}
			s.flush()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			prov := s.add(provider(10))
			j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
			wantState(t, j, Running)
			tc.upTo(s, req, prov, j)
			if len(s.bills[prov]) != 1 {
				t.Fatalf("%d bills stored before the restart, want 1", len(s.bills[prov]))
			}
			s.restart(prov)
			s.cut[req] = false
			s.flush()
			s.advance(simTiming.HeartbeatInterval)
			wantState(t, j, Succeeded)
			if len(s.claims[prov]) != 1 || !s.claims[prov][0].Final {
				t.Fatalf("claims %+v, want one final claim", s.claims[prov])
			}
			if s.engines[prov].Bills() != 0 || len(s.bills[prov]) != 0 {
				t.Fatalf("bills left: %d open, %d stored", s.engines[prov].Bills(), len(s.bills[prov]))
			}
		})
	}
}
