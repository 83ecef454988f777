package market

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"

	"github.com/mira-market/mira/protocol/pb"
)

// The money rules of a job, in micro-credits: what its requester escrows,
// which hold backs an award, and what a finished job pays. They are pure:
// the node maps their answers to ledger entries (storage's bodies), which
// this package does not know.

// ErrCostOverflow refuses a price that makes a job's cost overflow.
var ErrCostOverflow = errors.New("price times GPUs times max_duration overflows")

// ErrJobPaid refuses a hold for a job the requester's ledger shows paid.
var ErrJobPaid = errors.New("this node's ledger shows the job paid already")

// MaxCost is what a job can cost at most: its price per GPU-second for
// every GPU (a job without GPUs is billed as one) for its whole
// max_duration, in micro-credits.
func MaxCost(price uint64, spec *pb.JobSpec) (uint64, error) {
	gpus := max(uint64(spec.GetResources().GetGpus()), 1)
	secs := (uint64(max(spec.GetMaxDurationMs(), 0)) + 999) / 1000
	hi, perSec := bits.Mul64(price, gpus)
	hi2, total := bits.Mul64(perSec, secs)
	if hi != 0 || hi2 != 0 {
		return 0, ErrCostOverflow
	}
	return total, nil
}

// HandsGPUs reports whether a job of spec is handed GPUs: one that asks
// for some on an executor that can use them. A wasm or noop job gets
// none, whatever it asks for: it is billed as wall time of one unit.
func HandsGPUs(spec *pb.JobSpec) bool {
	switch spec.GetExecutor() {
	case "wasm", "noop":
		return false
	}
	return spec.GetResources().GetGpus() > 0
}

// BillableMS is the units a run's usage bills, in milliseconds: GPU-ms for
// a job handed GPUs, else its wall time as one unit.
func BillableMS(spec *pb.JobSpec, u *pb.Usage) int64 {
	if HandsGPUs(spec) {
		return max(u.GetGpuMs(), 0)
	}
	return max(u.GetWallMs(), 0)
}

// BillUsage is usage as a bill states it: no GPU time for a job that was
// handed no GPU.
func BillUsage(spec *pb.JobSpec, u *pb.Usage) *pb.Usage {
	if u == nil {
		return nil
	}
	c := &pb.Usage{WallMs: u.WallMs, GpuMs: u.GpuMs, PeakMemoryBytes: u.PeakMemoryBytes, FirstOutputMs: u.FirstOutputMs}
	if !HandsGPUs(spec) {
		c.GpuMs = 0
	}
	return c
}

// Cost is what ms billable milliseconds (BillableMS) cost at price per
// second, rounded up to a whole micro-credit, never above limit.
func Cost(price uint64, ms int64, limit uint64) uint64 {
	if ms <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(price, uint64(ms))
	if hi != 0 || lo > math.MaxUint64-999 {
		return limit
	}
	return min((lo+999)/1000, limit)
}

// Tolerance is how much more than it observed a requester accepts in a
// bill: Fixed plus Percent of the observed time (clocks, the network, a
// run's start and end around the messages).
type Tolerance struct {
	Fixed   time.Duration
	Percent uint
}

// DefaultBillTolerance is a second and 5%.
var DefaultBillTolerance = Tolerance{Fixed: time.Second, Percent: 5}

// BillCap is the most a requester accepts for a lease at price that it
// observed running for observed (from the provider's acceptance to the
// bill's arrival, by its own clock): the observed time plus the
// tolerance, times the GPUs the job was handed (one unit for a job
// handed none), never above limit.
func BillCap(price uint64, spec *pb.JobSpec, observed time.Duration, tol Tolerance, limit uint64) uint64 {
	observed = max(observed, 0)
	wall := observed + tol.Fixed + observed*time.Duration(tol.Percent)/100
	ms := wall.Milliseconds()
	if HandsGPUs(spec) {
		hi, lo := bits.Mul64(uint64(ms), uint64(spec.GetResources().GetGpus()))
		if hi != 0 || lo > math.MaxInt64 {
			return limit
		}
		ms = int64(lo)
	}
	return Cost(price, ms, limit)
}

// AcceptedAmount is what a requester accepts of a bill of amount for
// usage u: at most the bill, at most what the usage costs at price (a bill
// cannot claim more than its own usage says, nor GPU time for a job
// handed none), and at most cap (BillCap).
func AcceptedAmount(price uint64, spec *pb.JobSpec, u *pb.Usage, amount, cap uint64) uint64 {
	return min(amount, cap, Cost(price, BillableMS(spec, u), cap))
}

// PostingHold is what a job's requester escrows when it posts the job: its
// maximum cost at its max price, naming no provider, so that the first
// award finds it on disk. ok is false when there is nothing to hold (a
// free job, or one whose cost overflows): the award then writes a hold at
// the winning price.
func PostingHold(spec *pb.JobSpec) (amount uint64, ok bool) {
	amount, err := MaxCost(spec.GetMaxPrice(), spec)
	return amount, err == nil && amount > 0
}

// HoldAmount is what the hold that backs an award at price escrows: the
// job's maximum cost at that price, and at least 1 (a ledger refuses a
// hold of nothing), even for a job at price 0.
func HoldAmount(price uint64, spec *pb.JobSpec) (uint64, error) {
	amount, err := MaxCost(price, spec)
	if err != nil {
		return 0, err
	}
	return max(amount, 1), nil
}

// ErrHoldOpen refuses an award to a provider that a hold of the job still
// names, one that expires too soon to back another run (it declined
// without giving it back): the requester waits for its expiry.
var ErrHoldOpen = errors.New("a hold of the job naming this provider is still open and expires too soon")

// LedgerHold is what a ledger shows of a job's hold naming one provider:
// whether it is open (with its amount and expiry, and the sequence
// number of the entry that opened it), or whether that provider was paid
// for the job already (a final claim).
type LedgerHold struct {
	Open   bool
	Seq    uint64
	Amount uint64
	Expiry time.Time
	Paid   bool
}

// HoldPlan is which hold backs an award: the open one naming the
// provider as it is (Reuse), or a new one of Amount naming it, expiring at
// Expiry. A new named hold replaces the job's open posting hold (unnamed)
// in the same entry: the ledger closes the one as it opens the other.
type HoldPlan struct {
	Reuse  bool
	Amount uint64
	Expiry time.Time
}

// PlanHold decides which hold backs an award r, given what the ledger
// shows of the job's hold naming r's provider. Every award gets a hold
// naming its provider, expiring at r.Expiry: a ledger admits a lease only
// on a hold naming its provider, and only that provider may close it
// before its expiry (by a claim or a waive). A hold naming the provider
// that is still open (it declined without waiving it) is reused if it
// covers the amount and expires late enough (r.MinExpiry); else the
// award waits for nothing and fails (ErrHoldOpen). A provider the ledger
// shows paid for the job is never held for again (ErrJobPaid).
func PlanHold(h LedgerHold, r HoldRequest) (HoldPlan, error) {
	switch {
	case h.Open && h.Amount >= r.Amount && !h.Expiry.Before(r.MinExpiry):
		return HoldPlan{Reuse: true}, nil
	case h.Open:
		return HoldPlan{}, ErrHoldOpen
	case h.Paid:
		return HoldPlan{}, ErrJobPaid
	}
	return HoldPlan{Amount: r.Amount, Expiry: r.Expiry}, nil
}

// CheckLeaseHold is a provider's check of the hold naming it that backs
// its lease at price: open, covering the job's maximum cost at the price,
// and expiring no sooner than minExpiry (the lease's MinHoldExpiry: the
// run's whole max_duration and a claim window from the award).
func CheckLeaseHold(h LedgerHold, price uint64, spec *pb.JobSpec, minExpiry time.Time) error {
	if !h.Open {
		return errors.New("escrow hold: none open for the job naming this provider")
	}
	want, err := MaxCost(price, spec)
	if err != nil {
		return fmt.Errorf("escrow hold: %w", err)
	}
	if h.Amount < want {
		return fmt.Errorf("escrow hold of %d does not cover the job's %d", h.Amount, want)
	}
	if h.Expiry.Before(minExpiry) {
		return fmt.Errorf("escrow hold expires at %v, before %v: too soon for the run and a claim", h.Expiry.UTC(), minExpiry.UTC())
	}
	return nil
}
