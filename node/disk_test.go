package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/testnet"
)

// smallFilesystem mounts a tmpfs of sizeMiB for the test and unmounts it
// afterwards. Mounting needs root (CI runs as root); elsewhere it skips.
func smallFilesystem(t *testing.T, sizeMiB int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(sizeMiB)+"m,mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("mounting a tmpfs needs root: %v: %s", err, out)
		}
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("sh", "-c", "du -ak "+dir+" | sort -n | tail -25; ls -la "+dir+"/*/db").CombinedOutput()
			t.Logf("%s", out)
		}
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file on dir's filesystem until the filesystem is full,
// as a log or a download of another program would, and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "filler-*")
	if err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	if f == nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i) // not zeros, in case the filesystem is clever
	}
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return f.Name()
		}
	}
}

func diskLow(n *node.Node, want bool) func() error {
	return func() error {
		if got := n.NodeInfo().Disk; got.Low != want {
			return fmt.Errorf("disk low is %v, want %v (%+v)", got.Low, want, got)
		}
		return nil
	}
}

// TestFullDiskRefusesWorkAndSurvives is finding 7 of the hardening review:
// with the data dir's filesystem filled by someone else while jobs run, a
// node died of SIGBUS in Badger's memory-mapped writes, and again in
// badger.Open after a restart. Now it refuses new work with a reason,
// settles what runs, resumes when space returns, and restarts on the full
// disk.
func TestFullDiskRefusesWorkAndSurvives(t *testing.T) {
	fs := smallFilesystem(t, 256)
	ctx := context.Background()
	tn, err := testnet.Start(ctx, testnet.Options{Nodes: 2, Dir: fs, Configure: func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Disk.MinFreeMiB, cfg.Disk.ReserveMiB = 48, 20
		cfg.Disk.CheckInterval = node.Duration(50 * time.Millisecond)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := apiClient(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	first, err := c.SubmitJob(ctx, noopJob("interactive", "10ms", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{first.ID}, "succeeded", deadline)

	// A job is running when the disk fills.
	running, err := c.SubmitJob(ctx, noopJob("interactive", "2s", "2m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{running.ID}, "running", deadline)
	filler := fill(t, fs)
	for i, n := range tn.Nodes() {
		if err := testnet.WaitFor(ctx, deadline, diskLow(n, true)); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
	}
	_, err = c.SubmitJob(ctx, noopJob("interactive", "10ms", "1m"))
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusInsufficientStorage || !strings.Contains(se.Message, "low on disk space") {
		t.Fatalf("a job submitted on a full disk: %v, want 507 naming the disk", err)
	}
	if err := putBlob(c, "input"); err == nil || !strings.Contains(err.Error(), "507") {
		t.Fatalf("a blob put on a full disk: %v, want 507", err)
	}
	// What ran ends (its settlement waits for room if the filler took the
	// reserve too); reads are served.
	if err := testnet.WaitFor(ctx, deadline, func() error {
		j, err := c.Job(ctx, running.ID)
		if err == nil && j.State != "succeeded" {
			err = fmt.Errorf("job %s is %s", j.ID[:8], j.State)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Balance(ctx, ""); err != nil {
		t.Fatal(err)
	}

	// Space returns: work resumes.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for i, n := range tn.Nodes() {
		if err := testnet.WaitFor(ctx, deadline, diskLow(n, false)); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
	}
	after, err := c.SubmitJob(ctx, noopJob("interactive", "10ms", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	for id, j := range waitJobs(t, c, []string{running.ID, after.ID}, "succeeded", deadline) {
		if j.Payment == nil || j.Payment.State != "paid" {
			t.Errorf("job %s: payment %+v", id[:8], j.Payment)
		}
	}

	// Full again, and the requester restarts: it starts, low, and says so.
	filler = fill(t, fs)
	if err := testnet.WaitFor(ctx, deadline, diskLow(tn.Node(0), true)); err != nil {
		t.Fatal(err)
	}
	if err := tn.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(ctx, 0); err != nil {
		t.Fatalf("restart on a full disk: %v", err)
	}
	if err := diskLow(tn.Node(0), true)(); err != nil {
		t.Fatalf("restarted on a full disk: %v", err)
	}
	c = apiClient(t, tn, 0)
	if _, err := c.Job(ctx, after.ID); err != nil {
		t.Fatal(err)
	}

	// With not even the reserve's room left, a start is refused with a
	// reason, not a crash; once space is back it starts and catches up.
	if err := tn.Stop(0); err != nil {
		t.Fatal(err)
	}
	more := fill(t, fs)
	err = tn.Restart(ctx, 0)
	if err == nil || !strings.Contains(err.Error(), "free some space") {
		t.Fatalf("start with no room at all: %v, want a refusal naming the disk", err)
	}
	for _, f := range []string{filler, more} {
		if f != "" {
			os.Remove(f)
		}
	}
	if err := tn.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(ctx, deadline, diskLow(tn.Node(0), false)); err != nil {
		t.Fatal(err)
	}
	ledgersAgree(t, tn)
}

func apiClient(t *testing.T, tn *testnet.Testnet, i int) *api.Client {
	t.Helper()
	c, err := api.NewClientFromDataDir(tn.Dir(i))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func putBlob(c *api.Client, body string) error {
	req, err := http.NewRequest(http.MethodPost, c.BaseURL+"/v1/blobs", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return errors.New(resp.Status + ": " + string(msg))
	}
	return nil
}
