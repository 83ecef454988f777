package executor

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/mira-market/mira/protocol/pb"
)

// runningContainer waits until the container of job jobID runs and
// returns what the engine says of it.
func runningContainer(t *testing.T, c *client.Client, jobID string) client.ContainerInspectResult {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		for _, s := range containersOf(t, c, jobID) {
			in, err := c.ContainerInspect(t.Context(), s.ID, client.ContainerInspectOptions{})
			if err == nil && in.Container.State != nil && in.Container.State.Running {
				return in
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no running container for job %s", jobID)
		}
		time.Sleep(delay)
	}
}

// startJob runs job on e in the background; stop cancels it and returns
// how it ended, ended is closed once Run has returned.
func startJob(t *testing.T, e Executor, job *Job) (stop func() (Result, error), ended <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	var (
		r   Result
		err error
	)
	go func() {
		defer close(done)
		r, err = e.Run(ctx, job)
	}()
	return func() (Result, error) {
		cancel()
		<-done
		return r, err
	}, done
}

func newJob(t *testing.T, spec *pb.JobSpec, module []byte) (*Job, *syncBuffer) {
	var stdout syncBuffer
	return &Job{ID: "limits-" + randHex(t, 4), Spec: spec, Module: module, Dir: t.TempDir(), Stdout: &stdout, Stderr: &syncBuffer{}}, &stdout
}

// TestDockerLimits: a job gets the provider's limits whatever it asks.
// Each case runs the sample's sleep (or id) in a container and inspects
// what the engine was told.
func TestDockerLimits(t *testing.T) {
	t.Parallel()
	opts := DockerOptions{MaxMemoryMib: 512, MaxCPUMillis: 1500, Images: []string{testImage}}
	d := newTestDocker(t, opts)

	t.Run("1 TiB of memory is refused", func(t *testing.T) {
		t.Parallel()
		job, _ := newJob(t, &pb.JobSpec{Executor: "docker", Image: testImage, Args: []string{"sleep", "1h"},
			Resources: &pb.Resources{MemoryMib: 1 << 20}}, nil)
		stop, ended := startJob(t, d, job)
		defer stop()
		// Either Run refuses at once, or a container runs: see how.
		for running := true; running; {
			select {
			case <-ended:
				running = false
			case <-time.After(20 * time.Millisecond):
			}
			for _, s := range containersOf(t, d.Client(), job.ID) {
				if in, err := d.Client().ContainerInspect(t.Context(), s.ID, client.ContainerInspectOptions{}); err == nil {
					t.Fatalf("a container was created with Memory = %d", in.Container.HostConfig.Memory)
				}
			}
		}
		r, err := stop()
		if !errors.Is(err, ErrOverLimit) {
			t.Fatalf("Run = %+v, %v; want ErrOverLimit", r, err)
		}
	})

	t.Run("a job that asks nothing gets the defaults", func(t *testing.T) {
		t.Parallel()
		job, _ := newJob(t, &pb.JobSpec{Executor: "docker", Image: testImage, Args: []string{"sleep", "1h"}}, nil)
		job.DiskQuota = 64 << 20
		stop, _ := startJob(t, d, job)
		in := runningContainer(t, d.Client(), job.ID)
		r, err := stop()
		if err != nil || r.Reason != ReasonCancelled {
			t.Fatalf("Run = %+v, %v", r, err)
		}
		hc := in.Container.HostConfig
		if hc.Memory != 512<<20 || hc.MemorySwap != 512<<20 || hc.NanoCPUs != 1_500_000_000 {
			t.Errorf("Memory %d MemorySwap %d NanoCPUs %d; want 512 MiB, no swap, 1.5 CPUs", hc.Memory, hc.MemorySwap, hc.NanoCPUs)
		}
		if got := in.Container.Config.User; got != "65534:65534" {
			t.Errorf("User %q, want 65534:65534", got)
		}
		ulimits := map[string]int64{}
		for _, u := range hc.Ulimits {
			ulimits[u.Name] = u.Hard
		}
		if len(ulimits) != 2 || ulimits["fsize"] != 64<<20+1 || ulimits["nofile"] != jobNoFile {
			t.Errorf("Ulimits %+v, want fsize %d and nofile %d", hc.Ulimits, 64<<20+1, jobNoFile)
		}
	})

	t.Run("CPU over the limit is refused", func(t *testing.T) {
		t.Parallel()
		job, _ := newJob(t, &pb.JobSpec{Executor: "docker", Image: testImage, Args: []string{"echo"},
			Resources: &pb.Resources{CpuMillis: 64000}}, nil)
		if r, err := d.Run(t.Context(), job); !errors.Is(err, ErrOverLimit) {
			t.Fatalf("Run = %+v, %v; want ErrOverLimit", r, err)
		}
	})

	t.Run("runs as nobody, and can write its dir", func(t *testing.T) {
		t.Parallel()
		r, stdout, stderr, dir := runJob(t, d, &pb.JobSpec{Executor: "docker", Image: testImage}, nil, runCase{
			setup: func(t *testing.T, dir string) []string { return []string{"id"} },
		})
		wantOK(t, r)
		if stdout != "65534:65534\n" {
			t.Errorf("id = %q (stderr %q), want 65534:65534", stdout, stderr)
		}
		r, stdout, stderr, _ = runJob(t, d, &pb.JobSpec{Executor: "docker", Image: testImage}, nil, runCase{
			args: []string{"write", "x", "as nobody"},
		})
		if r.Failed() || stdout != "as nobody" {
			t.Errorf("write as nobody: %+v stdout %q stderr %q (dir %s)", r, stdout, stderr, dir)
		}
	})

	t.Run("an allowed name runs no image whose ID it prefixes", func(t *testing.T) {
		t.Parallel()
		img, err := d.Client().ImageInspect(t.Context(), testImage)
		if err != nil {
			t.Fatal(err)
		}
		prefix := strings.TrimPrefix(img.ID, "sha256:")[:12]
		e := newTestDocker(t, DockerOptions{Images: []string{prefix}})
		job, _ := newJob(t, &pb.JobSpec{Executor: "docker", Image: prefix, Args: []string{"echo", "ran"}}, nil)
		if r, err := e.Run(t.Context(), job); !errors.Is(err, ErrNoImage) {
			t.Fatalf("Run = %+v, %v; want ErrNoImage", r, err)
		}
	})

	t.Run("an image not on the allowlist is refused", func(t *testing.T) {
		t.Parallel()
		other := newTestDocker(t, DockerOptions{Images: []string{"mira-other-image"}})
		none := newTestDocker(t, DockerOptions{Images: []string{}})
		for _, e := range []*Docker{other, none} {
			job, _ := newJob(t, &pb.JobSpec{Executor: "docker", Image: testImage, Args: []string{"echo", "ran"}}, nil)
			r, err := e.Run(t.Context(), job)
			if !errors.Is(err, ErrImageNotAllowed) {
				t.Errorf("allowlist %q: Run = %+v, %v; want ErrImageNotAllowed", e.opts.Images, r, err)
			}
			if left := containersOf(t, e.Client(), job.ID); len(left) > 0 {
				t.Errorf("allowlist %q: a container was created", e.opts.Images)
			}
		}
	})
}

// TestWasmMemoryMustFitTheHost: a wasm job's memory is reserved when it
// starts (touched only as it grows), so a job asking more than the host
// has free, beside what running jobs may still grow into, is refused.
func TestWasmMemoryMustFitTheHost(t *testing.T) {
	t.Parallel()
	const free = 200 << 20
	w, err := NewWasm(WasmOptions{MemAvailable: func() (uint64, error) { return free, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	_, mod := sharedWasm(t)

	t.Run("more than the host has free", func(t *testing.T) {
		job, stdout := newJob(t, &pb.JobSpec{Executor: "wasm", Args: []string{"alloc", "100"}, Resources: &pb.Resources{MemoryMib: 256}}, mod)
		r, err := w.Run(t.Context(), job)
		if !errors.Is(err, ErrNoMemory) {
			t.Fatalf("Run = %+v, %v (stdout %q); want ErrNoMemory", r, err, stdout.String())
		}
	})
	t.Run("what a running job may still grow into is not free", func(t *testing.T) {
		first, out := newJob(t, &pb.JobSpec{Executor: "wasm", Args: []string{"alloc", "1", "1h"}, Resources: &pb.Resources{MemoryMib: 150}}, mod)
		stop, _ := startJob(t, w, first)
		defer stop()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(out.String(), "allocated") {
			if time.Now().After(deadline) {
				t.Fatal("the first job never ran")
			}
			time.Sleep(10 * time.Millisecond)
		}
		second, _ := newJob(t, &pb.JobSpec{Executor: "wasm", Args: []string{"echo", "ran"}, Resources: &pb.Resources{MemoryMib: 150}}, mod)
		if r, err := w.Run(t.Context(), second); !errors.Is(err, ErrNoMemory) {
			t.Fatalf("second job: Run = %+v, %v; want ErrNoMemory", r, err)
		}
		if r, err := stop(); err != nil || r.Reason != ReasonCancelled {
			t.Fatalf("first job: %+v, %v", r, err)
		}
		// Its memory is free again.
		third, stdout := newJob(t, &pb.JobSpec{Executor: "wasm", Args: []string{"echo", "ran"}, Resources: &pb.Resources{MemoryMib: 150}}, mod)
		if r, err := w.Run(t.Context(), third); err != nil || r.Failed() {
			t.Fatalf("third job: Run = %+v, %v (stdout %q)", r, err, stdout.String())
		}
	})
}

// TestProcessMemoryLimits: a process job gets RLIMIT_AS whether it asks
// or not, and one asking more than the provider allows is refused.
func TestProcessMemoryLimits(t *testing.T) {
	t.Parallel()
	p := NewProcess(ProcessOptions{MaxMemoryMib: 64})
	job, _ := newJob(t, &pb.JobSpec{Executor: "process", Command: []string{"true"}, Resources: &pb.Resources{MemoryMib: 1 << 20}}, nil)
	if r, err := p.Run(t.Context(), job); !errors.Is(err, ErrOverLimit) {
		t.Fatalf("1 TiB: Run = %+v, %v; want ErrOverLimit", r, err)
	}
	// Without memory_mib: the provider's maximum. The limit is set just
	// after the start: the shell waits until it has it, or max_duration.
	job, stdout := newJob(t, &pb.JobSpec{Executor: "process", Command: []string{"sh", "-c",
		fmt.Sprintf(`until grep -q "Max address space *%d *%d" /proc/$$/limits; do :; done; echo limited`, 64<<20, 64<<20)}}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if r, err := p.Run(ctx, job); err != nil || r.Failed() || stdout.String() != "limited\n" {
		t.Fatalf("Run = %+v, %v (stdout %q); want the job limited to 64 MiB", r, err, stdout.String())
	}
	// What each kind of job gets.
	cases := []struct {
		name   string
		memMib uint32
		gpus   []string
		want   uint64
		wantOK bool
	}{
		{"asks nothing", 0, nil, 64 << 20, true},
		{"asks 32 MiB", 32, nil, 32 << 20, true},
		// CUDA's cuInit fails under an address-space limit near the
		// host's memory: a GPU job that asks none gets none.
		{"GPU job asks nothing", 0, []string{"0"}, 0, false},
		{"GPU job asks 32 MiB", 32, []string{"0"}, 32 << 20, true},
	}
	for _, c := range cases {
		job := &Job{Spec: &pb.JobSpec{Resources: &pb.Resources{MemoryMib: c.memMib}}, GPUs: c.gpus}
		if got, ok := p.addressSpace(job); got != c.want || ok != c.wantOK {
			t.Errorf("%s: addressSpace = %d, %v; want %d, %v", c.name, got, ok, c.want, c.wantOK)
		}
	}
}

func TestNamesImage(t *testing.T) {
	t.Parallel()
	const dgst = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
	tags := []string{"mira-job:latest", "registry.lab:5000/team/train:v3"}
	digests := []string{"mira-job@" + dgst}
	cases := []struct {
		image string
		want  bool
	}{
		{"mira-job", true},
		{"mira-job:latest", true},
		{"docker.io/library/mira-job:latest", true},
		{"mira-job:v2", false},
		{"mira-job@" + dgst, true},
		{"mira-job:v9@" + dgst, true}, // the engine goes by the digest
		{"other@" + dgst, false},
		{"registry.lab:5000/team/train:v3", true},
		{"4f53cda18c2b", false}, // an ID prefix
		{"", false},
	}
	for _, c := range cases {
		if got := namesImage(c.image, tags, digests); got != c.want {
			t.Errorf("namesImage(%q) = %v, want %v", c.image, got, c.want)
		}
	}
}

// TestWasmAdmissionWhenPromisedPassesFree: the host's free memory can
// drop below what running guests were promised (another program took
// it); a new guest must then be refused, whatever it asks, not admitted
// because free - promised wrapped around.
func TestWasmAdmissionWhenPromisedPassesFree(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name               string
		free, running, ask uint64
		admit              bool
	}{
		{"fits beside the running guest", 300 << 20, 150 << 20, 64 << 20, true},
		{"does not fit beside it", 200 << 20, 150 << 20, 64 << 20, false},
		{"promised equals free", 150 << 20, 150 << 20, 1 << 20, false},
		{"promised past free", 100 << 20, 150 << 20, 64 << 20, false},
		{"promised far past free", 1 << 20, 4 << 30, 1 << 20, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := NewWasm(WasmOptions{MemAvailable: func() (uint64, error) { return c.free, nil }})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close(context.Background())
			w.running[&jobMemory{limit: c.running}] = struct{}{}
			err = w.admit(&jobMemory{limit: c.ask})
			if got := err == nil; got != c.admit {
				t.Fatalf("admit(%d MiB) with %d MiB free and %d MiB promised: %v; want admitted %v",
					c.ask>>20, c.free>>20, c.running>>20, err, c.admit)
			}
			if err != nil && !errors.Is(err, ErrNoMemory) {
				t.Fatalf("refused with %v, want ErrNoMemory", err)
			}
		})
	}
}

// TestProcessOpenFilesLimited: a file unlinked while open escapes the
// disk watcher's walk, so a process job with a disk quota may keep only
// jobNoFile files open (each within RLIMIT_FSIZE). The limit is set just
// after the start: the shell waits until it has it, or max_duration.
func TestProcessOpenFilesLimited(t *testing.T) {
	t.Parallel()
	p := NewProcess(ProcessOptions{})
	job, stdout := newJob(t, &pb.JobSpec{Executor: "process", Command: []string{"sh", "-c",
		fmt.Sprintf(`until grep -q "Max open files *%d *%d" /proc/$$/limits; do :; done; echo limited`, jobNoFile, jobNoFile)}}, nil)
	job.DiskQuota = 16 << 20
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if r, err := p.Run(ctx, job); err != nil || r.Failed() || stdout.String() != "limited\n" {
		t.Fatalf("Run = %+v, %v (stdout %q); want the job's open files limited to %d", r, err, stdout.String(), jobNoFile)
	}
}

// TestDockerRefusesImageVolumes: an image that declares a VOLUME gets a
// writable anonymous volume there (under the engine's root, on the host),
// past the read-only root and outside the scratch dir the disk quota
// watches. The image here is an allowlisted FROM scratch image whose
// /data, world-writable, is such a volume: its job must not run.
func TestDockerRefusesImageVolumes(t *testing.T) {
	t.Parallel()
	c := dockerOrSkip(t)
	exe, err := os.ReadFile(sampleBin(t))
	if err != nil {
		t.Fatal(err)
	}
	// ADD extracts a tar, keeping its modes: /data is 1777, writable by
	// the container's user.
	var data bytes.Buffer
	tw := tar.NewWriter(&data)
	if err := tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o1777}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	image := "mira-test-volume:" + randHex(t, 8)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	err = buildImage(ctx, c, image, []contextFile{
		{"Dockerfile", 0o644, []byte("FROM scratch\nCOPY job /job\nADD data.tar /\nVOLUME /data\nENTRYPOINT [\"/job\"]\n")},
		{"job", 0o755, exe},
		{"data.tar", 0o644, data.Bytes()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.ImageRemove(context.Background(), image, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	})
	d := newTestDocker(t, DockerOptions{Images: []string{image}})
	job, stdout := newJob(t, &pb.JobSpec{Executor: "docker", Image: image, Args: []string{"write", "/data/escaped", "outside the quota"}}, nil)
	job.DiskQuota = testQuota
	r, err := d.Run(t.Context(), job)
	if !errors.Is(err, ErrImageVolumes) {
		t.Fatalf("Run = %+v, %v (stdout %q); want ErrImageVolumes", r, err, stdout.String())
	}
	if !strings.Contains(err.Error(), "/data") {
		t.Errorf("error %q does not name the volume", err)
	}
	if left := containersOf(t, c, job.ID); len(left) > 0 {
		t.Errorf("a container was created")
	}
}
