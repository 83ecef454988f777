package runner

import (
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/mira-market/mira/market"
)

// closedTree makes, under dir, what a job can leave in its scratch dir to
// keep a node that is not root from removing it: a directory it made
// 0500 (nothing in it can be unlinked), one it made 0000 (not even
// listed), and a link to a directory outside the tree, which must not be
// followed (its mode stays).
func closedTree(t *testing.T, dir, outside string) {
	t.Helper()
	for _, p := range []string{"job/out/locked/closed", "job/inputs"} {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"job/out/locked/file", "job/out/locked/closed/file", "job/inputs/in"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(dir, "job", "out", "escape")); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]fs.FileMode{"job/out/locked/closed": 0, "job/out/locked": 0o500, "job": 0o500} {
		if err := os.Chmod(filepath.Join(dir, p), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRemoveTreeOpensUpWhatTheJobClosed: a run's work dir goes however
// the job left its modes. (The tests run as root, for whom a 0500 or
// 0000 directory stops nothing: so openUp's work is checked by the
// modes it sets, and the removal by the tree being gone.)
func TestRemoveTreeOpensUpWhatTheJobClosed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "work", "job.1")
	outside := filepath.Join(t.TempDir(), "provider-dir")
	if err := os.Mkdir(outside, 0o500); err != nil {
		t.Fatal(err)
	}
	closedTree(t, dir, outside)
	if err := openUp(dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".", "job", "job/out", "job/out/locked", "job/out/locked/closed", "job/inputs"} {
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o700 != 0o700 {
			t.Errorf("%s has mode %v after openUp, want u+rwx", p, fi.Mode().Perm())
		}
	}
	if fi, err := os.Stat(outside); err != nil || fi.Mode().Perm() != 0o500 {
		t.Fatalf("the directory the link points to: %v, %v; want it untouched (0500)", fi.Mode(), err)
	}
	again := filepath.Join(t.TempDir(), "again")
	closedTree(t, again, outside) // removeTree does it all
	for _, d := range []string{dir, again} {
		if err := removeTree(d); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(d); !os.IsNotExist(err) {
			t.Fatalf("%s still there (%v)", d, err)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatalf("the link's target went with the tree: %v", err)
	}
}

// TestSweepWorkRemovesLeftovers: what a run left in DATA/work (a node
// killed mid-run, a removal that failed) goes at the next start.
func TestSweepWorkRemovesLeftovers(t *testing.T) {
	data := t.TempDir()
	n := &Runner{cfg: Config{DataDir: data}, log: slog.New(slog.DiscardHandler)}
	closedTree(t, filepath.Join(data, workDirName, "abc.1"), t.TempDir())
	if err := os.WriteFile(filepath.Join(data, workDirName, "stray"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.sweepWork()
	des, err := os.ReadDir(filepath.Join(data, workDirName))
	if err != nil || len(des) != 0 {
		t.Fatalf("work dir after the sweep: %d entries, %v", len(des), err)
	}
	n.sweepWork() // an empty (or missing) work dir is fine
	os.Remove(filepath.Join(data, workDirName))
	n.sweepWork()
}

// TestRequesterTextHidesTheDataDir: a run's error that names the
// provider's data dir, however written, reaches the requester as a fixed
// text; others go as they are.
func TestRequesterTextHidesTheDataDir(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	n := &Runner{cfg: Config{DataDir: link}, log: slog.New(slog.DiscardHandler)}
	l := &market.Lease{Attempt: 1}
	for _, c := range []struct {
		text string
		hide bool
	}{
		{"", false},
		{"disk quota exceeded", false},
		{"wasm: compile: invalid magic number", false},
		{"scratch dir: mkdir " + link + "/work/j.1: no space left on device", true},
		{"lstat " + real + "/work/j.1/job/x: file name too long", true},
	} {
		got := n.requesterText(l, c.text)
		if hidden := got != c.text; hidden != c.hide {
			t.Errorf("requesterText(%q) = %q; want hidden %v", c.text, got, c.hide)
		}
	}
}
