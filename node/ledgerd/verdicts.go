package ledgerd

// Verdicts among a job's replicas (protocol/ledger/verdict.go): a provider
// of the majority claims its hold by quoting the others' receipts; the
// requester releases the hold of a provider a majority contradicts. Both
// are read from the votes this node's ledger holds, so each is written
// only once the receipts it quotes are here (until then: a wait).

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
)

// WriteMajorityClaim queues this provider's majority claim of its hold
// for c's job; done gets market.ErrNoMajorityYet while the votes here do
// not make a majority with its own, market.ErrMinority once a majority of
// another outcome is here or the votes still to come cannot make one with
// its own (all k in, split), or the ledger's refusal.
func (s *Service) WriteMajorityClaim(c market.MajorityClaimRequest, done func(error)) {
	var why error
	s.enqueue(&ledgerWrite{jobs: []protocol.JobID{c.Job}, sends: true,
		bodies: func(*batch) []ledger.Body {
			body, err := s.majorityClaim(c)
			if err != nil {
				why = err
				return nil
			}
			return []ledger.Body{body}
		},
		done: func(written []*ledger.Entry, errs []error) {
			if len(written) == 1 && written[0] != nil || errors.Is(why, errClaimedBefore) {
				done(nil)
				return
			}
			done(waitsAsNoMajority(cmpErr(append(errs, why), errors.New("majority claim not written"))))
		},
		fail: done})
}

// majorityClaim is the claim this provider's vote and the others' here
// support: its hold's seq, the voters that agree with it, the most the
// ledger lets it draw.
func (s *Service) majorityClaim(c market.MajorityClaimRequest) (ledger.Body, error) {
	job := ledger.Hash(c.Job)
	h, ok, err := s.ledger.HoldOf(c.Requester, job, s.self)
	if err == nil && !ok {
		if paid, err := s.ledger.Claimed(c.Requester, job, s.self); err == nil && paid {
			return nil, errClaimedBefore // a claim asked twice: the result may leave
		}
	}
	if err != nil || !ok {
		return nil, cmpErr([]error{err}, fmt.Errorf("%w: no open hold naming this provider", market.ErrMinority))
	}
	own, err := s.ledger.Vote(s.self, job)
	if err != nil || own.Seq == 0 || own.Requester != c.Requester {
		return nil, cmpErr([]error{err}, fmt.Errorf("%w: own receipt not written yet", market.ErrNoMajorityYet))
	}
	t, err := s.tally(c.Requester, job)
	if err != nil {
		return nil, err
	}
	agree := t.by[own.Outcome]
	switch {
	case t.decided != nil && *t.decided != own.Outcome:
		return nil, fmt.Errorf("%w: a majority of %d voters returned another result", market.ErrMinority, t.voters.Replicas)
	case len(agree)+int(t.voters.Replicas)-t.votes < t.need:
		// The votes still to come cannot make this one a majority (all
		// k are in, split): the provider stops looking.
		return nil, fmt.Errorf("%w: %d of %d votes agree with this provider's, %d still to come, %d needed", market.ErrMinority, len(agree), t.voters.Replicas, int(t.voters.Replicas)-t.votes, t.need)
	case len(agree) < t.need:
		return nil, fmt.Errorf("%w: %d of %d votes agree, %d needed", market.ErrNoMajorityYet, len(agree), t.voters.Replicas, t.need)
	}
	body := ledger.MajorityClaimBody{Job: job, Requester: c.Requester, HoldSeq: h.Seq, Receipt: own.Seq}
	votes := []ledger.Vote{own}
	for _, r := range agree {
		if r.p == s.self || len(votes) == t.need {
			continue
		}
		body.Majority = append(body.Majority, ledger.ReceiptRef{Provider: r.p, Seq: r.v.Seq})
		votes = append(votes, r.v)
	}
	body.Amount = max(h.Claimed, ledger.MajorityBill(own, votes, h.Amount))
	return body, nil
}

// errClaimedBefore means this provider's hold of the job was claimed in
// full already: the claim asked again is done.
var errClaimedBefore = errors.New("hold claimed before")

// voted is one voter's vote.
type voted struct {
	p peer.ID
	v ledger.Vote
}

// tally is the votes on a job here, by outcome.
type tally struct {
	voters  ledger.Voters
	need    int
	by      map[ledger.Hash][]voted
	decided *ledger.Hash // the outcome with a majority, if one has
	votes   int          // the voters' votes here, whatever their outcome
}

func (s *Service) tally(requester peer.ID, job ledger.Hash) (tally, error) {
	vs, err := s.ledger.Voters(requester, job)
	if err != nil {
		return tally{}, err
	}
	if vs.Replicas < 2 {
		return tally{}, fmt.Errorf("%w: job %s has no replicas here", market.ErrNoMajorityYet, job)
	}
	t := tally{voters: vs, need: int(vs.Replicas)/2 + 1, by: map[ledger.Hash][]voted{}}
	for _, p := range vs.Providers {
		v, err := s.ledger.Vote(p, job)
		if err != nil {
			return t, err
		}
		if v.Seq == 0 || v.Requester != requester {
			continue
		}
		t.votes++
		t.by[v.Outcome] = append(t.by[v.Outcome], voted{p, v})
		if len(t.by[v.Outcome]) >= t.need {
			o := v.Outcome
			t.decided = &o
		}
	}
	return t, nil
}

// WriteMajorityRelease queues this requester's release of the hold of
// r.Loser, whose vote the majority's contradict; done gets
// market.ErrNoMajorityYet while the votes are not all here, or the
// ledger's refusal.
func (s *Service) WriteMajorityRelease(r market.MajorityReleaseRequest, done func(error)) {
	var why error
	s.enqueue(&ledgerWrite{jobs: []protocol.JobID{r.Job}, sends: true,
		bodies: func(*batch) []ledger.Body {
			body, err := s.majorityRelease(r)
			if err != nil {
				why = err
				return nil
			}
			return []ledger.Body{body}
		},
		done: func(written []*ledger.Entry, errs []error) {
			if len(written) == 1 && written[0] != nil {
				done(nil)
				return
			}
			done(waitsAsNoMajority(cmpErr(append(errs, why), errors.New("majority release not written"))))
		},
		fail: done})
}

func (s *Service) majorityRelease(r market.MajorityReleaseRequest) (ledger.Body, error) {
	job := ledger.Hash(r.Job)
	if _, ok, err := s.ledger.HoldOf(s.self, job, r.Loser); err != nil || !ok {
		return nil, cmpErr([]error{err}, fmt.Errorf("%w: no open hold naming %s", market.ErrMinority, r.Loser))
	}
	loser, err := s.ledger.Vote(r.Loser, job)
	if err != nil || loser.Seq == 0 || loser.Requester != s.self {
		return nil, cmpErr([]error{err}, fmt.Errorf("%w: %s's receipt not here yet", market.ErrNoMajorityYet, r.Loser))
	}
	t, err := s.tally(s.self, job)
	if err != nil {
		return nil, err
	}
	if t.decided == nil || *t.decided == loser.Outcome {
		return nil, fmt.Errorf("%w: no majority against %s here yet", market.ErrNoMajorityYet, r.Loser)
	}
	body := ledger.MajorityReleaseBody{Job: job, Loser: ledger.ReceiptRef{Provider: r.Loser, Seq: loser.Seq}}
	for _, v := range t.by[*t.decided][:t.need] {
		body.Majority = append(body.Majority, ledger.ReceiptRef{Provider: v.p, Seq: v.v.Seq})
	}
	return body, nil
}

// waitsAsNoMajority tells the market that a verdict the ledger made wait
// (a quoted receipt not applied yet) is to be tried again.
func waitsAsNoMajority(err error) error {
	if ledger.Waits(err) && !errors.Is(err, market.ErrNoMajorityYet) {
		return fmt.Errorf("%w: %w", market.ErrNoMajorityYet, err)
	}
	return err
}
