package market

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/mira-market/mira/protocol/pb"
)

func costSpec(gpus uint32, durationMs int64, maxPrice uint64) *pb.JobSpec {
	return &pb.JobSpec{MaxPrice: maxPrice, MaxDurationMs: durationMs, Resources: &pb.Resources{Gpus: gpus}}
}

func TestMaxCost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		price uint64
		spec  *pb.JobSpec
		want  uint64
		err   error
	}{
		{"price per GPU-second", 10, costSpec(2, 30_000, 0), 600, nil},
		{"no GPUs are billed as one", 10, costSpec(0, 30_000, 0), 300, nil},
		{"a started second counts whole", 10, costSpec(1, 1_001, 0), 20, nil},
		{"no duration", 10, costSpec(1, 0, 0), 0, nil},
		{"a negative duration is none", 10, costSpec(1, -5, 0), 0, nil},
		{"no resources", 7, &pb.JobSpec{MaxDurationMs: 2000}, 14, nil},
		{"price times GPUs overflows", math.MaxUint64, costSpec(2, 1000, 0), 0, ErrCostOverflow},
		{"times seconds overflows", math.MaxUint64 / 2, costSpec(1, 3000, 0), 0, ErrCostOverflow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MaxCost(tc.price, tc.spec)
			if got != tc.want || !errors.Is(err, tc.err) {
				t.Fatalf("MaxCost = %d, %v; want %d, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestCost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		price uint64
		usage *pb.Usage
		limit uint64
		want  uint64
	}{
		{"no usage", 10, nil, 100, 0},
		{"no GPU time", 10, &pb.Usage{WallMs: 500}, 100, 0},
		{"GPU-milliseconds at the price", 10, &pb.Usage{GpuMs: 2500}, 100, 25},
		{"rounded up to a micro-credit", 10, &pb.Usage{GpuMs: 2501}, 100, 26},
		{"never above the limit", 10, &pb.Usage{GpuMs: 1_000_000}, 100, 100},
		{"an overflow costs the limit", math.MaxUint64, &pb.Usage{GpuMs: 2}, 100, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Cost(tc.price, tc.usage, tc.limit); got != tc.want {
				t.Fatalf("Cost = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestPostingHoldAndHoldAmount(t *testing.T) {
	for _, tc := range []struct {
		name       string
		spec       *pb.JobSpec
		price      uint64
		posting    uint64
		posted     bool
		award      uint64
		awardError error
	}{
		{"the max price escrowed at posting, the price at award", costSpec(1, 10_000, 50), 20, 500, true, 200, nil},
		{"a free job posts no hold, its award holds 1", costSpec(1, 10_000, 0), 0, 0, false, 1, nil},
		{"an overflow posts nothing and fails the award", costSpec(2, 1000, math.MaxUint64), math.MaxUint64, 0, false, 0, ErrCostOverflow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			amount, ok := PostingHold(tc.spec)
			if ok != tc.posted || ok && amount != tc.posting {
				t.Fatalf("PostingHold = %d, %v; want %d, %v", amount, ok, tc.posting, tc.posted)
			}
			got, err := HoldAmount(tc.price, tc.spec)
			if got != tc.award || !errors.Is(err, tc.awardError) {
				t.Fatalf("HoldAmount = %d, %v; want %d, %v", got, err, tc.award, tc.awardError)
			}
		})
	}
}

func TestPlanHold(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ledger  LedgerHold
		attempt uint32
		amount  uint64
		want    HoldPlan
		err     error
	}{
		{"no hold: a new one", LedgerHold{}, 1, 100, HoldPlan{Amount: 100}, nil},
		{"the posting's hold backs the first award", LedgerHold{Open: true, Amount: 500}, 1, 100, HoldPlan{Reuse: true}, nil},
		{"exactly covering", LedgerHold{Open: true, Amount: 100}, 1, 100, HoldPlan{Reuse: true}, nil},
		{"a posting hold too small is replaced", LedgerHold{Open: true, Amount: 99}, 1, 100, HoldPlan{Release: true, Amount: 100}, nil},
		{"a later award gets its own hold", LedgerHold{Open: true, Amount: 500}, 2, 100, HoldPlan{Release: true, Amount: 100}, nil},
		{"even to the provider the hold names", LedgerHold{Open: true, Provider: "p", Amount: 500}, 1, 100, HoldPlan{Release: true, Amount: 100}, nil},
		{"a paid job is never held again", LedgerHold{Paid: true}, 3, 100, HoldPlan{}, ErrJobPaid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanHold(tc.ledger, tc.attempt, tc.amount)
			if got != tc.want || !errors.Is(err, tc.err) {
				t.Fatalf("PlanHold = %+v, %v; want %+v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestCheckLeaseHold(t *testing.T) {
	spec := costSpec(1, 10_000, 50) // 10 s: 10 × price
	for _, tc := range []struct {
		name    string
		hold    LedgerHold
		attempt uint32
		want    string // part of the error; "" for none
	}{
		{"the posting's hold, first award", LedgerHold{Open: true, Amount: 500}, 1, ""},
		{"a hold naming this provider", LedgerHold{Open: true, Provider: "me", Amount: 200}, 4, ""},
		{"none open", LedgerHold{}, 1, "none open"},
		{"no provider named on a later award", LedgerHold{Open: true, Amount: 500}, 2, "names no provider, and this is award 2"},
		{"another provider named", LedgerHold{Open: true, Provider: "other", Amount: 500}, 1, "not this one"},
		{"too small", LedgerHold{Open: true, Provider: "me", Amount: 199}, 1, "of 199 does not cover the job's 200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckLeaseHold(tc.hold, "me", tc.attempt, 20, spec)
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckLeaseHold: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSettle(t *testing.T) {
	spec := costSpec(1, 10_000, 50)
	job := func(s State, receipt string, price uint64, gpuMs int64) *Job {
		return &Job{State: s, Provider: "p", Price: price, Receipt: []byte(receipt), Usage: &pb.Usage{GpuMs: gpuMs},
			offer: &pb.Offer{Spec: spec}}
	}
	for _, tc := range []struct {
		name string
		job  *Job
		hold uint64
		want Settlement
		ok   bool
	}{
		{"not finished", job(Running, "r", 20, 1000), 500, Settlement{}, false},
		{"succeeded: the usage at the price", job(Succeeded, "r", 20, 2500), 500, Settlement{Pay: true, To: "p", Amount: 50}, true},
		{"capped at the agreed price's maximum", job(Succeeded, "r", 20, 60_000), 500, Settlement{Pay: true, To: "p", Amount: 200}, true},
		{"capped at the hold", job(Succeeded, "r", 20, 60_000), 150, Settlement{Pay: true, To: "p", Amount: 150}, true},
		{"succeeded without a receipt: released", job(Succeeded, "", 20, 2500), 500, Settlement{}, true},
		{"failed: released", job(Failed, "r", 20, 2500), 500, Settlement{}, true},
		{"cancelled: released", job(Cancelled, "", 20, 0), 500, Settlement{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Settle(tc.job, tc.hold)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("Settle = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
