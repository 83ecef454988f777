package executor

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/mira-market/mira/protocol/pb"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sampleBinDir != "" {
		os.RemoveAll(sampleBinDir)
	}
	// The fixture is only ever set up by tests; look without setting up.
	if f := builtFixture; f != nil && os.Getenv("MIRA_KEEP_TEST_IMAGE") == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		f.c.ImageRemove(ctx, testImage, client.ImageRemoveOptions{Force: true, PruneChildren: true})
		cancel()
	}
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader in different
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// testSampleBin builds the sample program for linux, static, once per
// test binary; TestMain removes it.
var testSampleBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "mira-test-sample")
	if err != nil {
		return "", err
	}
	sampleBinDir = dir
	bin := filepath.Join(dir, "job")
	cmd := exec.Command("go", "build", "-tags", "mirasample", "-trimpath", "-ldflags=-s", "-o", bin, "./sample")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build sample: %v\n%s", err, out)
	}
	return bin, nil
})

// sampleBinDir is where testSampleBin built, for TestMain to remove.
var sampleBinDir string

func sampleBin(t testing.TB) string {
	t.Helper()
	bin, err := testSampleBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// runCase is one run of a job in a table-driven executor test.
type runCase struct {
	name    string
	args    []string
	env     map[string]string
	memMib  uint32
	disk    int64         // job.DiskQuota
	timeout time.Duration // ctx deadline; none when zero
	cancel  time.Duration // cancel ctx after this long; never when zero
	setup   func(t *testing.T, dir string) []string
	check   func(t *testing.T, r Result, stdout, stderr, dir string)
}

// runJob runs c on e with a fresh job directory and returns what the checks
// need.
func runJob(t *testing.T, e Executor, spec *pb.JobSpec, module []byte, c runCase) (Result, string, string, string) {
	t.Helper()
	dir := t.TempDir()
	args := c.args
	if c.setup != nil {
		if extra := c.setup(t, dir); extra != nil {
			args = extra
		}
	}
	spec.Args = args
	for _, k := range slices.Sorted(maps.Keys(c.env)) {
		spec.Env = append(spec.Env, &pb.EnvVar{Name: k, Value: c.env[k]})
	}
	if c.memMib > 0 {
		spec.Resources = &pb.Resources{MemoryMib: c.memMib}
	}
	ctx := t.Context()
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if c.cancel > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		time.AfterFunc(c.cancel, cancel)
	}
	var stdout, stderr syncBuffer
	job := &Job{ID: "t" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"), Spec: spec, Module: module, Dir: dir, DiskQuota: c.disk, Stdout: &stdout, Stderr: &stderr}
	r, err := e.Run(ctx, job)
	if err != nil {
		t.Fatalf("Run: %v (stderr %q)", err, stderr.String())
	}
	t.Logf("result %+v stdout %q stderr %q", r, trunc(stdout.String()), trunc(stderr.String()))
	return r, stdout.String(), stderr.String(), dir
}

func trunc(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

func wantOK(t *testing.T, r Result) {
	t.Helper()
	if r.Failed() {
		t.Fatalf("run failed: %+v", r)
	}
}

func wantExit(t *testing.T, r Result, code int32, reason string) {
	t.Helper()
	if r.ExitCode != code || r.Reason != reason {
		t.Fatalf("got exit %d reason %q, want exit %d reason %q", r.ExitCode, r.Reason, code, reason)
	}
}
