package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

// sampleJob is one of the jobs `mira testnet` posts to show the market.
type sampleJob struct {
	label string
	spec  *pb.JobSpec
}

func sampleJobs(n int) []sampleJob {
	kinds := []sampleJob{
		{"interactive wasm hash, any GPU", &pb.JobSpec{Executor: "wasm", Module: "sample", Tier: protocol.TierInteractive,
			Args: []string{"hash", "16"}, Resources: &pb.Resources{Gpus: 1}}},
		{"batch noop, 2x nvidia-h100", &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, Args: []string{"2s"}, Resources: &pb.Resources{Gpus: 2, GpuModel: "nvidia-h100"}}},
		{"batch wasm writing /out/hello.txt, 32 GiB VRAM", &pb.JobSpec{Executor: "wasm", Module: "sample", Tier: protocol.TierBatch,
			Args: []string{"write", "/out/hello.txt", "hello from a sandbox"}, Resources: &pb.Resources{Gpus: 1, VramMib: 32 << 10}}},
		{"interactive, 16 GPUs (nobody has them)", &pb.JobSpec{Executor: "noop", Tier: protocol.TierInteractive, Resources: &pb.Resources{Gpus: 16}}},
	}
	out := make([]sampleJob, 0, n)
	for i := range n {
		k := kinds[i%len(kinds)]
		spec := proto.Clone(k.spec).(*pb.JobSpec)
		spec.MaxPrice, spec.MaxDurationMs = 10_000, 30_000
		out = append(out, sampleJob{label: k.label, spec: spec})
	}
	return out
}

// runSampleJobs waits for the providers, posts jobs from the last member
// and prints each job's way through the market as it happens.
func runSampleJobs(ctx context.Context, out io.Writer, mu *sync.Mutex, tn *testnet.Testnet, n, providers int) {
	requester := tn.Node(tn.Len() - 1)
	if err := testnet.WaitFor(ctx, time.Minute, func() error {
		found, err := requester.FindProviders(ctx, market.Requirements{GPUModel: market.AnyGPU})
		if err == nil && len(found) < providers {
			err = fmt.Errorf("found %d of %d providers", len(found), providers)
		}
		return err
	}); err != nil {
		return
	}
	names := map[peer.ID]string{}
	for i := range tn.Len() {
		if nd := tn.Node(i); nd != nil {
			names[nd.ID()] = fmt.Sprintf("node%d", i)
		}
	}
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "\r\033[K"[:clearLen(isTerminal(out))]+format+"\n", a...)
	}
	var wg sync.WaitGroup
	for i, s := range sampleJobs(n) {
		deadline := 30 * time.Second
		if s.spec.Resources.Gpus > 8 {
			deadline = 4 * time.Second // nobody can serve it: show it expire
		}
		j, err := requester.SubmitJob(ctx, s.spec, time.Now().Add(deadline))
		if err != nil {
			say("job %d (%s): submit failed: %v", i, s.label, err)
			continue
		}
		ch, err := requester.WatchJob(ctx, j.ID)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last string
			for st := range ch {
				line := string(st.State)
				switch st.State {
				case market.Assigned, market.Running:
					line += fmt.Sprintf(" on %s at %g credits/GPU-s", names[st.Provider], float64(st.Price)/1e6)
				case market.Succeeded, market.Failed:
					line += fmt.Sprintf(" on %s: %q", names[st.Provider], st.Output)
					if st.OutputsID != "" {
						line += fmt.Sprintf(", outputs %s (%d bytes of tar)", st.OutputsID, st.OutputsSize)
					}
				case market.Expired:
					line += fmt.Sprintf(" after %d declines", len(st.Declines))
					for _, d := range st.Declines {
						line += fmt.Sprintf("; %s: %s", names[d.Provider], d.Reason)
					}
				}
				if line != last {
					say("job %s (%s): %s", j.ID.String()[:8], s.label, line)
					last = line
				}
			}
		}()
	}
	wg.Wait()
}
