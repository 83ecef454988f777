package market

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// A provider's open bills are persisted (Ready.Bills), so that a provider
// restarted between a run's end and its result's acknowledgement still
// bills the run, claims an acceptance it holds and delivers the result:
// the run is paid only by a claim, and a claim only by what the provider
// remembers.

// BillRecord is a provider's open bill as it is persisted. Done marks a
// bill settled or given up: its record is deleted.
type BillRecord struct {
	Job       protocol.JobID `json:"-"`
	Attempt   uint32         `json:"attempt"`
	Requester peer.ID        `json:"requester"`
	// Bill and Result are the protobuf bill and the result it names.
	Bill   []byte `json:"bill,omitempty"`
	Result []byte `json:"result,omitempty"`
	// Phase is "billing" (the bill is re-sent until accepted), "claiming"
	// (the acceptance is in hand: the claim is written) or "delivering"
	// (claimed: the result is re-sent until acknowledged); or "running":
	// a lease still running that holds an interim acceptance (Interim;
	// no Bill, no Result yet), claimed if a restart loses the run.
	Phase string `json:"phase,omitempty"`
	// The requester's acceptance the claim quotes, from claiming on; while
	// billing, a short final acceptance kept (Short, shortAccepted).
	Amount     uint64 `json:"amount,omitempty"`
	Final      bool   `json:"final,omitempty"`
	Acceptance []byte `json:"acceptance,omitempty"`
	Short      bool   `json:"short,omitempty"`
	// Until is when the provider gives up on the bill (the hold's
	// expiry; a claim window after the claim).
	Until time.Time `json:"until"`
	// Interim is the run's settlement as it went (pay as you go), if it
	// had one: the latest interim acceptance is claimed if the final
	// bill goes unanswered.
	Interim *InterimRecord `json:"interim,omitempty"`
	// Replicated marks a replica's bill, settled by a majority claim
	// (replicas.go): one in its claim is persisted as billing, and looks
	// for the verdict again after a restart.
	Replicated bool `json:"replicated,omitempty"`
	Done       bool `json:"-"`
}

// InterimRecord is what a bill keeps of its run's interim settlement.
type InterimRecord struct {
	HoldSeq    uint64    `json:"hold_seq"`
	Expiry     time.Time `json:"expiry"`
	Receipt    []byte    `json:"receipt"`
	Billed     uint64    `json:"billed,omitempty"`
	Accepted   uint64    `json:"accepted,omitempty"`
	Acceptance []byte    `json:"acceptance,omitempty"`
	FinalAt    time.Time `json:"final_at"`
	Tried      uint64    `json:"tried,omitempty"`
}

func interimRecord(p *payState) *InterimRecord {
	if p == nil {
		return nil
	}
	return &InterimRecord{HoldSeq: p.holdSeq, Expiry: p.expiry, Receipt: p.receipt[:], Billed: p.billed,
		Accepted: p.accepted, Acceptance: p.acceptance, FinalAt: p.finalAt, Tried: p.tried}
}

func (r *InterimRecord) payState() (*payState, error) {
	if r == nil {
		return nil, nil
	}
	if len(r.Receipt) != 32 {
		return nil, fmt.Errorf("interim receipt of %d bytes", len(r.Receipt))
	}
	return &payState{holdSeq: r.HoldSeq, expiry: r.Expiry, receipt: [32]byte(r.Receipt), billed: r.Billed,
		accepted: r.Accepted, acceptance: r.Acceptance, finalAt: r.FinalAt, tried: r.Tried}, nil
}

// Key names the record in the caller's store: job, attempt, requester.
func (r BillRecord) Key() string {
	return fmt.Sprintf("%s/%d/%s", r.Job, r.Attempt, r.Requester)
}

var phaseNames = map[int]string{phaseBilling: "billing", phaseClaiming: "claiming", phaseDelivering: "delivering"}

// phaseRunning names the record of a running lease's interim settlement.
const phaseRunning = "running"

// runningPay is the interim settlement of k's lease while it runs (or is
// being stopped), if it holds an acceptance: what a "running" record keeps.
func (e *Engine) runningPay(k billKey) *payState {
	for _, ls := range []map[protocol.JobID]*Lease{e.leases, e.stopping} {
		if l, ok := ls[k.Job]; ok && l.Attempt == k.Attempt && l.Requester == k.Requester && l.pay != nil && l.pay.accepted > 0 {
			return l.pay
		}
	}
	return nil
}

// markBill has the bill of k persisted with the next Ready: as it is then,
// or deleted if it is gone by then.
func (e *Engine) markBill(k billKey) {
	if e.billsChanged == nil {
		e.billsChanged = map[billKey]bool{}
	}
	e.billsChanged[k] = true
}

// billRecords are the records of the bills changed since the last Ready.
func (e *Engine) billRecords() []BillRecord {
	var out []BillRecord
	for k := range e.billsChanged {
		rec := BillRecord{Job: k.Job, Attempt: k.Attempt, Requester: k.Requester}
		b, ok := e.bills[k]
		if !ok {
			if p := e.runningPay(k); p != nil {
				rec.Phase, rec.Until, rec.Interim = phaseRunning, p.expiry, interimRecord(p)
			} else {
				rec.Done = true
			}
			out = append(out, rec)
			continue
		}
		var err error
		if rec.Bill, err = proto.Marshal(b.bill); err == nil {
			rec.Result, err = proto.Marshal(b.result)
		}
		if err != nil {
			continue // not for a bill this engine built
		}
		rec.Phase, rec.Until, rec.Interim = phaseNames[b.phase], b.until, interimRecord(b.pay)
		if rec.Replicated = b.replicated; b.replicated && b.phase == phaseClaiming {
			rec.Phase = phaseNames[phaseBilling]
		}
		if c := cmp.Or(b.claim, b.short); c != nil {
			rec.Amount, rec.Final, rec.Acceptance = c.Amount, c.Final, c.Acceptance
			rec.Short = c == b.short
		}
		out = append(out, rec)
	}
	clear(e.billsChanged)
	return out
}

// RestoreBill puts a persisted bill back after a restart: the next Tick
// sends the bill (or the result) again; an acceptance in hand is claimed
// again (the caller's claim write finds a claim already written and
// answers ClaimWritten without a second one). A bill past its Until is
// left for Tick to drop.
func (e *Engine) RestoreBill(now time.Time, rec BillRecord) error {
	if rec.Phase == phaseRunning {
		return e.restoreRun(now, rec)
	}
	b := &billing{key: billKey{rec.Job, rec.Attempt, rec.Requester}, bill: &pb.Bill{}, result: &pb.Result{},
		next: now, until: rec.Until, replicated: rec.Replicated}
	if err := proto.Unmarshal(rec.Bill, b.bill); err != nil {
		return fmt.Errorf("bill of job %s: %w", rec.Job, err)
	}
	if err := proto.Unmarshal(rec.Result, b.result); err != nil {
		return fmt.Errorf("result of job %s: %w", rec.Job, err)
	}
	var err error
	if b.pay, err = rec.Interim.payState(); err != nil {
		return fmt.Errorf("bill of job %s: %w", rec.Job, err)
	}
	if len(b.bill.JobId) != len(rec.Job) || protocol.JobID(b.bill.JobId) != rec.Job || b.bill.Attempt != rec.Attempt || len(b.bill.Receipt) != 32 {
		return fmt.Errorf("bill of job %s: names job %x attempt %d", rec.Job, b.bill.JobId, b.bill.Attempt)
	}
	switch rec.Phase {
	case "billing":
		b.phase = phaseBilling
		// Its receipt entry may not have reached the disk before the
		// restart; the caller writes one only where none is.
		e.ready.Receipts = append(e.ready.Receipts, b.bill)
		if rec.Short {
			b.short = &ClaimRequest{Job: rec.Job, Attempt: rec.Attempt, Requester: rec.Requester, HoldSeq: b.bill.HoldSeq,
				Amount: rec.Amount, Final: rec.Final, Receipt: [32]byte(b.bill.Receipt), Acceptance: rec.Acceptance}
		}
		if b.replicated {
			e.pollVerdict(b.key, now)
		}
	case "claiming":
		b.phase = phaseClaiming
		b.claim = &ClaimRequest{Job: rec.Job, Attempt: rec.Attempt, Requester: rec.Requester, HoldSeq: b.bill.HoldSeq,
			Amount: rec.Amount, Final: rec.Final, Receipt: [32]byte(b.bill.Receipt), Acceptance: rec.Acceptance}
		if rec.Short {
			b.short = b.claim
		}
		e.ready.Claims = append(e.ready.Claims, *b.claim)
	case "delivering":
		b.phase = phaseDelivering
	default:
		return fmt.Errorf("bill of job %s: phase %q", rec.Job, rec.Phase)
	}
	e.bills[b.key] = b
	return nil
}

// restoreRun takes the record of a lease that was running when the
// provider stopped: the restart lost the run, so its latest interim
// acceptance is claimed now (a claim that leaves the hold open; the
// requester's release after the expiry returns the rest). The record goes
// once the claim is answered (ClaimWritten), or now if the hold expired.
func (e *Engine) restoreRun(now time.Time, rec BillRecord) error {
	p, err := rec.Interim.payState()
	if err != nil || p == nil {
		return fmt.Errorf("running lease of job %s: %w", rec.Job, cmp.Or(err, errors.New("no interim record")))
	}
	k := billKey{rec.Job, rec.Attempt, rec.Requester}
	if p.accepted == 0 || !rec.Until.IsZero() && now.After(rec.Until) {
		e.markBill(k) // nothing a ledger would take now: dropped
		return nil
	}
	e.ready.Claims = append(e.ready.Claims, p.claim(rec.Job, rec.Attempt, rec.Requester))
	return nil
}
