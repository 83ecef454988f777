package executor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/mira-market/mira/protocol/pb"
)

// gpuCase is a job handed some GPUs, whose spec may try to name others,
// and the device lists it must see inside.
type gpuCase struct {
	name string
	gpus []string
	env  []*pb.EnvVar
	want map[string]string // variable → value; "" with absent true: unset
	gone []string          // variables that must not be set
}

// gpuCases: a job sees the devices it was handed, or none, whatever its
// spec sets.
var gpuCases = []gpuCase{
	{name: "no GPU: none visible", want: map[string]string{"CUDA_VISIBLE_DEVICES": NoDevices, "ROCR_VISIBLE_DEVICES": NoDevices}},
	{
		name: "no GPU, the spec names all",
		env:  []*pb.EnvVar{{Name: "CUDA_VISIBLE_DEVICES", Value: "0,1,2,3"}, {Name: "ROCR_VISIBLE_DEVICES", Value: "0,1"}, {Name: "HIP_VISIBLE_DEVICES", Value: "0"}},
		want: map[string]string{"CUDA_VISIBLE_DEVICES": NoDevices, "ROCR_VISIBLE_DEVICES": NoDevices},
		gone: []string{"HIP_VISIBLE_DEVICES"},
	},
	{
		name: "GPU 1, the spec names 0 and 1",
		gpus: []string{"1"},
		env:  []*pb.EnvVar{{Name: "CUDA_VISIBLE_DEVICES", Value: "0,1"}, {Name: "KEEP", Value: "me"}},
		want: map[string]string{"CUDA_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "1", "KEEP": "me"},
	},
	{name: "GPUs 0 and 2", gpus: []string{"0", "2"}, want: map[string]string{"CUDA_VISIBLE_DEVICES": "0,2", "ROCR_VISIBLE_DEVICES": "0,2"}},
}

// envLines parses the output of `sample env`.
func envLines(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

func checkEnv(t *testing.T, got map[string]string, want map[string]string, gone []string) {
	t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("inside the job %s=%q (set: %v), want %q", k, g, ok, v)
		}
	}
	for _, k := range gone {
		if g, ok := got[k]; ok {
			t.Errorf("inside the job %s=%q, want it unset", k, g)
		}
	}
}

// TestProcessGPUVisibility runs a real child (the sample program, which
// prints its environment) and checks the device lists it sees.
func TestProcessGPUVisibility(t *testing.T) {
	t.Parallel()
	p := NewProcess(ProcessOptions{})
	bin := sampleBin(t)
	for _, c := range gpuCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr syncBuffer
			job := &Job{ID: "gpu", Spec: &pb.JobSpec{Executor: "process", Command: []string{bin, "env"}, Env: c.env},
				GPUs: c.gpus, Dir: t.TempDir(), Stdout: &stdout, Stderr: &stderr}
			r, err := p.Run(t.Context(), job)
			if err != nil {
				t.Fatal(err)
			}
			wantOK(t, r)
			checkEnv(t, envLines(stdout.String()), c.want, c.gone)
		})
	}
}

// TestDockerGPUVisibility checks what the engine records for a job's
// container (its device request and environment, by inspect) and, for a
// job handed no GPU, what the job sees inside. The image is the test
// image with ENV NVIDIA_VISIBLE_DEVICES=all, as CUDA images have: on a
// host whose default runtime is nvidia that alone hands a container every
// GPU. A container with a device request starts only where the engine has
// the NVIDIA runtime; elsewhere the test checks the record, not the run.
func TestDockerGPUVisibility(t *testing.T) {
	t.Parallel()
	c := dockerOrSkip(t)
	cudaImage := testImage + "-cuda-env"
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	err := buildImage(ctx, c, cudaImage, []contextFile{{"Dockerfile", 0o644, []byte(fmt.Sprintf(
		"FROM %s\nENV NVIDIA_VISIBLE_DEVICES=all CUDA_VISIBLE_DEVICES=0,1,2,3\n", testImage))}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ImageRemove(context.Background(), cudaImage, client.ImageRemoveOptions{Force: true}) })
	d := newTestDocker(t, DockerOptions{Images: []string{cudaImage}})
	info, err := c.Info(ctx, client.InfoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, nvidiaRuntime := info.Info.Runtimes["nvidia"]
	cases := []struct {
		name string
		gpus []string
		env  []*pb.EnvVar
		want map[string]string
	}{
		{name: "no GPU", want: map[string]string{"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": NoDevices}},
		{name: "no GPU, the spec asks all", env: []*pb.EnvVar{{Name: "NVIDIA_VISIBLE_DEVICES", Value: "all"}},
			want: map[string]string{"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": NoDevices}},
		{name: "GPUs 1 and 3, the spec asks all", gpus: []string{"1", "3"}, env: []*pb.EnvVar{{Name: "NVIDIA_VISIBLE_DEVICES", Value: "all"}},
			want: map[string]string{"NVIDIA_VISIBLE_DEVICES": "1,3"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			job := &Job{ID: fmt.Sprintf("gpuvis%d-%s", i, randHex(t, 4)), Spec: &pb.JobSpec{Executor: "docker", Image: cudaImage, Args: []string{"env"}, Env: tc.env}, GPUs: tc.gpus}
			id := createInspectable(t, d, job)
			ins, err := c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			recorded := map[string]string{}
			for _, kv := range ins.Container.Config.Env {
				k, v, _ := strings.Cut(kv, "=")
				recorded[k] = v
			}
			checkEnv(t, recorded, tc.want, nil)
			reqs := ins.Container.HostConfig.DeviceRequests
			if len(tc.gpus) == 0 {
				if len(reqs) != 0 {
					t.Fatalf("device requests %+v for a job handed no GPU", reqs)
				}
			} else if len(reqs) != 1 || reqs[0].Driver != "nvidia" || !slices.Equal(reqs[0].DeviceIDs, tc.gpus) || fmt.Sprint(reqs[0].Capabilities) != "[[gpu]]" {
				t.Fatalf("the engine recorded device requests %+v, want the nvidia driver with devices %v", reqs, tc.gpus)
			}
			if len(tc.gpus) > 0 && !nvidiaRuntime {
				t.Logf("no nvidia runtime on this engine: the record is checked, not the run")
				return
			}
			var stdout, stderr syncBuffer
			job.ID += "-run"
			job.Dir, job.Stdout, job.Stderr = t.TempDir(), &stdout, &stderr
			r, err := d.Run(t.Context(), job)
			if err != nil {
				t.Fatal(err)
			}
			wantOK(t, r)
			checkEnv(t, envLines(stdout.String()), tc.want, nil)
		})
	}
}

// createInspectable creates job's container as Run would, without
// starting it, and removes it at the end of the test.
func createInspectable(t *testing.T, d *Docker, job *Job) string {
	t.Helper()
	img, err := d.c.ImageInspect(t.Context(), job.Spec.Image)
	if err != nil {
		t.Fatal(err)
	}
	mem, cpu, err := d.limits(job.Spec)
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.create(t.Context(), job, runConfig{dir: t.TempDir(), image: img.ID, memory: mem, nanoCPUs: cpu})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.remove(id) })
	return id
}
