package executor

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/pb"
)

// processGone reports whether pid no longer runs: it does not exist, or is
// a zombie waiting for a reaper that is not us.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// pid (comm) STATE ...; comm may hold spaces, so look after the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// waitGone polls until pid is gone or the deadline passes.
func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running %v after the job ended", pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// firstPid parses the first line of stdout as a pid.
func firstPid(t *testing.T, stdout string) int {
	t.Helper()
	line, _, _ := strings.Cut(stdout, "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("no pid in stdout %q", stdout)
	}
	return pid
}

func TestProcess(t *testing.T) {
	t.Parallel()
	p := NewProcess(ProcessOptions{})
	type pcase struct {
		runCase
		command []string
	}
	cases := []pcase{
		{
			command: []string{"echo"},
			runCase: runCase{
				name: "echo",
				args: []string{"hello", "process"},
				check: func(t *testing.T, r Result, stdout, _, _ string) {
					wantOK(t, r)
					if stdout != "hello process\n" {
						t.Errorf("stdout %q", stdout)
					}
					if r.FirstOutput <= 0 || r.FirstOutput > r.Wall || r.PeakMemory == 0 {
						t.Errorf("timings/memory not recorded: %+v", r)
					}
				},
			},
		},
		{
			command: []string{"sh", "-c", "echo oops >&2; exit 3"},
			runCase: runCase{
				name: "exit code and stderr",
				check: func(t *testing.T, r Result, _, stderr, _ string) {
					wantExit(t, r, 3, "")
					if stderr != "oops\n" {
						t.Errorf("stderr %q", stderr)
					}
				},
			},
		},
		{
			command: []string{"/usr/bin/env"},
			runCase: runCase{
				name: "env is exactly the spec's, and no GPU",
				env:  map[string]string{"A": "1", "B": "two"},
				check: func(t *testing.T, r Result, stdout, _, _ string) {
					wantOK(t, r)
					if stdout != "A=1\nB=two\nCUDA_VISIBLE_DEVICES=-1\nROCR_VISIBLE_DEVICES=-1\n" {
						t.Errorf("env = %q", stdout)
					}
				},
			},
		},
		{
			command: []string{"env"},
			runCase: runCase{
				name: "command looked up in the spec's PATH",
				env:  map[string]string{"PATH": "/usr/bin:/bin"},
				check: func(t *testing.T, r Result, stdout, _, _ string) {
					wantOK(t, r)
					if !strings.HasPrefix(stdout, "PATH=/usr/bin:/bin\n") {
						t.Errorf("env = %q", stdout)
					}
				},
			},
		},
		{
			command: []string{"sh", "-c", "pwd; echo data > out.txt"},
			runCase: runCase{
				name: "runs in job dir",
				check: func(t *testing.T, r Result, stdout, _, dir string) {
					wantOK(t, r)
					if real, _ := filepath.EvalSymlinks(dir); strings.TrimSpace(stdout) != real && strings.TrimSpace(stdout) != dir {
						t.Errorf("pwd %q, job dir %q", stdout, dir)
					}
					if b, err := os.ReadFile(filepath.Join(dir, "out.txt")); err != nil || string(b) != "data\n" {
						t.Errorf("out.txt: %q %v", b, err)
					}
				},
			},
		},
		{
			command: []string{"sh", "-c", "sleep 100 & echo $!; sleep 100"},
			runCase: runCase{
				name:    "max_duration kills the process group",
				timeout: time.Second,
				check: func(t *testing.T, r Result, stdout, _, _ string) {
					wantExit(t, r, -1, ReasonTimeout)
					if r.Wall > 10*time.Second {
						t.Errorf("took %v", r.Wall)
					}
					waitGone(t, firstPid(t, stdout), 5*time.Second)
				},
			},
		},
		{
			command: []string{"sh", "-c", "sleep 100 & echo $!"},
			runCase: runCase{
				name:    "leftovers are killed when the main process exits",
				timeout: 30 * time.Second,
				check: func(t *testing.T, r Result, stdout, _, _ string) {
					wantOK(t, r)
					if r.Wall > 10*time.Second {
						t.Errorf("took %v: waited for the background process", r.Wall)
					}
					waitGone(t, firstPid(t, stdout), 5*time.Second)
				},
			},
		},
		{
			command: []string{"sleep", "100"},
			runCase: runCase{
				name:   "cancel",
				cancel: 200 * time.Millisecond,
				check: func(t *testing.T, r Result, _, _, _ string) {
					wantExit(t, r, -1, ReasonCancelled)
				},
			},
		},
		{
			// The limit is set just after the start: wait until the shell
			// has it, then run something that needs more.
			command: []string{"sh", "-c", `until grep -q "Max address space *67108864 *67108864" /proc/$$/limits; do :; done; echo limited; exec "$0" alloc 256`},
			runCase: runCase{
				name:    "memory limit",
				memMib:  64,
				timeout: 20 * time.Second,
				setup: func(t *testing.T, _ string) []string {
					return []string{sampleBin(t)}
				},
				check: func(t *testing.T, r Result, stdout, stderr, _ string) {
					if r.ExitCode == 0 || r.Reason == ReasonTimeout || !strings.HasPrefix(stdout, "limited\n") || strings.Contains(stdout, "allocated") {
						t.Errorf("got %+v stdout %q stderr %q; want a failed alloc after the limit", r, stdout, trunc(stderr))
					}
				},
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, stdout, stderr, dir := runJob(t, p, &pb.JobSpec{Executor: "process", Command: c.command}, nil, c.runCase)
			c.check(t, r, stdout, stderr, dir)
		})
	}
}

func TestProcessBadJobs(t *testing.T) {
	t.Parallel()
	p := NewProcess(ProcessOptions{})
	cases := []struct {
		name string
		spec *pb.JobSpec
	}{
		{"no command", &pb.JobSpec{}},
		{"not found", &pb.JobSpec{Command: []string{"mira-no-such-command"}}},
		{"not in the job's PATH", &pb.JobSpec{Command: []string{"sh"}, Env: []*pb.EnvVar{{Name: "PATH", Value: "/nonexistent"}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			job := &Job{Spec: c.spec, Dir: t.TempDir(), Stdout: &syncBuffer{}, Stderr: &syncBuffer{}}
			if r, err := p.Run(t.Context(), job); err == nil {
				t.Fatalf("no error; result %+v", r)
			}
		})
	}
}
