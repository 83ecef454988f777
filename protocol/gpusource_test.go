package protocol

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/mira-market/mira/protocol/pb"
)

func TestCheckSpecGPUSource(t *testing.T) {
	spec := func(source string, gpus uint32) *pb.JobSpec {
		return &pb.JobSpec{Executor: "noop", Tier: TierBatch, MaxDurationMs: 1000, Resources: &pb.Resources{Gpus: gpus}, GpuSource: source}
	}
	for _, tc := range []struct {
		name    string
		spec    *pb.JobSpec
		wantErr string
	}{
		{"any source", spec("", 1), ""},
		{"detected", spec(GPUSourceDetected, 2), ""},
		{"declared is not a choice", spec("declared", 1), "gpu_source"},
		{"detected with no GPU", spec(GPUSourceDetected, 0), "resources.gpus"},
	} {
		err := CheckSpec(tc.spec)
		if (err == nil) != (tc.wantErr == "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: CheckSpec = %v, want an error naming %q", tc.name, err, tc.wantErr)
		}
	}
	// The field is part of the job: asking for detected GPUs makes
	// another job ID, so a provider cannot pass one off as the other.
	a, b := spec("", 1), spec(GPUSourceDetected, 1)
	ea, _ := proto.MarshalOptions{Deterministic: true}.Marshal(a)
	eb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(b)
	if string(ea) == string(eb) {
		t.Fatal("gpu_source does not change the spec's encoding")
	}
}
