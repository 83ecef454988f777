package market

import (
	"testing"
	"time"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// A job that asks for detected GPUs is refused by a provider whose GPUs
// are only declared (a config line, not a device the node found), even one
// declaring the right model; a provider with detected GPUs takes it. A job
// that does not ask takes either.
func TestDetectedGPUJobRefusedOnDeclaredGPUs(t *testing.T) {
	declared := protocol.GPU{Model: "nvidia-h100", VRAMMiB: 80000, Count: 8}
	detected := protocol.GPU{Model: "nvidia-h100", VRAMMiB: 80000, Count: 1, Detected: true}
	spec := func(source string) *pb.JobSpec {
		return &pb.JobSpec{Executor: "noop", Tier: protocol.TierInteractive, MaxPrice: 1000, MaxDurationMs: 1000,
			Resources: &pb.Resources{Gpus: 1, GpuModel: "nvidia-h100"}, GpuSource: source}
	}
	cases := []struct {
		name string
		gpus []protocol.GPU
		spec *pb.JobSpec
		want string // decline reason; "" for a bid that wins
	}{
		{"detected asked, declared GPUs", []protocol.GPU{declared}, spec(protocol.GPUSourceDetected), ReasonNoGPU},
		{"detected asked, detected GPU", []protocol.GPU{detected}, spec(protocol.GPUSourceDetected), ""},
		{"detected asked, one detected among declared", []protocol.GPU{declared, detected}, spec(protocol.GPUSourceDetected), ""},
		{"any source, declared GPUs", []protocol.GPU{declared}, spec(""), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			p := s.add(provider(10, c.gpus...))
			j := s.submitSpec(req, c.spec, time.Minute, p)
			if c.want == "" {
				wantState(t, j, Running)
				return
			}
			wantState(t, j, Bidding)
			if len(j.Declines) != 1 || j.Declines[0].Reason != c.want {
				t.Fatalf("declines %+v, want one with reason %q", j.Declines, c.want)
			}
			if len(s.runs[p]) > 0 {
				t.Fatal("the provider runs the job on declared GPUs")
			}
		})
	}
}

func TestFitsDetectedOnly(t *testing.T) {
	mixed := capRec("a", 1, 1, t0,
		protocol.GPU{Model: "nvidia-h100", VRAMMiB: 81559, Count: 8},
		protocol.GPU{Model: "nvidia-h100", VRAMMiB: 81559, Count: 1, Detected: true})
	for _, tc := range []struct {
		name string
		r    Requirements
		want bool
	}{
		{"one detected", Requirements{GPUModel: "nvidia-h100", GPUs: 1, DetectedOnly: true}, true},
		{"declared ones do not count", Requirements{GPUModel: "nvidia-h100", GPUs: 2, DetectedOnly: true}, false},
		{"any source counts all", Requirements{GPUModel: "nvidia-h100", GPUs: 9}, true},
	} {
		if got := Fits(mixed, tc.r); got != tc.want {
			t.Errorf("%s: Fits = %v, want %v", tc.name, got, tc.want)
		}
	}
	spec := &pb.JobSpec{Resources: &pb.Resources{Gpus: 2, GpuModel: "nvidia-h100", VramMib: 1}, GpuSource: protocol.GPUSourceDetected}
	if r := SpecRequirements(spec); r != (Requirements{GPUModel: "nvidia-h100", GPUs: 2, MinVRAMMiB: 1, DetectedOnly: true}) {
		t.Errorf("SpecRequirements = %+v", r)
	}
}
