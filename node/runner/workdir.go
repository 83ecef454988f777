package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// workDirName is the data dir's folder of runs' scratch dirs.
const workDirName = "work"

// sweepWork removes what runs left in the data dir's work/: a node that
// stopped mid-run (a crash, a kill), or a removal that failed. No run is
// under way when it is called, at start-up.
func (r *Runner) sweepWork() {
	dir := filepath.Join(r.cfg.DataDir, workDirName)
	des, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("work dir not swept", "dir", dir, "err", err)
		}
		return
	}
	for _, de := range des {
		r.removeWork(filepath.Join(dir, de.Name()))
	}
	if len(des) > 0 {
		r.log.Info("removed what earlier runs left in the work dir", "count", len(des))
	}
}

// removeWork removes a run's work dir, and logs when it cannot: what is
// left there is the provider's disk, and the next start sweeps it again.
func (r *Runner) removeWork(dir string) {
	if err := removeTree(dir); err != nil {
		r.log.Warn("work dir not removed", "dir", dir, "err", err)
	}
}

// removeTree removes dir and everything under it, whatever modes a job
// left there. A directory the job made unwritable or unreadable (chmod
// 0500, 0000) cannot be emptied by a node that is not root, and
// os.RemoveAll fails on it: then every directory in the tree is first
// given u+rwx (openUp), and the removal tried again.
func removeTree(dir string) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	if err := openUp(dir); err != nil {
		return fmt.Errorf("open up %s: %w", dir, err)
	}
	return os.RemoveAll(dir)
}

// openUp gives dir and every directory under it u+rwx. dir is the node's
// own; below it the walk goes through an os.Root of each directory, one
// level at a time, so a symbolic link a job left (or swaps in meanwhile)
// is never followed out of the tree, and no path it uses grows past
// PATH_MAX however deep the tree is.
func openUp(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return err
	}
	if err := os.Chmod(dir, fi.Mode().Perm()|0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return openUpRoot(root)
}

// openUpRoot gives every directory in root u+rwx, before it reads it.
func openUpRoot(root *os.Root) error {
	f, err := root.Open(".")
	if err != nil {
		return err
	}
	des, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range des {
		if !de.IsDir() { // a link to a directory is not one
			continue
		}
		errs = append(errs, openUpEntry(root, de.Name()))
	}
	return errors.Join(errs...)
}

func openUpEntry(parent *os.Root, name string) error {
	fi, err := parent.Lstat(name)
	if err != nil || !fi.IsDir() {
		return err
	}
	// Root.Chmod follows a link swapped in since the Lstat, but only
	// within root: never out of the tree.
	if err := parent.Chmod(name, fi.Mode().Perm()|0o700); err != nil {
		return err
	}
	sub, err := parent.OpenRoot(name)
	if err != nil {
		return err
	}
	defer sub.Close()
	return openUpRoot(sub)
}
