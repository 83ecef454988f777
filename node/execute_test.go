package node_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/moby/moby/client"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/testnet"
)

// execNet starts a requester (node 0) and one provider (node 1) whose
// executors are the given ones.
func execNet(t *testing.T, executors ...string) (*testnet.Testnet, *api.Client) {
	t.Helper()
	tn := startTestnet(t, 2, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = executors
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	return tn, c
}

func wasmJob(module string, args ...string) api.JobRequest {
	return api.JobRequest{
		Executor: "wasm", Module: module, Args: args, Tier: "interactive", MaxPrice: 0.01,
		Resources: api.Resources{GPUs: 1}, MaxDuration: "30s", Deadline: "2m",
	}
}

// outputs fetches a finished job's outputs, checks them against the ID
// its receipt names, and returns the archive's files by name.
func outputs(t *testing.T, c *api.Client, j api.JobInfo) map[string]string {
	t.Helper()
	b := fetchChecked(t, "outputs", j.OutputsID, j.OutputsSize)(c.JobOutputs(context.Background(), j.ID))
	files := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = string(content)
	}
}

// result fetches a job's result and checks it against the content ID in
// the provider's signed receipt.
func result(t *testing.T, c *api.Client, j api.JobInfo) []byte {
	t.Helper()
	return fetchChecked(t, "result", j.ResultID, j.ResultSize)(c.JobResult(context.Background(), j.ID))
}

// fetchChecked reads a fetched blob of a job and checks it against the
// content ID and size its receipt names.
func fetchChecked(t *testing.T, what, wantID string, wantSize uint64) func(io.ReadCloser, string, error) []byte {
	return func(rc io.ReadCloser, id string, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if id != wantID || !protocol.IsBlob(b, wantID) || uint64(len(b)) != wantSize {
			t.Fatalf("%s %s (%d bytes); receipt names %s (%d bytes)", what, id, len(b), wantID, wantSize)
		}
		return b
	}
}

func logs(t *testing.T, c *api.Client, id string) string {
	t.Helper()
	rc, err := c.JobLogs(context.Background(), id, true)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWasmJobEndToEnd(t *testing.T) {
	_, c := execNet(t, "wasm")
	ctx := context.Background()

	// A sample module the binary ships, by name.
	j, err := c.SubmitJob(ctx, wasmJob("sample", "echo", "hello", "market"))
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if got := string(result(t, c, done)); got != "hello market\n" {
		t.Fatalf("result %q", got)
	}
	// A wasm job is handed no GPU: billed its wall time, no GPU-ms.
	if done.Usage == nil || done.Usage.WallMS < 0 || done.Usage.GPUMS != 0 {
		t.Fatalf("usage %+v", done.Usage)
	}
	if got := logs(t, c, j.ID); !strings.Contains(got, "hello market") {
		t.Fatalf("logs %q", got)
	}
	// It left no files in /out: it has no outputs.
	var missing *api.StatusError
	if _, _, err := c.JobOutputs(ctx, j.ID); !errors.As(err, &missing) || missing.Code != http.StatusNotFound || done.OutputsID != "" {
		t.Fatalf("outputs of a job that left none: %v (outputs_id %q)", err, done.OutputsID)
	}

	// Files a job leaves in /out come back as a tar archive, checked
	// against the ID in the provider's receipt.
	j, err = c.SubmitJob(ctx, wasmJob("sample", "write", "/out/answer.txt", "42"))
	if err != nil {
		t.Fatal(err)
	}
	done = waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if files := outputs(t, c, done); len(files) != 1 || files["answer.txt"] != "42" {
		t.Fatalf("outputs %q, want answer.txt", files)
	}

	// The module and an input uploaded as blobs: the provider fetches both
	// from the requester. The input is larger than a result carried inline,
	// so the result comes over the blob protocol too.
	mod, err := executor.SampleModule("sample")
	if err != nil {
		t.Fatal(err)
	}
	modInfo, err := c.PutBlob(ctx, bytes.NewReader(mod))
	if err != nil {
		t.Fatal(err)
	}
	input := bytes.Repeat([]byte("mira input line\n"), 8<<10) // 128 KiB
	inInfo, err := c.PutBlob(ctx, bytes.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	req := wasmJob(modInfo.ID, "readfile", "/inputs/"+inInfo.ID)
	req.Inputs = []string{inInfo.ID}
	j, err = c.SubmitJob(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	done = waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if got := result(t, c, done); !bytes.Equal(got, input) || done.Output != "" {
		t.Fatalf("result of %d bytes (inline %d), want the %d-byte input", len(got), len(done.Output), len(input))
	}
	// A log too large for the result is streamed.
	if got := logs(t, c, j.ID); got != string(input) {
		t.Fatalf("streamed log of %d bytes, want %d", len(got), len(input))
	}
}

// A short run's log comes in its signed result, not over a stream; a
// client following the log from the start gets it when the job ends.
func TestShortRunLogComesWithItsResult(t *testing.T) {
	_, c := execNet(t, "noop")
	// Long enough that a poll on a busy machine sees it running.
	j, err := c.SubmitJob(context.Background(), noopJob("interactive", "2s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{j.ID}, "running", deadline)
	if got := logs(t, c, j.ID); got != "noop: done after 2s\n" {
		t.Fatalf("followed log %q", got)
	}
	waitJobs(t, c, []string{j.ID}, "succeeded", deadline)
	if got := logs(t, c, j.ID); got != "noop: done after 2s\n" {
		t.Fatalf("log after the end %q", got)
	}
}

func TestWasmJobFailures(t *testing.T) {
	_, c := execNet(t, "wasm")
	ctx := context.Background()
	over := wasmJob("sample", "spin")
	over.MaxDuration = "1s"
	oom := wasmJob("sample", "alloc", "512")
	oom.Resources.MemoryMiB = 64
	cases := []struct {
		name string
		req  api.JobRequest
		want string
	}{
		{"sandboxed file", wasmJob("sample", "readfile", "/etc/passwd"), ""},
		{"max_duration", over, executor.ReasonTimeout},
		{"memory", oom, executor.ReasonOOM},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j, err := c.SubmitJob(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			done := waitJobs(t, c, []string{j.ID}, "failed", time.Minute)[j.ID]
			if !strings.Contains(done.Error, tc.want) || (tc.want == "" && done.ExitCode == 0) {
				t.Fatalf("error %q exit %d, want %q", done.Error, done.ExitCode, tc.want)
			}
		})
	}
}

func TestProcessJobRefusedUnlessAllowed(t *testing.T) {
	_, c := execNet(t, "wasm")
	ctx := context.Background()
	req := api.JobRequest{
		Executor: "process", Command: []string{"/bin/sh", "-c", "echo ran on the host"}, Tier: "batch",
		MaxPrice: 0.01, Resources: api.Resources{GPUs: 1}, MaxDuration: "10s", Deadline: "3s",
	}
	j, err := c.SubmitJob(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "expired", time.Minute)[j.ID]
	if len(done.Declines) == 0 || !strings.Contains(done.Declines[0].Reason, "executor") {
		t.Fatalf("declines %+v, want the provider to refuse the executor", done.Declines)
	}
}

// sampleImage builds the sample job program for Linux, statically, and
// wraps it in a FROM scratch image named name, with a tag of its own
// (other checkouts' tests may share the engine); it returns name:tag.
func sampleImage(t *testing.T, name string) string {
	tag := fmt.Sprintf("%s:%d-%d", name, os.Getpid(), time.Now().UnixNano())
	t.Helper()
	c, err := client.New(client.FromEnv)
	if err == nil {
		_, err = c.Ping(context.Background(), client.PingOptions{})
	}
	if err != nil {
		if os.Getenv("MIRA_REQUIRE_DOCKER") == "1" {
			t.Fatalf("docker engine: %v", err)
		}
		t.Skipf("no docker engine: %v", err)
	}
	defer c.Close()
	bin := filepath.Join(t.TempDir(), "job")
	cmd := exec.Command("go", "build", "-tags", "mirasample", "-trimpath", "-o", bin, "./executor/sample")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sample: %v\n%s", err, out)
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := executor.BuildScratchImage(context.Background(), c, tag, exe); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ImageRemove(context.Background(), tag, client.ImageRemoveOptions{Force: true}) })
	return tag
}

func TestDockerJobEndToEnd(t *testing.T) {
	image := sampleImage(t, "mira-node-test-job")
	tn := startTestnet(t, 2, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = []string{"docker"}
		cfg.Provider.DockerImages = []string{image}
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	j, err := c.SubmitJob(context.Background(), api.JobRequest{
		Executor: "docker", Image: image, Args: []string{"write", "/work/out/answer.txt", "hello from a container"},
		Tier: "interactive", MaxPrice: 0.01, Resources: api.Resources{GPUs: 1, MemoryMiB: 64},
		MaxDuration: "30s", Deadline: "2m",
	})
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if got := string(result(t, c, done)); got != "hello from a container" {
		t.Fatalf("result %q", got)
	}
	if files := outputs(t, c, done); len(files) != 1 || files["answer.txt"] != "hello from a container" {
		t.Fatalf("outputs %q, want answer.txt", files)
	}
	if done.Payment == nil || done.Payment.State != "paid" {
		t.Fatalf("payment %+v", done.Payment)
	}
}

func TestProcessJobEndToEnd(t *testing.T) {
	_, c := execNet(t, "process")
	j, err := c.SubmitJob(context.Background(), api.JobRequest{
		// Its outputs: a file, and a link to a host file that must not
		// come back.
		Executor: "process", Command: []string{"/bin/sh", "-c", "echo ran as $WHO in $(basename $PWD); echo ok > out/status; ln -s /etc/passwd out/passwd"},
		Env: map[string]string{"WHO": "a job"}, Tier: "batch", MaxPrice: 0.01,
		Resources: api.Resources{GPUs: 1}, MaxDuration: "30s", Deadline: "2m",
	})
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if got := string(result(t, c, done)); got != "ran as a job in job\n" {
		t.Fatalf("result %q", got)
	}
	if files := outputs(t, c, done); len(files) != 1 || files["status"] != "ok\n" {
		t.Fatalf("outputs %q, want status alone", files)
	}
}

// askBlob asks p for a blob over the blob protocol from n's host and
// returns the answer's status.
func askBlob(t *testing.T, n *node.Node, p peer.ID, id string) byte {
	t.Helper()
	c, _, err := protocol.ParseBlobID(id)
	if err != nil {
		t.Fatal(err)
	}
	st, err := n.Host().NewStream(context.Background(), p, libp2pproto.ID(protocol.BlobProtocol("testnet")))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write(protocol.Frame(protocol.BlobRequest{ID: c}.Encode()))
	st.CloseWrite()
	h, err := protocol.ReadBlobHeader(bufio.NewReader(st))
	if err != nil {
		t.Fatal(err)
	}
	return h.Status
}

func TestBlobsAreSharedOnlyWithTheJob(t *testing.T) {
	tn := startTestnet(t, 3, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = []string{"wasm"}
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	// Larger than a result carried inline: the requester fetches it.
	private := strings.Repeat("private input\n", 3<<10)
	in, err := c.PutBlob(context.Background(), strings.NewReader(private))
	if err != nil {
		t.Fatal(err)
	}
	req := wasmJob("sample", "readfile", "/inputs/"+in.ID)
	req.Inputs = []string{in.ID}
	j, err := c.SubmitJob(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if got := string(result(t, c, done)); got != private {
		t.Fatalf("result of %d bytes, want %d", len(got), len(private))
	}
	outsider, requester, provider := tn.Node(2), tn.Node(0), tn.Node(1)
	if s := askBlob(t, outsider, provider.ID(), done.ResultID); s != protocol.BlobRefused {
		t.Fatalf("an outsider asking the provider for the result got status %d", s)
	}
	if s := askBlob(t, outsider, requester.ID(), in.ID); s != protocol.BlobRefused {
		t.Fatalf("an outsider asking the requester for the input got status %d", s)
	}
	if s := askBlob(t, requester, provider.ID(), done.ResultID); s != protocol.BlobOK {
		t.Fatalf("the requester asking for its result got status %d", s)
	}
	// A job's outputs likewise.
	wj, err := c.SubmitJob(context.Background(), wasmJob("sample", "write", "/out/secret.txt", "private output"))
	if err != nil {
		t.Fatal(err)
	}
	wrote := waitJobs(t, c, []string{wj.ID}, "succeeded", time.Minute)[wj.ID]
	if s := askBlob(t, outsider, provider.ID(), wrote.OutputsID); s != protocol.BlobRefused {
		t.Fatalf("an outsider asking the provider for the outputs got status %d", s)
	}
	if s := askBlob(t, requester, provider.ID(), wrote.OutputsID); s != protocol.BlobOK {
		t.Fatalf("the requester asking for its outputs got status %d", s)
	}
	// The provider still knows whose result it is after a restart.
	if err := tn.Stop(1); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	provider = tn.Node(1)
	// The provider came back on a new port: the others can ask it once
	// they are connected again (before that they may dial the old address).
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		for _, n := range []*node.Node{requester, outsider} {
			if n.Host().Network().Connectedness(provider.ID()) != network.Connected {
				return fmt.Errorf("%s is not connected to the restarted provider", n.ID())
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if s := askBlob(t, requester, provider.ID(), done.ResultID); s != protocol.BlobOK {
		t.Fatalf("after the provider's restart, the requester asking for its result got status %d", s)
	}
	if s := askBlob(t, outsider, provider.ID(), done.ResultID); s != protocol.BlobRefused {
		t.Fatalf("after the provider's restart, an outsider asking for the result got status %d", s)
	}
}
