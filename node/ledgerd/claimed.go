package ledgerd

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
)

// A job of this requester is paid by its provider's final claim, an entry
// of the provider's chain that quotes this node's acceptance. A node whose
// data dir was restored from a copy older than that acceptance holds the
// job as running (or bidding) with no acceptance in its record: it would
// refuse the result (the provider delivered it to the node's earlier run
// anyway) and offer the job again, to be run and paid twice. So every
// final claim against this node that the ledger stores is looked at once
// the head is confirmed: a job the market has not ended, whose record
// lacks the acceptance the claim quotes, and that was not awarded again
// after the claimed hold, is ended as paid.
//
// A job with replicas is paid by majority claims instead (the requester
// signs no acceptance): one proves that a majority of its replicas agreed
// and was paid, so the job ran to its end. Its award's record is the proof
// that the market knows of that run: a record that lacks the award was
// copied before it (the job would be offered again), and the job is ended.
// A record that holds it (or an award held later) is left to the market,
// even without the verdict: a live node may take the majority claim
// before the bills (one may be lost; the result names what it did), and a
// replica is never awarded again, so the job completes or fails with no
// majority, never runs twice.

// claimWatch collects the jobs of final claims against this node as the
// ledger stores them (under its lock: they are only noted here).
type claimWatch struct {
	mu     sync.Mutex
	claims map[protocol.JobID][]ledger.Entry
	wake   chan struct{}
}

func newClaimWatch() *claimWatch {
	return &claimWatch{claims: map[protocol.JobID][]ledger.Entry{}, wake: make(chan struct{}, 1)}
}

// stored notes e if it is a final claim (of either kind) against
// requester (the ledger's store hook calls it, under the ledger's lock).
func (w *claimWatch) stored(requester peer.ID, e ledger.Entry) {
	c, ok := finalClaimOf(e)
	if !ok || c.Requester != requester {
		return
	}
	w.mu.Lock()
	w.claims[protocol.JobID(c.Job)] = append(w.claims[protocol.JobID(c.Job)], e)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take returns the claims noted since the last take.
func (w *claimWatch) take() map[protocol.JobID][]ledger.Entry {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.claims
	w.claims = map[protocol.JobID][]ledger.Entry{}
	return out
}

// claimedLoop ends the jobs that claims show paid behind the market's
// back (see above), from the head's confirmation until ctx ends.
func (s *Service) claimedLoop(ctx context.Context) {
	for {
		if claims := s.claimed.take(); len(claims) > 0 {
			if err := s.endClaimedJobs(ctx, claims); err != nil && ctx.Err() == nil {
				s.log.Warn("end jobs paid by claims", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.claimed.wake:
		}
	}
}

// endClaimedJobs ends the jobs among claims that the market still runs
// without knowing of the acceptance their claim quotes.
func (s *Service) endClaimedJobs(ctx context.Context, claims map[protocol.JobID][]ledger.Entry) error {
	ids := make([]protocol.JobID, 0, len(claims))
	for id := range claims {
		ids = append(ids, id)
	}
	known, err := s.market.Lookup(ctx, ids)
	if err != nil {
		return err
	}
	reasons := map[protocol.JobID]string{}
	for id, j := range known {
		if j.State.Terminal() {
			continue
		}
		for _, e := range claims[id] {
			c, _ := finalClaimOf(e)
			if s.carriesOn(j, e.Account, c) {
				continue
			}
			reasons[id] = fmt.Sprintf("ended before this node's data dir was restored: its ledger shows the job paid (%v credits to %s)",
				credits(c.Amount), e.Account)
		}
	}
	if len(reasons) == 0 {
		return nil
	}
	ended, err := s.market.End(ctx, reasons)
	if ended > 0 {
		s.log.Warn("ended jobs that providers' claims show paid since the data dir's copy was taken", "jobs", ended)
	}
	return err
}

// carriesOn reports whether the market carries on with j, which provider
// c claims as paid: its record knows the run c pays (see above), or the
// job was awarded again since.
func (s *Service) carriesOn(j *market.Job, provider peer.ID, c finalClaim) bool {
	if c.Majority {
		return knowsReplica(j, provider, c.HoldSeq)
	}
	return knowsAcceptance(j, provider, c.HoldSeq) || s.awardedAfter(c.Job, c.HoldSeq)
}

// knowsAcceptance reports whether j's record holds the final acceptance
// of provider's hold at holdSeq that its claim quotes: the market takes
// the result as it comes.
func knowsAcceptance(j *market.Job, provider peer.ID, holdSeq uint64) bool {
	return slices.ContainsFunc(j.Awards, func(a market.AwardRecord) bool {
		return a.Provider == provider && a.HoldSeq == holdSeq && a.Final && a.Acceptance != nil
	})
}

// knowsReplica reports whether j's record holds provider's replica award
// whose hold (at holdSeq) a majority claim closed, its hold's seq not
// noted yet (0) or noted, or an award held after it: one made since the
// record was copied (the awards of one round are recorded together).
func knowsReplica(j *market.Job, provider peer.ID, holdSeq uint64) bool {
	return slices.ContainsFunc(j.Awards, func(a market.AwardRecord) bool {
		return a.HoldSeq > holdSeq || a.Provider == provider && (a.HoldSeq == holdSeq || a.HoldSeq == 0)
	})
}

// awardedAfter reports whether the job was held again, naming a provider,
// after the hold at holdSeq the claim drew on: the market carries on with
// that award. (Not for replicas: the other replicas' holds come later.)
func (s *Service) awardedAfter(job ledger.Hash, holdSeq uint64) bool {
	holds, err := s.ledger.JobHolds(s.self, job)
	if err != nil {
		return true // unsure: leave the job to the market
	}
	return slices.ContainsFunc(holds, func(h storage.OpenHold) bool { return h.Named && h.Seq > holdSeq })
}
