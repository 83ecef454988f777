package market

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// An award whose grant the provider's check refuses is declined, with a
// reason the requester sees, and starts nothing: no ledger would take the
// lease entry that quotes it. One the check accepts is leased, its grant
// passed on for the lease entry.
func TestAwardWithoutValidGrantIsDeclined(t *testing.T) {
	valid := bytes.Repeat([]byte{7}, protocol.AwardGrantSize)
	for _, tc := range []struct {
		name     string
		grant    []byte
		declined bool
	}{
		{"valid grant", valid, false},
		{"forged grant", bytes.Repeat([]byte{8}, protocol.AwardGrantSize), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			p := s.add(provider(10))
			var checked []protocol.JobID
			s.engines[p].cfg.CheckGrant = func(requester peer.ID, job protocol.JobID, a *pb.Award) error {
				checked = append(checked, job)
				if !bytes.Equal(a.Grant, valid) {
					return errors.New("not the requester's signature")
				}
				return nil
			}
			req := s.rogue()
			offer := s.offerFor(req, 1, s.now.Add(time.Minute), noopSpec(1))
			s.engines[p].Step(s.now, offer)
			take(s.engines[p])
			s.engines[p].Step(s.now, s.sign(req, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
				JobId: offer.Job[:], Provider: []byte(p), Price: 10, Attempt: 1, Grant: tc.grant,
			}}}))
			r := take(s.engines[p])
			if len(checked) != 1 || checked[0] != offer.Job {
				t.Fatalf("grant checked for %v", checked)
			}
			var reasons []string
			for _, o := range r.Send {
				if d := o.Msg.GetDecline(); d != nil {
					reasons = append(reasons, d.Reason)
				}
			}
			if tc.declined {
				if len(r.Run) != 0 || !slices.Equal(reasons, []string{ReasonGrant}) {
					t.Fatalf("runs %d, declines %q; want a decline %q", len(r.Run), reasons, ReasonGrant)
				}
				return
			}
			if len(r.Run) != 1 || len(reasons) != 0 || !bytes.Equal(r.Run[0].Grant, valid) {
				t.Fatalf("runs %d (grant passed on: %v), declines %q", len(r.Run), len(r.Run) == 1 && bytes.Equal(r.Run[0].Grant, valid), reasons)
			}
		})
	}
}
