//go:build gpu

package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/testnet"
)

// TestGPUJob runs on a machine with an NVIDIA GPU (go test -tags gpu): the
// provider detects its GPUs, announces them, and runs a process job that
// lists the GPU it was given.
func TestGPUJob(t *testing.T) {
	tn := startTestnet(t, 2, func(i int, cfg *node.Config) {
		if i == 1 {
			cfg.DetectGPUs = true
			cfg.Provider.Executors = []string{"process", "wasm"}
		}
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	gpus := tn.Node(1).GPUs()
	if len(gpus) == 0 {
		t.Fatal("no GPU detected")
	}
	t.Logf("detected: %+v", gpus)
	c := clientFor(t, tn, 0)
	found := queryUntil(t, c, api.ProviderQuery{GPU: gpus[0].Model}, []string{tn.Node(1).ID().String()})
	t.Logf("found by model %s: %+v", gpus[0].Model, found)
	j, err := c.SubmitJob(context.Background(), api.JobRequest{
		Executor: "process", Command: []string{"/bin/sh", "-c", "nvidia-smi -L; echo visible=$CUDA_VISIBLE_DEVICES"},
		Env:  map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Tier: "interactive", MaxPrice: 0.01, Resources: api.Resources{GPUs: 1, GPUModel: gpus[0].Model},
		MaxDuration: "30s", Deadline: "2m",
	})
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	out := string(result(t, c, done))
	t.Logf("job output:\n%s", out)
	if !strings.Contains(out, "GPU 0") {
		t.Fatalf("the job did not see a GPU: %q", out)
	}
}
