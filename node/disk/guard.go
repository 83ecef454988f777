// Package disk watches the free space of a node's data dir and keeps a
// reserve for the node's database.
//
// Badger writes its write-ahead log, value log and tables through memory
// maps. On a full filesystem a write to a page that has no block yet does
// not return ENOSPC: the process dies of SIGBUS (dgraph-io/badger#1682,
// #1801). So the node must never let the filesystem fill under Badger. The
// Guard does two things:
//
//   - Below MinFree it reports the disk as low: the node refuses new work
//     (jobs, blobs, bids, peers' ledger entries) but keeps serving reads and
//     settling what it has.
//   - The database asks it before every write (Room), measuring the disk
//     then, and a write that would not find room for Badger's worst case
//     (a memtable's log filling and flushing) is refused with an error
//     instead of being allowed to fault.
//   - It holds a reserve file of Reserve bytes (a ballast, really
//     allocated) while space is plentiful, and gives it to the database
//     when a write, a clean close or an open would otherwise find no room:
//     so a disk that another program filled still lets the node settle,
//     stop and start again. The reserve comes back once free space is
//     above MinFree+Reserve again.
//
// A program that fills the disk in the moment between a check and
// Badger's write can still beat it; the check before every write makes
// that moment short.
package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ReserveFile is the reserve's name in the data dir.
const ReserveFile = "disk.reserve"

// ErrLow is the error of work refused because the disk is low.
var ErrLow = errors.New("data dir low on disk space")

// ErrFull is the error of a write refused because the disk has no room
// for it even without the reserve.
var ErrFull = errors.New("data dir full")

// Options configure a Guard.
type Options struct {
	// MinFree is the free space below which the node refuses new work.
	MinFree uint64
	// Reserve is the size of the reserve file; 0 keeps none.
	Reserve uint64
	// Free reports the free space of the filesystem holding a path; the
	// default asks statfs. Tests pass their own.
	Free func(path string) (uint64, error)
	Log  *slog.Logger
}

// Status is what a Guard saw at its last check.
type Status struct {
	// Free is the free space of the data dir's filesystem in bytes, as
	// an unprivileged process may use it.
	Free uint64 `json:"free_bytes"`
	// MinFree is the threshold below which the disk is low.
	MinFree uint64 `json:"min_free_bytes"`
	// Low is set while new work is refused.
	Low bool `json:"low"`
	// Reserved is the size of the reserve file held now.
	Reserved uint64 `json:"reserved_bytes"`
	// Err is why the last check failed, if it did.
	Err string `json:"error,omitempty"`
}

// Guard watches one data dir. Its methods are safe for concurrent use.
type Guard struct {
	dir  string
	opts Options

	mu     sync.Mutex
	status Status
	// changed is signalled (never waited on) when Low changes: Room runs
	// inside database writes, on whatever goroutine writes, so it must
	// not call out to anything that could wait for that goroutine.
	changed chan struct{}
}

// New returns a Guard for dir that has not checked yet (it reads as not
// low). It removes nothing and allocates nothing until Check.
func New(dir string, opts Options) *Guard {
	if opts.Free == nil {
		opts.Free = statfsFree
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	g := &Guard{dir: dir, opts: opts, changed: make(chan struct{}, 1)}
	g.status.MinFree = opts.MinFree
	if st, err := os.Stat(g.reservePath()); err == nil {
		g.status.Reserved = uint64(st.Size())
	}
	return g
}

// Changed is signalled whenever the disk turns low or recovers; several
// changes before the reader looks are one signal, so read Status then.
func (g *Guard) Changed() <-chan struct{} { return g.changed }

func (g *Guard) reservePath() string { return filepath.Join(g.dir, ReserveFile) }

// Status returns the last check's result.
func (g *Guard) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.status
}

// Low returns ErrLow, with the figures, while the disk is low; nil
// otherwise.
func (g *Guard) Low() error {
	s := g.Status()
	if !s.Low {
		return nil
	}
	return fmt.Errorf("%w: %s free, below min_free_mib (%s); free some space", ErrLow, mib(s.Free), mib(s.MinFree))
}

// Check measures free space now, takes the reserve when there is room
// for it, and returns the status.
func (g *Guard) Check() Status {
	return g.measure(0)
}

// Room makes sure need bytes are free for a write about to happen: it
// measures the disk now (one statfs), gives the reserve to the write if
// that makes the difference, and returns an error naming the figures if
// need bytes are still not free. The database asks it before every write,
// so a disk that another program filled since the last check is seen
// before Badger writes, not after.
func (g *Guard) Room(need uint64) error {
	s := g.measure(need)
	switch {
	case s.Err != "":
		return errors.New(s.Err)
	case s.Free < need:
		return fmt.Errorf("%w: %s free in %s, need %s", ErrFull, mib(s.Free), g.dir, mib(need))
	}
	return nil
}

// measure reads the free space, releases the reserve if need bytes are not
// free without it, takes it back if there is room for it, and tells
// Changed's reader when Low changed.
func (g *Guard) measure(need uint64) Status {
	g.mu.Lock()
	was := g.status.Low
	free, err := g.opts.Free(g.dir)
	if err != nil {
		// A failed statfs says nothing of the disk: keep the last view.
		g.status.Err = err.Error()
		s := g.status
		g.mu.Unlock()
		return s
	}
	g.status.Err, g.status.Free = "", free
	switch {
	case free < need && g.status.Reserved > 0:
		g.release()
	case g.status.Reserved < g.opts.Reserve && free >= g.opts.MinFree+g.opts.Reserve:
		g.take()
	}
	// Without its reserve the node is low until there is room for both:
	// the reserve is what lets it settle and restart on a full disk.
	g.status.Low = g.status.Free < g.opts.MinFree || g.status.Reserved < g.opts.Reserve
	s := g.status
	g.mu.Unlock()
	if s.Low == was {
		return s
	}
	if s.Low {
		g.opts.Log.Warn("data dir low on disk space: refusing new work, settling what runs", "dir", g.dir,
			"free", mib(s.Free), "min_free", mib(g.opts.MinFree), "reserve_held", s.Reserved > 0)
	} else {
		g.opts.Log.Info("disk space back: taking new work again", "dir", g.dir, "free", mib(s.Free))
	}
	select {
	case g.changed <- struct{}{}:
	default: // a signal is pending already
	}
	return s
}

// release deletes the reserve file, so its blocks go to the database.
func (g *Guard) release() {
	if err := os.Remove(g.reservePath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		g.opts.Log.Error("release disk reserve", "err", err)
		return
	}
	g.opts.Log.Warn("released the disk reserve for the database", "size", mib(g.status.Reserved))
	g.status.Reserved = 0
	if free, err := g.opts.Free(g.dir); err == nil {
		g.status.Free = free
	}
}

// take allocates the reserve file (real blocks, not a sparse file).
func (g *Guard) take() {
	if err := allocate(g.reservePath(), g.opts.Reserve); err != nil {
		g.opts.Log.Warn("allocate disk reserve", "err", err)
		return
	}
	g.status.Reserved = g.opts.Reserve
	if free, err := g.opts.Free(g.dir); err == nil {
		g.status.Free = free
	}
}

// allocate makes path a file of size bytes whose blocks are allocated.
func allocate(path string, size uint64) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(f.Fd()), 0, 0, int64(size))
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = writeZeros(f, size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func writeZeros(f *os.File, size uint64) error {
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, uint64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
		left -= n
	}
	return f.Sync()
}

// statfsFree is the space an unprivileged process may still use on the
// filesystem that holds path.
func statfsFree(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// OpenNeed estimates the free space Badger needs to open the database in
// dir: its write-ahead logs are replayed into memtables and flushed into
// tables, about their allocated size, plus room for a fresh log's first
// pages.
func OpenNeed(dir string) uint64 {
	const fresh = 2 << 20
	need := uint64(fresh)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return need
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".mem") {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, e.Name()), &st) == nil {
			need += uint64(st.Blocks) * 512
		}
	}
	return need
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
