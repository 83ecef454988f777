package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/testnet"
)

// limitsNet starts a requester (node 0) and a provider (node 1) that
// allows the given executors, a 16 MiB disk quota, 512 MiB and one CPU
// per job, and the given docker images.
func limitsNet(t *testing.T, images []string, executors ...string) *api.Client {
	t.Helper()
	tn := startTestnet(t, 2, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = executors
		cfg.Provider.DiskMiB = 16
		cfg.Provider.MaxMemoryMiB, cfg.Provider.MaxCPUMillis = 512, 1000
		cfg.Provider.DockerImages = images
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	return c
}

// wantDeclined waits for a job to expire and checks that the provider
// declined it with reason.
func wantDeclined(t *testing.T, c *api.Client, req api.JobRequest, reason string) {
	t.Helper()
	req.Deadline = "3s"
	j, err := c.SubmitJob(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "expired", time.Minute)[j.ID]
	if len(done.Declines) == 0 || done.Declines[0].Reason != reason {
		t.Fatalf("declines %+v, want the provider's %q", done.Declines, reason)
	}
}

// wantFailed waits for a job to fail and checks the error its requester
// sees.
func wantFailed(t *testing.T, c *api.Client, req api.JobRequest, reason string) {
	t.Helper()
	j, err := c.SubmitJob(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "failed", time.Minute)[j.ID]
	if !strings.Contains(done.Error, reason) {
		t.Fatalf("error %q (exit %d), want %q", done.Error, done.ExitCode, reason)
	}
}

// A wasm job is held to the provider's limits, whatever it asks: writing
// past its disk quota fails it with a reason its requester sees, and
// asking more memory than a job may have gets it declined.
func TestWasmJobHeldToProviderLimits(t *testing.T) {
	c := limitsNet(t, nil, "wasm")
	t.Run("disk quota", func(t *testing.T) {
		wantFailed(t, c, wasmJob("sample", "fill", "big", "48"), executor.ReasonDiskQuota)
	})
	t.Run("memory", func(t *testing.T) {
		req := wasmJob("sample", "echo", "ran")
		req.Resources.MemoryMiB = 1 << 20 // 1 TiB
		wantDeclined(t, c, req, market.ReasonMemory)
	})
}

// The same for a container, which also runs as nobody, and only from an
// image the provider allows.
func TestDockerJobHeldToProviderLimits(t *testing.T) {
	image := sampleImage(t, "mira-node-test-limits")
	c := limitsNet(t, []string{image}, "docker")
	job := func(args ...string) api.JobRequest {
		return api.JobRequest{
			Executor: "docker", Image: image, Args: args, Tier: "interactive", MaxPrice: 0.01,
			Resources: api.Resources{GPUs: 1}, MaxDuration: "30s", Deadline: "2m",
		}
	}
	t.Run("runs as nobody", func(t *testing.T) {
		j, err := c.SubmitJob(context.Background(), job("id"))
		if err != nil {
			t.Fatal(err)
		}
		done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
		if got := string(result(t, c, done)); got != "65534:65534\n" {
			t.Fatalf("id %q, want 65534:65534", got)
		}
	})
	t.Run("disk quota", func(t *testing.T) {
		wantFailed(t, c, job("fill", "part", "48", "1", "1h"), executor.ReasonDiskQuota)
	})
	t.Run("1 TiB of memory", func(t *testing.T) {
		req := job("echo", "ran")
		req.Resources.MemoryMiB = 1 << 20
		wantDeclined(t, c, req, market.ReasonMemory)
	})
	t.Run("more CPU than a job may have", func(t *testing.T) {
		req := job("echo", "ran")
		req.Resources.CPUMillis = 2000
		wantDeclined(t, c, req, market.ReasonCPU)
	})
	t.Run("an image not on the allowlist", func(t *testing.T) {
		req := job("echo", "ran")
		req.Image = "busybox:latest"
		wantDeclined(t, c, req, market.ReasonImage)
	})
}
