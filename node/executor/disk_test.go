package executor

import (
	"context"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"

	"github.com/mira-market/mira/protocol/pb"
)

// fileBytes is the total size of the regular files under dir: an oracle
// of what a job left there that owes nothing to the quota's own
// accounting.
func fileBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// testQuota is the disk quota of the attacks below.
const testQuota = 16 << 20

// diskQuotaCases are the attacks on a provider's disk that every executor
// with a scratch dir must stop: a job that writes past its quota, in one
// file or in many, fails with ReasonDiskQuota; its inputs (what the dir
// holds when it starts) do not count. exact says whether the executor
// refuses the write itself (wasm), so that not a byte lands past the
// quota; the others stop the job and bound a single file with
// RLIMIT_FSIZE.
func diskQuotaCases(exact bool) []runCase {
	wantStopped := func(t *testing.T, r Result, stdout, stderr, dir string) {
		t.Helper()
		if !r.Failed() || r.Reason != ReasonDiskQuota {
			t.Errorf("got %+v, want a failed run with reason %q (stdout %q stderr %q)", r, ReasonDiskQuota, stdout, trunc(stderr))
		}
		if strings.Contains(stdout, "filled") {
			t.Errorf("the job finished its writes: %q", stdout)
		}
	}
	return []runCase{
		{
			name:    "one file past the quota",
			args:    []string{"fill", "big", "48"},
			disk:    testQuota,
			timeout: 30 * time.Second,
			check: func(t *testing.T, r Result, stdout, stderr, dir string) {
				wantStopped(t, r, stdout, stderr, dir)
				// Also for the watchers: RLIMIT_FSIZE stops a single file.
				if got := fileBytes(t, dir); got > testQuota+1 {
					t.Errorf("%d bytes left in the scratch dir, quota %d", got, testQuota)
				}
			},
		},
		{
			// Files of 1 MiB each, then the job waits: it must be
			// stopped for its disk, not at max_duration.
			name:    "many files past the quota",
			args:    []string{"fill", "part", "48", "1", "1h"},
			disk:    testQuota,
			timeout: 30 * time.Second,
			check: func(t *testing.T, r Result, stdout, stderr, dir string) {
				if !r.Failed() || r.Reason != ReasonDiskQuota {
					t.Errorf("got %+v, want a failed run with reason %q (stdout %q stderr %q)", r, ReasonDiskQuota, stdout, trunc(stderr))
				}
				// A watcher stops the job within a poll: how much it
				// wrote by then depends on the machine's speed.
				got := fileBytes(t, dir)
				t.Logf("%d MiB in the scratch dir, quota %d MiB", got>>20, testQuota>>20)
				if exact && (got > testQuota || strings.Contains(stdout, "filled")) {
					t.Errorf("%d bytes left in the scratch dir, quota %d; stdout %q", got, testQuota, stdout)
				}
			},
		},
		{
			name:    "inputs do not count",
			args:    []string{"fill", "part", "12", "4"},
			disk:    testQuota,
			timeout: 30 * time.Second,
			setup: func(t *testing.T, dir string) []string {
				if err := os.MkdirAll(filepath.Join(dir, "inputs"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "inputs", "in"), make([]byte, 24<<20), 0o644); err != nil {
					t.Fatal(err)
				}
				return nil
			},
			check: func(t *testing.T, r Result, stdout, stderr, _ string) {
				wantOK(t, r)
				if stdout != "filled 12 MiB\n" {
					t.Errorf("stdout %q stderr %q", stdout, stderr)
				}
			},
		},
	}
}

// blockCases are the attacks on the watchers (docker, process) through
// blocks a file holds beyond its size: fallocate with
// FALLOC_FL_KEEP_SIZE allocates real blocks and leaves the size 0, and
// RLIMIT_FSIZE does not apply to it. The job then waits: it must be
// stopped for its disk, not at max_duration.
func blockCases() []runCase {
	return []runCase{{
		name:    "blocks allocated past the size",
		args:    []string{"fallocate", "big", "48", "1h"},
		disk:    testQuota,
		timeout: 20 * time.Second,
		check: func(t *testing.T, r Result, stdout, stderr, dir string) {
			if r.Reason != ReasonDiskQuota {
				t.Errorf("got %+v, want a failed run with reason %q (stdout %q stderr %q)", r, ReasonDiskQuota, stdout, trunc(stderr))
			}
		},
	}}
}

func TestWasmDiskQuota(t *testing.T) {
	t.Parallel()
	w, mod := sharedWasm(t)
	for _, c := range diskQuotaCases(true) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, stdout, stderr, dir := runJob(t, w, &pb.JobSpec{Executor: "wasm"}, mod, c)
			c.check(t, r, stdout, stderr, dir)
		})
	}
}

func TestProcessDiskQuota(t *testing.T) {
	t.Parallel()
	p := NewProcess(ProcessOptions{})
	bin := sampleBin(t)
	for _, c := range append(diskQuotaCases(false), blockCases()...) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, stdout, stderr, dir := runJob(t, p, &pb.JobSpec{Executor: "process", Command: []string{bin}}, nil, c)
			c.check(t, r, stdout, stderr, dir)
		})
	}
}

func TestDockerDiskQuota(t *testing.T) {
	t.Parallel()
	d := newTestDocker(t, DockerOptions{})
	for _, c := range append(diskQuotaCases(false), blockCases()...) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, stdout, stderr, dir := runJob(t, d, &pb.JobSpec{Executor: "docker", Image: testImage}, nil, c)
			c.check(t, r, stdout, stderr, dir)
		})
	}
}

// TestWasmQuotaAccounting drives the quota filesystem through the calls
// that change what a dir holds and checks its account against a walk of
// the dir after each: equal whenever the guest holds no handle of a
// removed file, never below it, and never past the limit.
func TestWasmQuotaAccounting(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	type env struct {
		t     *testing.T
		fs    sandboxFS
		files map[string]experimentalsys.File
	}
	open := func(name string, flag experimentalsys.Oflag) func(e *env) experimentalsys.Errno {
		return func(e *env) experimentalsys.Errno {
			f, errno := e.fs.OpenFile(name, flag|experimentalsys.O_RDWR, 0o644)
			if errno == 0 {
				e.files[name] = f
			}
			return errno
		}
	}
	write := func(name string, n int) func(e *env) experimentalsys.Errno {
		return func(e *env) experimentalsys.Errno {
			_, errno := e.files[name].Write(make([]byte, n))
			return errno
		}
	}
	pwrite := func(name string, n int, off int64) func(e *env) experimentalsys.Errno {
		return func(e *env) experimentalsys.Errno {
			_, errno := e.files[name].Pwrite(make([]byte, n), off)
			return errno
		}
	}
	truncate := func(name string, size int64) func(e *env) experimentalsys.Errno {
		return func(e *env) experimentalsys.Errno { return e.files[name].Truncate(size) }
	}
	closeFile := func(name string) func(e *env) experimentalsys.Errno {
		return func(e *env) experimentalsys.Errno {
			errno := e.files[name].Close()
			delete(e.files, name)
			return errno
		}
	}
	fsOp := func(op func(fs sandboxFS) experimentalsys.Errno) func(e *env) experimentalsys.Errno {
		return func(e *env) experimentalsys.Errno { return op(e.fs) }
	}
	create := experimentalsys.O_CREAT
	type step struct {
		name  string
		do    func(e *env) experimentalsys.Errno
		errno experimentalsys.Errno
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"write, overwrite, refuse past the limit", []step{
			{"create a", open("a", create), 0},
			{"write 40 KiB", write("a", 40<<10), 0},
			{"overwrite in place", pwrite("a", 40<<10, 0), 0},
			{"grow past the limit", write("a", 40<<10), experimentalsys.EIO},
			{"what still fits", write("a", 24<<10), 0},
			{"one byte more", write("a", 1), experimentalsys.EIO},
			{"close", closeFile("a"), 0},
		}},
		{"truncate and O_TRUNC give space back", []step{
			{"create a", open("a", create), 0},
			{"write 60 KiB", write("a", 60<<10), 0},
			{"truncate to 1 KiB", truncate("a", 1<<10), 0},
			{"write 40 KiB", pwrite("a", 40<<10, 4<<10), 0},
			{"truncate up past the limit", truncate("a", 1<<20), experimentalsys.EIO},
			{"close", closeFile("a"), 0},
			{"reopen with O_TRUNC", open("a", experimentalsys.O_TRUNC), 0},
			{"write 56 KiB", write("a", 56<<10), 0},
			{"close again", closeFile("a"), 0},
		}},
		{"append", []step{
			{"create a", open("a", create|experimentalsys.O_APPEND), 0},
			{"append 30 KiB", write("a", 30<<10), 0},
			{"append 30 KiB more", write("a", 30<<10), 0},
			{"append past the limit", write("a", 8<<10), experimentalsys.EIO},
			{"close", closeFile("a"), 0},
		}},
		{"unlink while open keeps the space until the close", []step{
			{"create a", open("a", create), 0},
			{"write 40 KiB", write("a", 40<<10), 0},
			{"unlink a", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Unlink("a") }), 0},
			{"create b", open("b", create), 0},
			{"b cannot reuse a's space", write("b", 40<<10), experimentalsys.EIO},
			{"close a", closeFile("a"), 0},
			{"now b can", write("b", 40<<10), 0},
			{"close b", closeFile("b"), 0},
		}},
		{"links, renames and directories", []step{
			{"create a", open("a", create), 0},
			{"write 20 KiB", write("a", 20<<10), 0},
			{"close a", closeFile("a"), 0},
			{"link a to b", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Link("a", "b") }), 0},
			{"unlink a (b keeps it)", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Unlink("a") }), 0},
			{"create c", open("c", create), 0},
			{"write 8 KiB", write("c", 8<<10), 0},
			{"close c", closeFile("c"), 0},
			{"rename c over b", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Rename("c", "b") }), 0},
			{"rename b over itself", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Rename("b", "b") }), 0},
			{"link b to b2", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Link("b", "b2") }), 0},
			{"rename b over b2, its other name", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Rename("b", "b2") }), 0},
			{"unlink b2", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Unlink("b2") }), 0},
			{"mkdir d", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Mkdir("d", 0o755) }), 0},
			{"mkdir d again fails", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Mkdir("d", 0o755) }), experimentalsys.EEXIST},
			{"create d/e", open("d/e", create), 0},
			{"close d/e", closeFile("d/e"), 0},
			{"rmdir d fails", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Rmdir("d") }), experimentalsys.ENOTEMPTY},
			{"unlink d/e", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Unlink("d/e") }), 0},
			{"rmdir d", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Rmdir("d") }), 0},
		}},
		{"ends near 2^63 are refused before any arithmetic", []step{
			{"create a", open("a", create), 0},
			{"pwrite at 2^63-1", pwrite("a", 1, math.MaxInt64), experimentalsys.EIO},
			{"pwrite at 2^63-4096", pwrite("a", 1, math.MaxInt64-4095), experimentalsys.EIO},
			{"pwrite just past 2^62", pwrite("a", 2, 1<<62-1), experimentalsys.EIO},
			{"truncate to 2^63-1", truncate("a", math.MaxInt64), experimentalsys.EIO},
			{"truncate just past 2^62", truncate("a", 1<<62+1), experimentalsys.EIO},
			{"a negative offset", pwrite("a", 1, -1), experimentalsys.EINVAL},
			{"what fits still fits", write("a", 60<<10), 0},
			{"and no more", write("a", 8<<10), experimentalsys.EIO},
			{"close", closeFile("a"), 0},
		}},
		{"names cost a block each", []step{
			{"mkdir 1", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Mkdir("1", 0o755) }), 0},
			{"create 15 files", func(e *env) experimentalsys.Errno {
				for i := range 15 {
					if errno := open(fmt.Sprintf("1/%d", i), create)(e); errno != 0 {
						return errno
					}
					closeFile(fmt.Sprintf("1/%d", i))(e)
				}
				return 0
			}, 0},
			{"the 17th block is refused", open("1/x", create), experimentalsys.EIO},
			{"and so is a directory", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Mkdir("2", 0o755) }), experimentalsys.EIO},
			{"and a link", fsOp(func(fs sandboxFS) experimentalsys.Errno { return fs.Link("1/0", "1/y") }), experimentalsys.EIO},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			base, err := scratchUsage(dir)
			if err != nil {
				t.Fatal(err)
			}
			e := &env{t: t, fs: sandboxFS{FS: sysfs.DirFS(dir), quota: newDiskQuota(limit, base)}, files: map[string]experimentalsys.File{}}
			for _, s := range c.steps {
				if errno := s.do(e); errno != s.errno {
					t.Fatalf("%s: errno %v, want %v", s.name, errno, s.errno)
				}
				used, err := scratchUsage(dir)
				if err != nil {
					t.Fatal(err)
				}
				q := e.fs.quota
				q.mu.Lock()
				account := q.used
				q.mu.Unlock()
				if account > limit || account < used-base || len(e.files) == 0 && account != used-base {
					t.Fatalf("%s: account %d, walk %d (limit %d, %d files open)", s.name, account, used-base, limit, len(e.files))
				}
				if s.errno == experimentalsys.EIO && !q.exceeded.Load() {
					t.Fatalf("%s: refused without recording it", s.name)
				}
			}
		})
	}
}

// scratchDirs are the filesystems a quota attack is tried on: the test's
// temporary dir, and tmpfs (/dev/shm), whose files may be 2^63-1 bytes
// long where ext4 stops at 16 TiB.
func scratchDirs(t *testing.T) map[string]func(t *testing.T) string {
	dirs := map[string]func(t *testing.T) string{"tempdir": func(t *testing.T) string { return t.TempDir() }}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dirs["tmpfs"] = func(t *testing.T) string {
			dir, err := os.MkdirTemp("/dev/shm", "mira-quota-test")
			if err != nil {
				t.Skip(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return dirs
}

// TestWasmQuotaCannotBeSwitchedOff: a guest's writes, truncations and
// allocations at offsets near 2^63 must not turn the quota's arithmetic
// over (off+len wrapping negative, a size rounded up past 2^63), which
// would refund the guest more than it ever reserved and let every later
// write through. Each attack is a huge call, then 48 MiB from the file's
// start against a 16 MiB quota: the run must end "disk quota exceeded".
func TestWasmQuotaCannotBeSwitchedOff(t *testing.T) {
	t.Parallel()
	w, mod := sharedWasm(t)
	const maxInt64 = "9223372036854775807"
	attacks := []struct {
		name string
		args []string
	}{
		{"pwrite at 2^63-1", []string{"pwrite", "f", maxInt64, "48"}},
		{"pwrite at 2^63-4096", []string{"pwrite", "f", "9223372036854771712", "48"}},
		{"truncate to 2^63-1", []string{"truncate", "f", maxInt64, "48"}},
		{"truncate to 2^63-4000", []string{"truncate", "f", "9223372036854771807", "48"}},
	}
	for fsName, mkdir := range scratchDirs(t) {
		for _, a := range attacks {
			t.Run(fsName+"/"+a.name, func(t *testing.T) {
				t.Parallel()
				var stdout, stderr syncBuffer
				job := &Job{ID: "quota-" + randHex(t, 4), Spec: &pb.JobSpec{Executor: "wasm", Args: a.args}, Module: mod,
					Dir: mkdir(t), DiskQuota: testQuota, Stdout: &stdout, Stderr: &stderr}
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				r, err := w.Run(ctx, job)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("result %+v stdout %q stderr %q", r, stdout.String(), trunc(stderr.String()))
				if r.Reason != ReasonDiskQuota || strings.Contains(stdout.String(), "wrote 48 MiB") {
					t.Fatalf("got %+v (stdout %q), want the run stopped with %q", r, stdout.String(), ReasonDiskQuota)
				}
			})
		}
	}
}

// TestWatchErrorsNameNoProviderPath: a job that nests 255-character
// directory names 17 deep makes the watcher's walk fail ("file name too
// long", naming the full path). The run must still be stopped, with a
// reason, which goes to the requester, that names no path of the
// provider's.
func TestWatchErrorsNameNoProviderPath(t *testing.T) {
	t.Parallel()
	p := NewProcess(ProcessOptions{})
	bin := sampleBin(t)
	// The job waits (its watcher's poll finds the tree) or exits at once
	// (the last measurement after the exit does).
	for _, args := range [][]string{{"deepdir", "17", "1h"}, {"deepdir", "17"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			r, stdout, stderr, dir := runJob(t, p, &pb.JobSpec{Executor: "process", Command: []string{bin}}, nil, runCase{
				args: args, disk: testQuota, timeout: 20 * time.Second,
			})
			defer removeTree(t, dir)
			for _, leak := range []string{dir, filepath.Base(dir), strings.Repeat("x", 255)} {
				if strings.Contains(r.Reason, leak) {
					t.Fatalf("reason %q names a provider path (%.40s...)", r.Reason, leak)
				}
			}
			if r.Reason != errScratchUnmeasurable.Error() {
				t.Fatalf("got %+v (stdout %q stderr %q), want the run stopped with %q", r, stdout, stderr, errScratchUnmeasurable)
			}
		})
	}
}

// removeTree removes dir, which may be deeper than PATH_MAX, from the
// bottom up by relative paths: t.TempDir's cleanup cannot.
func removeTree(t *testing.T, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
}
