package api

import (
	"strings"
	"testing"
	"time"
)

func TestParseGPUSource(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	base := JobRequest{Executor: "noop", Tier: "batch", MaxDuration: "1s", Deadline: "1m", Resources: Resources{GPUs: 1}}
	for _, tc := range []struct {
		name    string
		source  string
		gpus    int
		wantErr bool
	}{
		{"any", "", 1, false},
		{"detected", "detected", 1, false},
		{"declared is not a choice", "declared", 1, true},
		{"detected without a GPU", "detected", 0, true},
	} {
		r := base
		r.GPUSource, r.Resources.GPUs = tc.source, tc.gpus
		_, err := r.Parse(now)
		if (err != nil) != tc.wantErr || err != nil && !strings.HasPrefix(err.Error(), "gpu_source") {
			t.Errorf("%s: Parse = %v, want error %v naming gpu_source", tc.name, err, tc.wantErr)
		}
	}
}

func TestParseVerifyReplicas(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	base := JobRequest{Executor: "wasm", Tier: "batch", MaxDuration: "1s", Deadline: "1m"}
	for _, tc := range []struct {
		name    string
		verify  *Verify
		wantErr bool
	}{
		{"none", nil, false},
		{"one", &Verify{Replicas: 1}, false},
		{"three", &Verify{Replicas: 3}, false},
		{"five", &Verify{Replicas: 5}, false},
		{"zero", &Verify{Replicas: 0}, true},
		{"six: more than the ledger counts", &Verify{Replicas: 6}, true},
		{"negative", &Verify{Replicas: -1}, true},
	} {
		r := base
		r.Verify = tc.verify
		_, err := r.Parse(now)
		if (err != nil) != tc.wantErr || err != nil && !strings.HasPrefix(err.Error(), "verify.replicas") {
			t.Errorf("%s: Parse = %v, want error %v naming verify.replicas", tc.name, err, tc.wantErr)
		}
	}
}
