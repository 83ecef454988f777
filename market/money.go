package market

import (
	"errors"
	"fmt"
	"math"
	"math/bits"

	"github.com/libp2p/go-libp2p/core/peer"

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

// Cost is what a run used at price: GPU-milliseconds metered by the
// provider, rounded up to a whole micro-credit, never above limit.
func Cost(price uint64, u *pb.Usage, limit uint64) uint64 {
	if u == nil || u.GpuMs <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(price, uint64(u.GpuMs))
	if hi != 0 || lo > math.MaxUint64-999 {
		return limit
	}
	return min((lo+999)/1000, limit)
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

// LedgerHold is what the requester's ledger shows of a job: its open hold
// (if Open: the provider it names, or none, and its amount), and whether
// the job was paid already.
type LedgerHold struct {
	Open     bool
	Provider peer.ID
	Amount   uint64
	Paid     bool
}

// HoldPlan is which hold backs an award: the open one as it is (Reuse), or
// a new one of Amount naming the award's provider, written after a release
// of the open one (Release).
type HoldPlan struct {
	Reuse   bool
	Release bool
	Amount  uint64
}

// PlanHold decides which hold backs attempt's award of a job, whose hold
// must escrow amount (HoldAmount), given what the ledger shows of the job.
// The posting's hold, naming no provider, backs only the first award, and
// only if it covers the amount: a provider then knows no other award
// shares it. Every other award gets a hold of its own, even one to the
// provider the open hold names (re-awarded after it declined or was
// preempted): a ledger admits a provider's lease of a job once for each
// hold that names it, so a hold backs one award. A job the ledger shows
// paid (by an earlier run, whose records a restored data dir lacks) is
// never held again: it could not be paid twice, and the hold would stay
// open.
func PlanHold(h LedgerHold, attempt uint32, amount uint64) (HoldPlan, error) {
	if !h.Open {
		if h.Paid {
			return HoldPlan{}, ErrJobPaid
		}
		return HoldPlan{Amount: amount}, nil
	}
	if h.Provider == "" && attempt == 1 && h.Amount >= amount {
		return HoldPlan{Reuse: true}, nil
	}
	return HoldPlan{Release: true, Amount: amount}, nil
}

// CheckLeaseHold is a provider's check of the hold that backs its lease of
// attempt at price: it names this provider (self), or none for a job's
// first award, and covers the job's maximum cost at the price.
func CheckLeaseHold(h LedgerHold, self peer.ID, attempt uint32, price uint64, spec *pb.JobSpec) error {
	switch {
	case !h.Open:
		return errors.New("escrow hold: none open for the job")
	case h.Provider == "" && attempt != 1:
		return fmt.Errorf("escrow hold names no provider, and this is award %d of the job", attempt)
	case h.Provider != "" && h.Provider != self:
		return fmt.Errorf("escrow hold names provider %s, not this one", h.Provider)
	}
	want, err := MaxCost(price, spec)
	if err != nil {
		return fmt.Errorf("escrow hold: %w", err)
	}
	if h.Amount < want {
		return fmt.Errorf("escrow hold of %d does not cover the job's %d", h.Amount, want)
	}
	return nil
}

// Settlement is what settles a finished job's open hold: a payment of
// Amount to To (Pay), or else a release.
type Settlement struct {
	Pay    bool
	To     peer.ID
	Amount uint64
}

// Settle is what a finished job settles its open hold of amount hold to;
// ok is false for a job that has not finished. A job that succeeded with
// its provider's receipt pays the provider the metered usage at the
// agreed price, capped at the agreed price's maximum cost (a hold from
// the posting covers the max price: the payment is capped whatever usage
// the provider reports) and at the hold; any other end releases the hold.
func Settle(j *Job, hold uint64) (s Settlement, ok bool) {
	if !j.State.Terminal() {
		return Settlement{}, false
	}
	if j.State != Succeeded || len(j.Receipt) == 0 {
		return Settlement{}, true
	}
	limit := hold
	if agreed, err := MaxCost(j.Price, j.Spec()); err == nil {
		limit = min(limit, agreed)
	}
	return Settlement{Pay: true, To: j.Provider, Amount: Cost(j.Price, j.Usage, limit)}, true
}
