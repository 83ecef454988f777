package executor

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"math"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// errDiskQuota is the cause a disk watcher cancels a run with.
var errDiskQuota = errors.New(ReasonDiskQuota)

// errScratchUnreadable is the cause a disk watcher cancels a run with when
// the job made part of its scratch dir unreadable to the provider, which
// could then neither measure it nor archive its outputs.
var errScratchUnreadable = errors.New("disk quota: the job made its scratch dir unreadable to the provider")

// errScratchUnmeasurable is the cause a disk watcher cancels a run with
// when it cannot measure the scratch dir for another reason (a tree
// deeper than PATH_MAX, say). Its text names no path: it goes to the
// requester, the details to the provider's log.
var errScratchUnmeasurable = errors.New("disk quota: the provider could not measure the job's scratch dir")

// diskBlock is the unit of the disk quota: every file is charged its size
// rounded up to whole blocks, and every name (file, directory, link) at
// least one block, so that a million empty files are not free.
const diskBlock = 4 << 10

// maxCharge is the most charge returns: the largest multiple of
// diskBlock an int64 holds.
const maxCharge = math.MaxInt64 &^ (diskBlock - 1)

// charge is what an inode of the given size costs against the quota. It
// saturates at maxCharge instead of wrapping around past 2^63.
func charge(size int64) int64 {
	switch {
	case size <= diskBlock:
		return diskBlock
	case size > maxCharge:
		return maxCharge
	}
	return (size + diskBlock - 1) / diskBlock * diskBlock
}

// scratchUsage is what dir and everything under it cost against the quota:
// the charge of each file's size or of the blocks it holds, whichever is
// more (holes included: a sparse file costs its length; and blocks
// allocated past a file's end with fallocate's FALLOC_FL_KEEP_SIZE cost
// what they take, though its size stays 0), each inode once however many
// names it has, and one block for every further name, directory or other
// entry. Symbolic links are not followed. Entries that vanish during the
// walk are skipped; a directory it may not read is an error
// (errScratchUnreadable).
//
// Blocks past the end count as soon as they are allocated: on a
// filesystem that preallocates past a growing file's end (XFS's
// speculative preallocation) a job near its quota can be stopped a little
// early, until the file is closed and the excess trimmed.
//
// A file unlinked while a process holds it open has no name left to
// walk: its blocks are not counted. RLIMIT_FSIZE bounds each such file,
// and jobNoFile the files a process can hold open.
func scratchUsage(dir string) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if errors.Is(err, fs.ErrPermission) {
				return errScratchUnreadable
			}
			return err
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			total = addCharge(total, charge(info.Size()))
			return nil
		}
		if info.Mode().IsRegular() {
			key := inode{uint64(st.Dev), st.Ino}
			if st.Nlink > 1 && seen[key] {
				total = addCharge(total, diskBlock) // another name of a file already counted
				return nil
			}
			seen[key] = true
		}
		total = addCharge(total, charge(max(info.Size(), blockBytes(st.Blocks))))
		return nil
	})
	return total, err
}

// blockBytes is the bytes of n 512-byte blocks (st_blocks' unit),
// saturating at maxCharge.
func blockBytes(n int64) int64 {
	if n > maxCharge/512 {
		return maxCharge
	}
	return n * 512
}

// addCharge is a+b, saturating at maxCharge.
func addCharge(a, b int64) int64 {
	if b > maxCharge-a {
		return maxCharge
	}
	return a + b
}

// jobNoFile is the RLIMIT_NOFILE of process jobs and the nofile ulimit
// of containers with a disk quota: a file unlinked while open escapes the
// watcher's walk, so what such files can hold is bounded by the files a
// process may keep open, each within RLIMIT_FSIZE.
const jobNoFile = 1024

// Disk polling: a watcher measures the scratch dir every diskPoll, or every
// diskPollFactor walks' time when the tree is large, so that watching costs
// at most a tenth of a core. A walk of a dir of a few files takes tens of
// microseconds.
const (
	diskPoll       = 10 * time.Millisecond
	diskPollFactor = 10
)

// diskWatch watches a running job's scratch dir for the executors that
// cannot refuse the write itself (docker, process): it measures the dir
// every poll and calls stop with errDiskQuota once it holds more than
// quota bytes beyond its usage when the watch began (or with
// errScratchUnreadable). A job can overshoot by what it writes in one
// poll interval plus one walk. done, called when the run has ended (any
// number of times), stops the watch and measures once more, so that a job
// that exits between two polls is still caught.
type diskWatch struct {
	dir   string
	log   *slog.Logger
	quota int64
	base  int64
	stop  context.CancelCauseFunc
	quit  chan struct{}
	ended chan struct{}
	cause error // set by the watcher before ended is closed
	// done returns the reason the run should report: ReasonDiskQuota, the
	// text of errScratchUnreadable or errScratchUnmeasurable, or "".
	done func() string
}

// watchDisk starts watching dir; quota <= 0 watches nothing. A walk that
// fails is logged to log, and the run told only errScratchUnmeasurable.
func watchDisk(dir string, quota int64, stop context.CancelCauseFunc, log *slog.Logger) (*diskWatch, error) {
	w := &diskWatch{dir: dir, log: log, quota: quota, stop: stop, quit: make(chan struct{}), ended: make(chan struct{})}
	if quota <= 0 {
		w.done = func() string { return "" }
		return w, nil
	}
	base, err := measureScratch(dir, log)
	if err != nil {
		return nil, err
	}
	w.base = base
	w.done = sync.OnceValue(w.finish)
	go w.loop()
	return w, nil
}

// measureScratch is scratchUsage(dir) for a run's start: its error, for
// the requester, is errScratchUnreadable or errScratchUnmeasurable, and
// the details, which name the provider's paths, go to log.
func measureScratch(dir string, log *slog.Logger) (int64, error) {
	used, err := scratchUsage(dir)
	switch {
	case errors.Is(err, errScratchUnreadable):
		return 0, errScratchUnreadable
	case err != nil:
		log.Warn("disk quota: the scratch dir could not be measured", "dir", dir, "err", err)
		return 0, errScratchUnmeasurable
	}
	return used, nil
}

func (w *diskWatch) loop() {
	defer close(w.ended)
	for {
		t := time.Now()
		if err := w.check(); err != nil {
			w.cause = err
			w.stop(err)
			return
		}
		wait := max(diskPoll, diskPollFactor*time.Since(t))
		timer := time.NewTimer(wait)
		select {
		case <-w.quit:
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// check measures the dir once: nil while within the quota.
func (w *diskWatch) check() error {
	used, err := scratchUsage(w.dir)
	switch {
	case errors.Is(err, errScratchUnreadable):
		return errScratchUnreadable
	case err != nil:
		// The error names the provider's paths: the log gets it, the
		// requester a fixed text.
		w.log.Warn("disk watch: the scratch dir could not be measured; the run is stopped", "dir", w.dir, "err", err)
		return errScratchUnmeasurable
	case used-w.base > w.quota:
		return errDiskQuota
	}
	return nil
}

func (w *diskWatch) finish() string {
	close(w.quit)
	<-w.ended
	if w.cause == nil {
		w.cause = w.check()
	}
	switch {
	case w.cause == nil:
		return ""
	case errors.Is(w.cause, errDiskQuota):
		return ReasonDiskQuota
	default:
		return w.cause.Error()
	}
}

// fsizeLimit is the RLIMIT_FSIZE that goes with a quota: no single file may
// grow past the quota (one byte more, so that a file that reaches the limit
// is seen to break the quota). A job that hits it gets EFBIG (and SIGXFSZ).
func fsizeLimit(quota int64) uint64 { return uint64(quota) + 1 }
