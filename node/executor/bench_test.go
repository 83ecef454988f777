package executor

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/pb"
)

// reportRun adds the mean start→first output and start→exit of the runs
// to a benchmark's results.
func reportRun(b *testing.B, first, wall time.Duration) {
	b.ReportMetric(float64(first.Microseconds())/1000/float64(b.N), "ms-to-first-output/op")
	b.ReportMetric(float64(wall.Microseconds())/1000/float64(b.N), "ms-to-exit/op")
}

// benchQuota is the disk quota of benchmark runs: the node's default, as
// every run with a scratch dir has one.
const benchQuota = 1 << 30

func benchRun(b *testing.B, e Executor, spec *pb.JobSpec, module []byte) {
	b.Helper()
	var first, wall time.Duration
	for b.Loop() {
		job := &Job{ID: "bench", Spec: spec, Module: module, Dir: b.TempDir(), DiskQuota: benchQuota, Stdout: io.Discard, Stderr: io.Discard}
		r, err := e.Run(context.Background(), job)
		if err != nil || r.Failed() {
			b.Fatalf("run: %+v %v", r, err)
		}
		first += r.FirstOutput
		wall += r.Wall
	}
	reportRun(b, first, wall)
}

// BenchmarkWasmTrivial runs `sample echo hi` with the module already
// compiled: instantiation, the Go runtime's start and the exit.
func BenchmarkWasmTrivial(b *testing.B) {
	w, mod := sharedWasm(b)
	benchRun(b, w, &pb.JobSpec{Executor: "wasm", Args: []string{"echo", "hi"}}, mod)
}

// BenchmarkWasmWrite runs `sample fill f 16` (16 MiB in 1 MiB writes)
// and `sample fill f 4 1` (4 files of 1 MiB), each loop once with the disk
// quota, whose accounting adds a stat and a seek to every write, and once
// without, so that both see the same machine: it reports the mean time to
// exit of each.
func BenchmarkWasmWrite(b *testing.B) {
	w, mod := sharedWasm(b)
	for _, args := range [][]string{{"fill", "f", "16"}, {"fill", "f", "4", "1"}} {
		b.Run(strings.Join(args[2:], "x"), func(b *testing.B) {
			spec := &pb.JobSpec{Executor: "wasm", Args: args}
			var with, without time.Duration
			for i := 0; b.Loop(); i++ {
				for _, quota := range []int64{benchQuota, 0} {
					if i%2 == 1 {
						quota = benchQuota - quota // the other order every other loop
					}
					job := &Job{ID: "bench", Spec: spec, Module: mod, Dir: b.TempDir(), DiskQuota: quota, Stdout: io.Discard, Stderr: io.Discard}
					r, err := w.Run(context.Background(), job)
					if err != nil || r.Failed() {
						b.Fatalf("run: %+v %v", r, err)
					}
					if quota > 0 {
						with += r.Wall
					} else {
						without += r.Wall
					}
				}
			}
			b.ReportMetric(float64(with.Microseconds())/1000/float64(b.N), "ms-with-quota/op")
			b.ReportMetric(float64(without.Microseconds())/1000/float64(b.N), "ms-without/op")
		})
	}
}

// BenchmarkWasmCold runs `sample echo hi` on a fresh executor each time:
// the first run of a module in a process, compilation included.
func BenchmarkWasmCold(b *testing.B) {
	_, mod := sharedWasm(b)
	spec := &pb.JobSpec{Executor: "wasm", Args: []string{"echo", "hi"}}
	var first, wall time.Duration
	for b.Loop() {
		w, err := NewWasm(WasmOptions{})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		job := &Job{ID: "bench", Spec: spec, Module: mod, Dir: b.TempDir(), DiskQuota: benchQuota, Stdout: io.Discard, Stderr: io.Discard}
		r, err := w.Run(context.Background(), job)
		if err != nil || r.Failed() {
			b.Fatalf("run: %+v %v", r, err)
		}
		// Run's own timings start after the compile; count from the call.
		compile := time.Since(start) - r.Wall
		first += compile + r.FirstOutput
		wall += time.Since(start)
		w.Close(context.Background())
	}
	reportRun(b, first, wall)
}

// BenchmarkDockerTrivial runs `echo hi` in a container of the test image:
// create, attach, start, exit, inspect, remove.
func BenchmarkDockerTrivial(b *testing.B) {
	d := newTestDocker(b, DockerOptions{})
	benchRun(b, d, &pb.JobSpec{Executor: "docker", Image: testImage, Args: []string{"echo", "hi"}}, nil)
}

// BenchmarkProcessTrivial runs /bin/echo hi as a host process.
func BenchmarkProcessTrivial(b *testing.B) {
	benchRun(b, NewProcess(ProcessOptions{}), &pb.JobSpec{Executor: "process", Command: []string{"/bin/echo", "hi"}}, nil)
}
