package market

import (
	"slices"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Ready is the work the engine asks of its caller after inputs. The caller
// persists Save before it does anything else: no hold is written, no
// message sent, no run started for a state change that is not on disk (an
// award, say, must be on disk before its hold is written, so that a
// restart finds the job that settles the hold). Then it writes NeedHolds
// (answering each with HoldWritten), sends Send in order, publishes
// Publish, starts Run and stops Stop, and calls Advance.
//
// A Ready the caller could not carry out (its Save failed to persist) is
// not advanced: the engine keeps it, and the next Ready carries it again,
// merged with what the engine asked for since (see merge). Nothing of it
// is lost, and nothing is done twice, as long as the caller does none of
// it before Save is on disk.
type Ready struct {
	Save []*Job
	// Changed are jobs whose change is for watchers only (a bid while
	// the window is open, a decline, a refused late result): not worth a
	// write, and safe to lose in a crash; the job's next write (its
	// window's end, at the latest) carries it. So a peer cannot make the
	// requester rewrite a job record message by message.
	Changed []*Job
	Send    []Outbound
	Publish []Outbound
	Run     []*Lease
	Stop    []protocol.JobID
	// NeedHolds are awards waiting for the escrow holds that back them:
	// the award goes into Send once HoldWritten brings its hold.
	NeedHolds []HoldRequest
	// NeedAcceptances are bills this requester accepts, waiting for its
	// signature: the caller answers each with AcceptanceSigned, and the
	// Accepted leaves then.
	NeedAcceptances []AcceptanceRequest
	// Receipts are bills this provider sent for the first time: the
	// caller records each as a receipt entry in its ledger chain, before
	// the claim that follows it.
	Receipts []*pb.Bill
	// Claims are accepted bills this provider claims: the caller writes
	// each as a claim entry and answers with ClaimWritten; the result
	// leaves then.
	Claims []ClaimRequest
	// Waives are awards this provider gives back: the caller writes a
	// waive of each one's hold and answers with Waived, which sends the
	// decline.
	Waives []WaiveRequest
	// Bills are this provider's bills changed since the last Ready, to
	// persist with Save (a Done one deleted): a bill leaves, and a claim
	// is written, only once its record is on disk.
	Bills []BillRecord
	// Pauses are runs this provider pauses (its requester left an interim
	// bill unanswered) or resumes (the acceptance came), in the order
	// asked: the caller carries them out in that order.
	Pauses []PauseRequest
	// MajorityClaims are replicas' bills this provider claims by a
	// majority's receipts (answer: MajorityClaimWritten); MajorityReleases
	// are this requester's holds of replicas a majority contradicts
	// (answer: MajorityReleased).
	MajorityClaims   []MajorityClaimRequest
	MajorityReleases []MajorityReleaseRequest
	// Deliveries are results this provider sends, their claims written:
	// the caller lets each requester fetch its result's blobs, before
	// Send leaves (see Delivery).
	Deliveries []Delivery
}

// Empty reports whether there is nothing to do.
func (r Ready) Empty() bool {
	return len(r.Save)+len(r.Changed)+len(r.Send)+len(r.Publish)+len(r.Run)+len(r.Stop)+len(r.NeedHolds)+
		len(r.NeedAcceptances)+len(r.Receipts)+len(r.Claims)+len(r.Waives)+len(r.Bills)+len(r.Pauses)+
		len(r.MajorityClaims)+len(r.MajorityReleases)+len(r.Deliveries) == 0
}

// Ready returns the work pending since the last Advance: what the engine
// asked for since the last call, merged behind the Ready handed out
// before if that one was not advanced.
func (e *Engine) Ready() Ready {
	r := e.ready
	e.ready = Ready{}
	r.Bills = e.billRecords()
	// A job both saved and changed is in Save only. The engine no longer
	// holds r's slices, so they are filtered in place, with no copy.
	r.Changed = slices.DeleteFunc(r.Changed, func(j *Job) bool { return e.saving[j] })
	clear(e.saving)
	clear(e.changed)
	if e.handed != nil {
		r = e.handed.merge(r)
	}
	// An award its job has left behind (cancelled, or offered again,
	// before the Ready was carried out) needs no hold.
	r.NeedHolds = slices.DeleteFunc(r.NeedHolds, func(h HoldRequest) bool { return !e.holdWanted(h) })
	e.handed = nil
	if !r.Empty() {
		e.handed = &r
	}
	return r
}

// Advance tells the engine that the caller carried out the last Ready:
// the next Ready holds only what the engine asks for from now on.
func (e *Engine) Advance() { e.handed = nil }

// merge is r, which was not carried out, followed by next, which the
// engine asked for after it. Jobs are written once, as they are now (a
// record is the job itself, not a copy); messages, holds, runs and stops
// keep their order, r's first, as if r had been carried out before next.
// A job's run and stop need no more care: a new lease of a job needs a
// bid that, held in r's Send, has not left, so the only run and stop of
// a job in a merged Ready are one lease's, started before it is stopped.
func (r Ready) merge(next Ready) Ready {
	saved := make(map[*Job]bool, len(r.Save)+len(next.Save))
	out := Ready{
		Send:      slices.Concat(r.Send, next.Send),
		Publish:   slices.Concat(r.Publish, next.Publish),
		Run:       slices.Concat(r.Run, next.Run),
		Stop:      slices.Concat(r.Stop, next.Stop),
		NeedHolds: slices.Concat(r.NeedHolds, next.NeedHolds),
		// Signing, recording, claiming and waiving twice is harmless: an
		// acceptance signs the same bytes, and the ledger takes one
		// receipt per lease and one claim of an amount.
		NeedAcceptances: slices.Concat(r.NeedAcceptances, next.NeedAcceptances),
		Receipts:        slices.Concat(r.Receipts, next.Receipts),
		Claims:          slices.Concat(r.Claims, next.Claims),
		Waives:          slices.Concat(r.Waives, next.Waives),
		Bills:           mergeBills(r.Bills, next.Bills),
		Pauses:          slices.Concat(r.Pauses, next.Pauses),
		// A verdict asked twice is written once: the second finds the
		// hold closed.
		MajorityClaims:   slices.Concat(r.MajorityClaims, next.MajorityClaims),
		MajorityReleases: slices.Concat(r.MajorityReleases, next.MajorityReleases),
		// A grant asked twice is written twice, to the same effect.
		Deliveries: slices.Concat(r.Deliveries, next.Deliveries),
	}
	for _, j := range slices.Concat(r.Save, next.Save) {
		if !saved[j] {
			saved[j] = true
			out.Save = append(out.Save, j)
		}
	}
	changed := map[*Job]bool{}
	for _, j := range slices.Concat(r.Changed, next.Changed) {
		if !saved[j] && !changed[j] {
			changed[j] = true
			out.Changed = append(out.Changed, j)
		}
	}
	return out
}

// mergeBills is the records of bills in r and next, each bill's latest
// (next's) only: a record is the bill's whole state.
func mergeBills(r, next []BillRecord) []BillRecord {
	if len(r) == 0 {
		return next
	}
	latest := map[string]bool{}
	for _, b := range next {
		latest[b.Key()] = true
	}
	out := slices.DeleteFunc(slices.Clone(r), func(b BillRecord) bool { return latest[b.Key()] })
	return append(out, next...)
}
