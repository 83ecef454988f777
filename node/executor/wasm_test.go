package executor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/pb"
)

// testWasm is one wasm executor for the whole test binary, so that the
// sample module is compiled once (compiling is slow under -race).
var testWasm = sync.OnceValues(func() (*Wasm, error) {
	w, err := NewWasm(WasmOptions{})
	if err != nil {
		return nil, err
	}
	mod, err := SampleModule("sample")
	if err != nil {
		return nil, err
	}
	return w, w.Compile(context.Background(), mod)
})

func sharedWasm(t testing.TB) (*Wasm, []byte) {
	t.Helper()
	w, err := testWasm()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := SampleModule("sample")
	if err != nil {
		t.Fatal(err)
	}
	return w, mod
}

// expectedHash is what `sample hash n` prints.
func expectedHash(n int) string {
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i % 251)
	}
	h := sha256.New()
	for range n {
		h.Write(block)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestSampleModule(t *testing.T) {
	t.Parallel()
	if !slices.Contains(SampleNames(), "sample") {
		t.Fatalf("SampleNames() = %v, want it to contain sample", SampleNames())
	}
	mod, err := SampleModule("sample")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(mod, []byte("\x00asm")) {
		t.Fatalf("sample module does not start with the wasm magic: % x", mod[:8])
	}
	if _, err := SampleModule("nope"); err == nil {
		t.Fatal("SampleModule(nope): no error")
	}
}

func TestWasm(t *testing.T) {
	t.Parallel()
	w, mod := sharedWasm(t)
	cases := []runCase{
		{
			name: "hash",
			args: []string{"hash", "4"},
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantOK(t, r)
				if got, want := strings.TrimSpace(stdout), expectedHash(4); got != want {
					t.Errorf("hash = %q, want %q", got, want)
				}
				if r.FirstOutput <= 0 || r.FirstOutput > r.Wall || r.PeakMemory == 0 {
					t.Errorf("timings/memory not recorded: %+v", r)
				}
			},
		},
		{
			name: "echo and args",
			args: []string{"echo", "hello", "world"},
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantOK(t, r)
				if stdout != "hello world\n" {
					t.Errorf("stdout = %q", stdout)
				}
			},
		},
		{
			name: "exit code",
			args: []string{"exit", "3"},
			check: func(t *testing.T, r Result, _, _, _ string) {
				wantExit(t, r, 3, "")
			},
		},
		{
			name: "env is only the spec's",
			args: []string{"env"},
			env:  map[string]string{"A": "1", "B": "two"},
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantOK(t, r)
				got := strings.Fields(stdout)
				slices.Sort(got)
				if want := []string{"A=1", "B=two", "PWD=/"}; !slices.Equal(got, want) {
					t.Errorf("env = %q, want %q", got, want)
				}
			},
		},
		{
			name: "host file not visible",
			args: []string{"readfile", "/etc/passwd"},
			check: func(t *testing.T, r Result, stdout, stderr, _ string) {
				wantExit(t, r, 1, "")
				if stdout != "" || !strings.Contains(stderr, "readfile") {
					t.Errorf("stdout %q stderr %q", stdout, stderr)
				}
			},
		},
		{
			name: "no escape with dot-dot",
			args: []string{"readfile", "../../../../../etc/passwd"},
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantExit(t, r, 1, "")
				if stdout != "" {
					t.Errorf("stdout %q", stdout)
				}
			},
		},
		{
			name: "no escape with a symlink",
			args: []string{"symlink", "../../../../../../etc/passwd", "link"},
			check: func(t *testing.T, r Result, stdout, stderr, dir string) {
				wantExit(t, r, 1, "")
				if stdout != "" || !strings.Contains(stderr, "symlink") {
					t.Errorf("stdout %q stderr %q", stdout, stderr)
				}
				if _, err := os.Lstat(filepath.Join(dir, "link")); err == nil {
					t.Errorf("the guest created a symlink in the job directory")
				}
			},
		},
		{
			name: "job dir is the guest's root",
			setup: func(t *testing.T, dir string) []string {
				if err := os.WriteFile(filepath.Join(dir, "in.txt"), []byte("input data"), 0o644); err != nil {
					t.Fatal(err)
				}
				return []string{"readfile", "/in.txt"}
			},
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantOK(t, r)
				if stdout != "input data" {
					t.Errorf("stdout %q", stdout)
				}
			},
		},
		{
			name: "write lands in job dir",
			args: []string{"write", "out.txt", "result 42"},
			check: func(t *testing.T, r Result, stdout, _, dir string) {
				wantOK(t, r)
				if stdout != "result 42" {
					t.Errorf("stdout %q", stdout)
				}
				b, err := os.ReadFile(filepath.Join(dir, "out.txt"))
				if err != nil || string(b) != "result 42" {
					t.Errorf("out.txt on the host: %q, %v", b, err)
				}
			},
		},
		{
			name: "no network",
			setup: func(t *testing.T, _ string) []string {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				var accepted atomic.Int32
				go func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						accepted.Add(1)
						c.Close()
					}
				}()
				t.Cleanup(func() {
					l.Close()
					if n := accepted.Load(); n > 0 {
						t.Errorf("listener accepted %d connections from the guest", n)
					}
				})
				return []string{"dial", l.Addr().String()}
			},
			check: func(t *testing.T, r Result, stdout, stderr, _ string) {
				wantExit(t, r, 1, "")
				if strings.Contains(stdout, "connected") || !strings.Contains(stderr, "dial") {
					t.Errorf("stdout %q stderr %q", stdout, stderr)
				}
			},
		},
		{
			name:   "alloc within limit",
			args:   []string{"alloc", "16"},
			memMib: 64,
			check: func(t *testing.T, r Result, stdout, _, _ string) {
				wantOK(t, r)
				if stdout != "allocated 16 MiB\n" {
					t.Errorf("stdout %q", stdout)
				}
				if r.PeakMemory < 16<<20 || r.PeakMemory > 64<<20 {
					t.Errorf("PeakMemory = %d", r.PeakMemory)
				}
			},
		},
		{
			name:   "alloc over limit",
			args:   []string{"alloc", "128"},
			memMib: 64,
			check: func(t *testing.T, r Result, _, stderr, _ string) {
				if !r.Failed() || r.Reason != ReasonOOM {
					t.Errorf("got %+v, want failed with %q", r, ReasonOOM)
				}
				if r.PeakMemory > 64<<20 {
					t.Errorf("PeakMemory %d over the limit", r.PeakMemory)
				}
				if !strings.Contains(stderr, "out of memory") {
					t.Errorf("stderr %q", trunc(stderr))
				}
			},
		},
		{
			name:    "spin until max_duration",
			args:    []string{"spin"},
			timeout: 300 * time.Millisecond,
			check: func(t *testing.T, r Result, _, _, _ string) {
				wantExit(t, r, -1, ReasonTimeout)
				if r.Wall > 5*time.Second {
					t.Errorf("took %v to stop", r.Wall)
				}
			},
		},
		{
			name:   "cancel",
			args:   []string{"spin"},
			cancel: 200 * time.Millisecond,
			check: func(t *testing.T, r Result, _, _, _ string) {
				wantExit(t, r, -1, ReasonCancelled)
				if r.Wall > 5*time.Second {
					t.Errorf("took %v to stop", r.Wall)
				}
			},
		},
		{
			name:    "sleep until max_duration",
			args:    []string{"sleep", "1h"},
			timeout: 200 * time.Millisecond,
			check: func(t *testing.T, r Result, _, _, _ string) {
				wantExit(t, r, -1, ReasonTimeout)
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, stdout, stderr, dir := runJob(t, w, &pb.JobSpec{Executor: "wasm"}, mod, c)
			c.check(t, r, stdout, stderr, dir)
		})
	}
}

func TestWasmBadJobs(t *testing.T) {
	t.Parallel()
	w, mod := sharedWasm(t)
	cases := []struct {
		name string
		job  *Job
	}{
		{"no module", &Job{Spec: &pb.JobSpec{}}},
		{"not wasm", &Job{Spec: &pb.JobSpec{}, Module: []byte("not a module")}},
		{"memory over provider max", &Job{Spec: &pb.JobSpec{Resources: &pb.Resources{MemoryMib: 8192}}, Module: mod}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.job.Dir = t.TempDir()
			c.job.Stdout, c.job.Stderr = &syncBuffer{}, &syncBuffer{}
			if r, err := w.Run(t.Context(), c.job); err == nil {
				t.Fatalf("no error; result %+v", r)
			}
		})
	}
}

func TestWasmCompileCache(t *testing.T) {
	t.Parallel()
	w, err := NewWasm(WasmOptions{CompiledModules: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(t.Context())
	// Two small hand-written modules: each is a WASI command whose _start
	// exits with a different code.
	mods := [][]byte{exitModule(5), exitModule(6)}
	for round := range 2 {
		for i, m := range mods {
			r, err := w.Run(t.Context(), &Job{Spec: &pb.JobSpec{}, Module: m, Dir: t.TempDir(), Stdout: &syncBuffer{}, Stderr: &syncBuffer{}})
			if err != nil {
				t.Fatalf("round %d module %d: %v", round, i, err)
			}
			if want := int32(5 + i); r.ExitCode != want {
				t.Fatalf("round %d module %d: exit %d, want %d", round, i, r.ExitCode, want)
			}
		}
	}
	w.mu.Lock()
	n := len(w.modules)
	w.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d modules cached, bound is 1", n)
	}
}

// exitModule is a minimal WASI command whose _start calls proc_exit(code).
func exitModule(code byte) []byte {
	return wasiCommand([]byte{0x41, code, 0x10, 0x00}) // i32.const code; call proc_exit
}

// spinModule is a minimal WASI command whose _start loops forever.
func spinModule() []byte {
	return wasiCommand([]byte{0x03, 0x40, 0x0c, 0x00, 0x0b}) // loop; br 0; end
}

// wasiCommand is a module that imports proc_exit, has one page of memory
// and exports _start with the given instructions (code < 0x40 bytes).
func wasiCommand(code []byte) []byte {
	body := append(append([]byte{0x00}, code...), 0x0b) // no locals, code, end
	m := []byte{
		0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
		// type section: (i32)->(), ()->()
		0x01, 0x08, 0x02, 0x60, 0x01, 0x7f, 0x00, 0x60, 0x00, 0x00,
		// import section: wasi_snapshot_preview1.proc_exit type 0
		0x02, 0x24, 0x01,
		0x16, 'w', 'a', 's', 'i', '_', 's', 'n', 'a', 'p', 's', 'h', 'o', 't', '_', 'p', 'r', 'e', 'v', 'i', 'e', 'w', '1',
		0x09, 'p', 'r', 'o', 'c', '_', 'e', 'x', 'i', 't', 0x00, 0x00,
		// function section: one function of type 1
		0x03, 0x02, 0x01, 0x01,
		// memory section: one memory, min 1 page
		0x05, 0x03, 0x01, 0x00, 0x01,
		// export section: _start = func 1, memory = mem 0
		0x07, 0x13, 0x02,
		0x06, '_', 's', 't', 'a', 'r', 't', 0x00, 0x01,
		0x06, 'm', 'e', 'm', 'o', 'r', 'y', 0x02, 0x00,
	}
	// code section: one body
	m = append(m, 0x0a, byte(len(body)+2), 0x01, byte(len(body)))
	return append(m, body...)
}

func TestWasmClose(t *testing.T) {
	t.Parallel()
	w, err := NewWasm(WasmOptions{})
	if err != nil {
		t.Fatal(err)
	}
	job := func() *Job {
		return &Job{Spec: &pb.JobSpec{}, Module: spinModule(), Dir: t.TempDir(), Stdout: &syncBuffer{}, Stderr: &syncBuffer{}}
	}
	if err := w.Compile(t.Context(), spinModule()); err != nil {
		t.Fatal(err)
	}
	type out struct {
		r   Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		r, err := w.Run(t.Context(), job())
		done <- out{r, err}
	}()
	// Wait until the run holds the executor, then close under it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		n := 0
		for _, e := range w.modules {
			n += e.refs
		}
		w.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the run did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	o := <-done
	if o.err != nil || o.r.Reason != ReasonCancelled {
		t.Fatalf("run under Close: %+v, %v; want cancelled", o.r, o.err)
	}
	if _, err := w.Run(t.Context(), job()); err == nil {
		t.Fatal("Run after Close: no error")
	}
}
