package executor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/mira-market/mira/protocol/pb"
)

// testImage is the image the docker tests build: the sample program,
// static, alone in a FROM scratch image. Its tag is this test binary's
// own: test binaries of other checkouts may share the engine, each
// building its own sample and removing its image at the end.
var testImage = fmt.Sprintf("mira-test-job:%d-%s", os.Getpid(), hex.EncodeToString(binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))))

// dockerFixture is the engine and the test image, set up once per test
// binary; TestMain removes the image at the end.
type dockerFixture struct {
	c       *client.Client
	skip    string // why docker tests cannot run
	err     error  // a failure to build the image
	built   bool
	buildMu sync.Mutex
}

var testDockerFixture = sync.OnceValue(func() *dockerFixture {
	f := &dockerFixture{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(client.FromEnv)
	if err == nil {
		_, err = c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	}
	if err != nil {
		f.skip = fmt.Sprintf("docker engine not reachable: %v", err)
		return f
	}
	f.c = c
	return f
})

// builtFixture is set once the test image exists, for TestMain to remove.
var builtFixture *dockerFixture

// dockerOrSkip returns the engine client with the test image built, or
// skips the test (fails it with MIRA_REQUIRE_DOCKER=1) where there is no
// engine.
func dockerOrSkip(t testing.TB) *client.Client {
	t.Helper()
	f := testDockerFixture()
	if f.skip != "" {
		if os.Getenv("MIRA_REQUIRE_DOCKER") == "1" {
			t.Fatal(f.skip)
		}
		t.Skip(f.skip)
	}
	f.buildMu.Lock()
	defer f.buildMu.Unlock()
	if !f.built && f.err == nil {
		f.err = buildTestImage(f.c)
		f.built = f.err == nil
		if f.built {
			builtFixture = f
		}
	}
	if f.err != nil {
		t.Fatal(f.err)
	}
	return f.c
}

// buildTestImage builds testImage around the static sample program
// through the Engine API.
func buildTestImage(c *client.Client) error {
	bin, err := testSampleBin()
	if err != nil {
		return err
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return BuildScratchImage(ctx, c, testImage, exe)
}

// newTestDocker returns a docker executor with a unique owner, that allows
// the test image unless opts name the images (an empty, non-nil list:
// none).
func newTestDocker(t testing.TB, opts DockerOptions) *Docker {
	t.Helper()
	dockerOrSkip(t)
	opts.Owner = "test-" + randHex(t, 4)
	if opts.Images == nil {
		opts.Images = []string{testImage}
	}
	d, err := NewDocker(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Cleanup(context.Background())
		d.Close()
	})
	return d
}

func randHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// containersOf lists the containers, running or not, labeled with jobID.
func containersOf(t testing.TB, c *client.Client, jobID string) []container.Summary {
	t.Helper()
	l, err := c.ContainerList(context.Background(), client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("label", LabelJob+"="+jobID)})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// cancelOnOutput is a writer that cancels a context at its first write.
type cancelOnOutput struct {
	syncBuffer
	once   sync.Once
	cancel context.CancelFunc
}

func (w *cancelOnOutput) Write(p []byte) (int, error) {
	w.once.Do(w.cancel)
	return w.syncBuffer.Write(p)
}

func TestDocker(t *testing.T) {
	t.Parallel()
	d := newTestDocker(t, DockerOptions{})
	cases := []runCase{
		{
			name: "echo",
			args: []string{"echo", "hello", "docker"},
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantOK(t, r)
				if stdout != "hello docker\n" {
					t.Errorf("stdout %q", stdout)
				}
				if r.FirstOutput <= 0 || r.FirstOutput > r.Wall {
					t.Errorf("FirstOutput %v, Wall %v", r.FirstOutput, r.Wall)
				}
			},
		},
		{
			name: "exit code and stderr",
			args: []string{"readfile", "/nonexistent"},
			check: func(t *testing.T, r Result, stdout, stderr, _ string) {
				wantExit(t, r, 1, "")
				if stdout != "" || !strings.Contains(stderr, "no such file") {
					t.Errorf("stdout %q stderr %q", stdout, stderr)
				}
			},
		},
		{
			name: "exit 7",
			args: []string{"exit", "7"},
			check: func(t *testing.T, r Result, _, _, _ string) {
				wantExit(t, r, 7, "")
			},
		},
		{
			name: "write lands in job dir",
			args: []string{"write", "out.txt", "from a container"},
			check: func(t *testing.T, r Result, stdout, _, dir string) {
				wantOK(t, r)
				b, err := os.ReadFile(filepath.Join(dir, "out.txt"))
				if err != nil || string(b) != "from a container" {
					t.Errorf("out.txt on the host: %q, %v", b, err)
				}
			},
		},
		{
			name: "root filesystem is read-only",
			args: []string{"write", "/out.txt", "x"},
			check: func(t *testing.T, r Result, _, stderr, _ string) {
				wantExit(t, r, 1, "")
				if !strings.Contains(stderr, "read-only file system") {
					t.Errorf("stderr %q", stderr)
				}
			},
		},
		{
			name: "env",
			args: []string{"env"},
			env:  map[string]string{"A": "1"},
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantOK(t, r)
				found := false
				for _, kv := range strings.Fields(stdout) {
					k, _, _ := strings.Cut(kv, "=")
					switch k {
					case "A":
						found = kv == "A=1"
					case "PATH", "HOSTNAME", "HOME": // set by the engine
					case "NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES": // no GPU (TestDockerGPUVisibility)
					default:
						t.Errorf("unexpected variable %q", kv)
					}
				}
				if !found {
					t.Errorf("A=1 missing from %q", stdout)
				}
			},
		},
		{
			// Held long enough for a sample of the engine's stats.
			name:   "peak memory",
			args:   []string{"alloc", "48", "1s"},
			memMib: 128,
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantExit(t, r, 0, "")
				if r.PeakMemory < 48<<20 || r.PeakMemory > 128<<20 {
					t.Errorf("PeakMemory = %d, want between 48 and 128 MiB", r.PeakMemory)
				}
			},
		},
		{
			name:   "memory limit",
			args:   []string{"alloc", "256"},
			memMib: 32,
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				if !r.Failed() || r.Reason != ReasonOOM {
					t.Errorf("got %+v, want failed with %q", r, ReasonOOM)
				}
			},
		},
		{
			name:    "max_duration",
			args:    []string{"sleep", "1h"},
			timeout: 2 * time.Second,
			check: func(t *testing.T, r Result, _, _, _ string) {
				wantExit(t, r, -1, ReasonTimeout)
				if r.Wall > 15*time.Second {
					t.Errorf("took %v", r.Wall)
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, stdout, stderr, dir := runJob(t, d, &pb.JobSpec{Executor: "docker", Image: testImage}, nil, c)
			c.check(t, r, stdout, stderr, dir)
			// Whatever the ending, no container is left.
			id := "t" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
			if left := containersOf(t, d.Client(), id); len(left) > 0 {
				t.Errorf("%d container(s) left after the run", len(left))
			}
		})
	}
}

// TestDockerConfig checks the container configuration a job gets, GPUs
// included (no GPU is needed: nothing is created).
func TestDockerConfig(t *testing.T) {
	t.Parallel()
	spec := &pb.JobSpec{
		Image:     "img",
		Command:   []string{"/bin/train"},
		Args:      []string{"--epochs", "3"},
		Env:       []*pb.EnvVar{{Name: "A", Value: "1"}},
		Resources: &pb.Resources{MemoryMib: 512, CpuMillis: 1500},
	}
	cases := []struct {
		name  string
		opts  DockerOptions
		job   *Job
		check func(t *testing.T, cfg *container.Config, hc *container.HostConfig)
	}{
		{
			name: "sandbox",
			job:  &Job{ID: "j1", Spec: spec, GPUs: []string{"0", "2"}},
			check: func(t *testing.T, cfg *container.Config, hc *container.HostConfig) {
				if !slices.Equal(cfg.Entrypoint, []string{"/bin/train"}) || !slices.Equal(cfg.Cmd, []string{"--epochs", "3"}) {
					t.Errorf("entrypoint %q cmd %q", cfg.Entrypoint, cfg.Cmd)
				}
				if !slices.Equal(cfg.Env, []string{"A=1", "NVIDIA_VISIBLE_DEVICES=0,2"}) || cfg.WorkingDir != "/work" || cfg.Labels[LabelJob] != "j1" {
					t.Errorf("env %q workdir %q labels %v", cfg.Env, cfg.WorkingDir, cfg.Labels)
				}
				if len(hc.Mounts) != 1 || hc.Mounts[0].Source != "/jobs/j1" || hc.Mounts[0].Target != "/work" || hc.Mounts[0].ReadOnly {
					t.Errorf("mounts %+v", hc.Mounts)
				}
				if len(hc.Binds) > 0 || len(hc.Tmpfs) > 0 || len(hc.VolumesFrom) > 0 {
					t.Errorf("other mounts: %v %v %v", hc.Binds, hc.Tmpfs, hc.VolumesFrom)
				}
				if hc.NetworkMode != "none" || hc.Privileged || !hc.ReadonlyRootfs || !slices.Equal(hc.CapDrop, []string{"ALL"}) || len(hc.CapAdd) > 0 ||
					!slices.Equal(hc.SecurityOpt, []string{"no-new-privileges"}) {
					t.Errorf("sandbox: %+v", hc)
				}
				if hc.Memory != 512<<20 || hc.MemorySwap != 512<<20 || hc.NanoCPUs != 1_500_000_000 || hc.PidsLimit == nil || *hc.PidsLimit != 512 {
					t.Errorf("resources %+v", hc.Resources)
				}
				want := []container.DeviceRequest{{Driver: "nvidia", DeviceIDs: []string{"0", "2"}, Capabilities: [][]string{{"gpu"}}}}
				if fmt.Sprint(hc.DeviceRequests) != fmt.Sprint(want) {
					t.Errorf("device requests %+v, want %+v", hc.DeviceRequests, want)
				}
			},
		},
		{
			name: "network allowed, no GPU, no command",
			opts: DockerOptions{AllowNetwork: true, Network: "jobs", Owner: "node1"},
			job:  &Job{ID: "j2", Spec: &pb.JobSpec{Image: "img", Args: []string{"x"}}},
			check: func(t *testing.T, cfg *container.Config, hc *container.HostConfig) {
				if hc.NetworkMode != "jobs" || len(hc.DeviceRequests) > 0 || cfg.Entrypoint != nil || !slices.Equal(cfg.Cmd, []string{"x"}) {
					t.Errorf("network %q devices %v entrypoint %q cmd %q", hc.NetworkMode, hc.DeviceRequests, cfg.Entrypoint, cfg.Cmd)
				}
				if hc.Memory != 1024<<20 || hc.NanoCPUs != 16e9 || cfg.Labels[LabelOwner] != "node1" {
					t.Errorf("default memory %d, CPUs %d, labels %v", hc.Memory, hc.NanoCPUs, cfg.Labels)
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &Docker{opts: c.opts}
			d.opts.setDefaults(64<<30, 16)
			mem, cpu, err := d.limits(c.job.Spec)
			if err != nil {
				t.Fatal(err)
			}
			cfg, hc := d.containerConfig(c.job, runConfig{dir: "/jobs/" + c.job.ID, image: "sha256:id", memory: mem, nanoCPUs: cpu})
			if cfg.Image != "sha256:id" || cfg.User != DefaultDockerUser {
				t.Errorf("image %q user %q: want the image's ID and %s", cfg.Image, cfg.User, DefaultDockerUser)
			}
			c.check(t, cfg, hc)
		})
	}
}

func TestDockerCancel(t *testing.T) {
	t.Parallel()
	d := newTestDocker(t, DockerOptions{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// serve prints a line once running, then serves forever: the writer
	// cancels the run at that line, so the cancel comes mid-run.
	out := &cancelOnOutput{cancel: cancel}
	jobID := "cancel-" + randHex(t, 4)
	job := &Job{ID: jobID, Spec: &pb.JobSpec{Executor: "docker", Image: testImage, Args: []string{"serve", "8080"}}, Dir: t.TempDir(), Stdout: out, Stderr: &syncBuffer{}}
	r, err := d.Run(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	wantExit(t, r, -1, ReasonCancelled)
	if left := containersOf(t, d.Client(), jobID); len(left) > 0 {
		t.Fatalf("%d container(s) labeled %s=%s left after cancel", len(left), LabelJob, jobID)
	}
}

func TestDockerMissingImage(t *testing.T) {
	t.Parallel()
	d := newTestDocker(t, DockerOptions{Images: []string{"mira-no-such-image"}})
	job := &Job{ID: "missing", Spec: &pb.JobSpec{Executor: "docker", Image: "mira-no-such-image:" + randHex(t, 4)}, Dir: t.TempDir(), Stdout: io.Discard, Stderr: io.Discard}
	if _, err := d.Run(t.Context(), job); !errors.Is(err, ErrNoImage) {
		t.Fatalf("err = %v, want ErrNoImage", err)
	}
}

func TestDockerCleanup(t *testing.T) {
	t.Parallel()
	d := newTestDocker(t, DockerOptions{})
	other := newTestDocker(t, DockerOptions{})
	c := d.Client()
	ctx := t.Context()
	// A leftover of d and one of another owner.
	for _, e := range []*Docker{d, other} {
		_, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{
			Config:     &container.Config{Image: testImage, Cmd: []string{"sleep", "1h"}, Labels: e.labels("leftover")},
			HostConfig: &container.HostConfig{NetworkMode: "none"},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	n, err := d.Cleanup(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Cleanup = %d, %v; want 1, nil", n, err)
	}
	if left := containersOf(t, c, "leftover"); len(left) != 1 || left[0].Labels[LabelOwner] != other.opts.Owner {
		t.Fatalf("after cleanup: %d leftover(s), want only the other owner's", len(left))
	}
}

// TestDockerNetwork runs a server container on a network of its own, then
// jobs that dial it: without network access they must fail, with it (on
// that network) succeed.
func TestDockerNetwork(t *testing.T) {
	t.Parallel()
	c := dockerOrSkip(t)
	ctx := t.Context()
	netName := "mira-test-" + randHex(t, 4)
	if _, err := c.NetworkCreate(ctx, netName, client.NetworkCreateOptions{Driver: "bridge"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.NetworkRemove(context.Background(), netName, client.NetworkRemoveOptions{}) })

	srv, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: testImage, Cmd: []string{"serve", "8080"}, Labels: map[string]string{"mira.test": t.Name()}},
		HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(netName)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.ContainerRemove(context.Background(), srv.ID, client.ContainerRemoveOptions{Force: true})
	})
	if _, err := c.ContainerStart(ctx, srv.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, c, srv.ID, "listening on", 30*time.Second)
	in, err := c.ContainerInspect(ctx, srv.ID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ep := in.Container.NetworkSettings.Networks[netName]
	if ep == nil || !ep.IPAddress.IsValid() {
		t.Fatalf("server has no address on %s", netName)
	}
	addr := ep.IPAddress.String() + ":8080"

	cases := []struct {
		name    string
		opts    DockerOptions
		args    []string
		wantOK  bool
		wantOut string
	}{
		{"no network", DockerOptions{}, []string{"dial", addr}, false, ""},
		{"network allowed", DockerOptions{AllowNetwork: true, Network: netName}, []string{"dial", addr, "10s"}, true, "hello from sample"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDocker(t, tc.opts)
			r, stdout, stderr, _ := runJob(t, d, &pb.JobSpec{Executor: "docker", Image: testImage}, nil, runCase{args: tc.args})
			if r.Failed() == tc.wantOK || !strings.Contains(stdout, tc.wantOut) {
				t.Fatalf("dial %s: %+v stdout %q stderr %q", addr, r, stdout, stderr)
			}
		})
	}
}

// waitForLog polls a container's logs until a line contains want.
func waitForLog(t *testing.T, c *client.Client, id, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		logs, err := c.ContainerLogs(t.Context(), id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		stdcopy.StdCopy(&out, &errOut, logs)
		logs.Close()
		sc := bufio.NewScanner(&out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the logs of %s after %v: %q %q", want, id, timeout, out.String(), errOut.String())
		}
		time.Sleep(delay)
	}
}
