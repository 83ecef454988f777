package market

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

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
		ms    int64
		limit uint64
		want  uint64
	}{
		{"nothing", 10, 0, 100, 0},
		{"milliseconds at the price", 10, 2500, 100, 25},
		{"rounded up to a micro-credit", 10, 2501, 100, 26},
		{"never above the limit", 10, 1_000_000, 100, 100},
		{"an overflow costs the limit", math.MaxUint64, 2, 100, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Cost(tc.price, tc.ms, tc.limit); got != tc.want {
				t.Fatalf("Cost = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestBillableAndCap(t *testing.T) {
	gpu2 := &pb.JobSpec{Executor: "docker", Resources: &pb.Resources{Gpus: 2}}
	wasm := &pb.JobSpec{Executor: "wasm", Resources: &pb.Resources{Gpus: 2}}
	noGPU := &pb.JobSpec{Executor: "docker"}
	u := &pb.Usage{WallMs: 3000, GpuMs: 6000}
	tol := DefaultBillTolerance
	for _, tc := range []struct {
		name     string
		spec     *pb.JobSpec
		billable int64
		observed time.Duration
		cap      uint64 // at price 1000 (1 per ms), limit 1e9
	}{
		// 3 s observed: 3 s + 1 s + 5% of 3 s = 4.15 s.
		{"GPU job: GPU-ms, cap times the GPUs handed", gpu2, 6000, 3 * time.Second, 8300},
		{"wasm is handed no GPU: wall time of one unit", wasm, 3000, 3 * time.Second, 4150},
		{"a job asking for no GPU: wall time", noGPU, 3000, 3 * time.Second, 4150},
		{"nothing observed: the fixed tolerance", wasm, 3000, 0, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := BillableMS(tc.spec, u); got != tc.billable {
				t.Fatalf("BillableMS = %d, want %d", got, tc.billable)
			}
			if got := BillCap(1000, tc.spec, tc.observed, tol, 1e9); got != tc.cap {
				t.Fatalf("BillCap = %d, want %d", got, tc.cap)
			}
		})
	}
	if got := BillUsage(wasm, u); got.GpuMs != 0 || got.WallMs != 3000 {
		t.Fatalf("a wasm bill's usage %v, want no GPU time", got)
	}
	// An hour billed for 6 ms observed: at most the cap.
	hour := &pb.Usage{WallMs: 3_600_000, GpuMs: 3_600_000}
	one := &pb.JobSpec{Executor: "docker", Resources: &pb.Resources{Gpus: 1}}
	cap := BillCap(1000, one, 6*time.Millisecond, tol, 1e12)
	if got := AcceptedAmount(1000, one, hour, 3_600_000, cap); got != cap || cap > 1007 {
		t.Fatalf("accepted %d of an hour's bill for 6 ms (cap %d)", got, cap)
	}
	// A bill cannot claim more than its own usage costs.
	if got := AcceptedAmount(1000, one, &pb.Usage{GpuMs: 10}, 5000, cap); got != 10 {
		t.Fatalf("accepted %d of a bill of 5000 for 10 GPU-ms, want 10", got)
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
	t0 := time.Unix(1000, 0)
	req := HoldRequest{Amount: 100, Expiry: t0.Add(time.Hour), MinExpiry: t0.Add(30 * time.Minute)}
	for _, tc := range []struct {
		name   string
		ledger LedgerHold
		want   HoldPlan
		err    error
	}{
		{"none naming the provider: a new one, replacing any posting hold", LedgerHold{}, HoldPlan{Amount: 100, Expiry: req.Expiry}, nil},
		{"an open one that covers it and lasts", LedgerHold{Open: true, Amount: 100, Expiry: req.MinExpiry}, HoldPlan{Reuse: true}, nil},
		{"an open one too small", LedgerHold{Open: true, Amount: 99, Expiry: req.Expiry}, HoldPlan{}, ErrHoldOpen},
		{"an open one expiring too soon", LedgerHold{Open: true, Amount: 500, Expiry: req.MinExpiry.Add(-1)}, HoldPlan{}, ErrHoldOpen},
		{"a provider paid for the job is never held for again", LedgerHold{Paid: true}, HoldPlan{}, ErrJobPaid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanHold(tc.ledger, req)
			if got != tc.want || !errors.Is(err, tc.err) {
				t.Fatalf("PlanHold = %+v, %v; want %+v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestCheckLeaseHold(t *testing.T) {
	spec := costSpec(1, 10_000, 50) // 10 s: 10 × price
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name string
		hold LedgerHold
		want string // part of the error; "" for none
	}{
		{"a hold naming this provider", LedgerHold{Open: true, Amount: 200, Expiry: t0}, ""},
		{"none naming it open", LedgerHold{}, "none open"},
		{"too small", LedgerHold{Open: true, Amount: 199, Expiry: t0}, "of 199 does not cover the job's 200"},
		{"expiring too soon", LedgerHold{Open: true, Amount: 200, Expiry: t0.Add(-1)}, "too soon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckLeaseHold(tc.hold, 20, spec, t0)
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckLeaseHold: %v, want %q", err, tc.want)
			}
		})
	}
}
