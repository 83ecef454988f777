package executor

import (
	"io"
	"io/fs"
	"sync"
	"sync/atomic"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/sys"
)

// diskQuota is a wasm job's exact account of its scratch dir. Every call
// of the guest that can make the dir bigger passes through sandboxFS,
// which reserves the growth here first and refuses the call when it would
// take the job past its limit, so the dir never holds more than its
// starting size plus the limit. Costs are those of scratchUsage: a file's
// size rounded up to blocks (at least one block), a block for every further
// name and for every directory. A call that would make a file end past
// maxFileEnd is refused before any of that arithmetic. Space comes back when it is really freed:
// a truncation at once, a file's last name when no handle of the guest
// holds it open, else at its last close.
//
// The guest sees a refused call fail with EIO: wazero's WASI layer has no
// ENOSPC or EDQUOT, and maps those of the host to EIO too.
type diskQuota struct {
	limit    int64
	floor    int64       // the least used can be: minus what the dir held at the start
	exceeded atomic.Bool // a call was refused

	mu   sync.Mutex
	used int64             // bytes added since the start; below zero (down to floor) once the job deletes its inputs
	open map[sys.Inode]int // handles the guest holds, by inode (one filesystem: the scratch dir)
}

// maxFileEnd bounds where a guest's write or truncation may end: far
// past any quota, and far enough below 2^63 that no sum or rounding in
// the quota's arithmetic can wrap around (a wrapped cost once refunded a
// guest more than it ever reserved, and switched its quota off).
const maxFileEnd = 1 << 62

// newDiskQuota is the account of a dir that held base bytes (as
// scratchUsage counts them) when the run started: the guest may add limit
// bytes, and what it deletes gives back no more than the dir held.
func newDiskQuota(limit, base int64) *diskQuota {
	return &diskQuota{limit: limit, floor: -max(base, 0), open: map[sys.Inode]int{}}
}

// reserve takes n bytes from the quota, or refuses with EIO.
func (q *diskQuota) reserve(n int64) experimentalsys.Errno {
	if n <= 0 {
		q.release(-n)
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if n > q.limit-q.used { // not q.used+n > q.limit: n may be near 2^63
		q.exceeded.Store(true)
		return experimentalsys.EIO
	}
	q.used += n
	return 0
}

// tooFar refuses a call that would make a file end past maxFileEnd, as
// the quota refuses (EIO: wazero has no EFBIG either), and the run fails
// for its disk: no quota allows that much.
func (q *diskQuota) tooFar() experimentalsys.Errno {
	q.exceeded.Store(true)
	return experimentalsys.EIO
}

// release gives n bytes back; used never drops below floor, whatever an
// accounting slip would refund.
func (q *diskQuota) release(n int64) {
	if n <= 0 {
		return
	}
	q.mu.Lock()
	if n > q.used-q.floor {
		q.used = q.floor
	} else {
		q.used -= n
	}
	q.mu.Unlock()
}

func (q *diskQuota) isOpen(ino sys.Inode) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.open[ino] > 0
}

func (q *diskQuota) opened(ino sys.Inode) {
	q.mu.Lock()
	q.open[ino]++
	q.mu.Unlock()
}

// closed drops a handle and reports whether it was the inode's last.
func (q *diskQuota) closed(ino sys.Inode) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.open[ino]--
	if q.open[ino] > 0 {
		return false
	}
	delete(q.open, ino)
	return true
}

// removed accounts for a name the guest removed (by unlink or by a rename
// over it) whose file st described just before: the file's space comes
// back with its last name, unless the guest still holds it open (then at
// the last close); a further name is one block.
func (q *diskQuota) removed(st sys.Stat_t) {
	switch {
	case !st.Mode.IsRegular() || st.Nlink > 1:
		q.release(diskBlock)
	case !q.isOpen(st.Ino):
		q.release(charge(st.Size))
	}
}

// sandboxFS is a guest's view of its job directory: the directory as is,
// except that it may not create symbolic links, which could point out of it
// and would be followed by the host, and, with a quota, that what it adds
// is accounted and capped.
type sandboxFS struct {
	experimentalsys.FS
	quota *diskQuota // nil: no quota
}

// Symlink implements sys.FS by refusing.
func (sandboxFS) Symlink(_, _ string) experimentalsys.Errno { return experimentalsys.EPERM }

// OpenFile implements sys.FS: a new file costs a block, a truncated one
// gives its space back, and the handle accounts for its writes.
func (s sandboxFS) OpenFile(path string, flag experimentalsys.Oflag, perm fs.FileMode) (experimentalsys.File, experimentalsys.Errno) {
	q := s.quota
	if q == nil {
		return s.FS.OpenFile(path, flag, perm)
	}
	var before sys.Stat_t
	exists := false
	if flag&(experimentalsys.O_CREAT|experimentalsys.O_TRUNC) != 0 {
		st, errno := s.FS.Lstat(path)
		before, exists = st, errno == 0
	}
	created := flag&experimentalsys.O_CREAT != 0 && !exists
	if created {
		if errno := q.reserve(diskBlock); errno != 0 {
			return nil, errno
		}
	}
	f, errno := s.FS.OpenFile(path, flag, perm)
	if errno != 0 {
		if created {
			q.release(diskBlock)
		}
		return nil, errno
	}
	if exists && flag&experimentalsys.O_TRUNC != 0 && before.Mode.IsRegular() {
		q.release(charge(before.Size) - charge(0))
	}
	ino, errno := f.Ino()
	if errno != 0 {
		f.Close()
		return nil, errno
	}
	if dir, _ := f.IsDir(); dir {
		return f, 0 // a directory handle cannot write
	}
	q.opened(ino)
	return &quotaFile{File: f, quota: q, ino: ino}, 0
}

// Mkdir implements sys.FS: a directory costs a block.
func (s sandboxFS) Mkdir(path string, perm fs.FileMode) experimentalsys.Errno {
	return s.adding(func() experimentalsys.Errno { return s.FS.Mkdir(path, perm) })
}

// Link implements sys.FS: a further name costs a block.
func (s sandboxFS) Link(oldPath, newPath string) experimentalsys.Errno {
	return s.adding(func() experimentalsys.Errno { return s.FS.Link(oldPath, newPath) })
}

// adding runs op, which adds one name, against the quota.
func (s sandboxFS) adding(op func() experimentalsys.Errno) experimentalsys.Errno {
	if s.quota == nil {
		return op()
	}
	if errno := s.quota.reserve(diskBlock); errno != 0 {
		return errno
	}
	errno := op()
	if errno != 0 {
		s.quota.release(diskBlock)
	}
	return errno
}

// Rmdir implements sys.FS: the block its Mkdir cost comes back.
func (s sandboxFS) Rmdir(path string) experimentalsys.Errno {
	errno := s.FS.Rmdir(path)
	if errno == 0 && s.quota != nil {
		s.quota.release(diskBlock)
	}
	return errno
}

// Unlink implements sys.FS.
func (s sandboxFS) Unlink(path string) experimentalsys.Errno {
	if s.quota == nil {
		return s.FS.Unlink(path)
	}
	st, errno := s.FS.Lstat(path)
	if errno != 0 {
		return s.FS.Unlink(path) // the underlying error
	}
	if errno = s.FS.Unlink(path); errno == 0 {
		s.quota.removed(st)
	}
	return errno
}

// Rename implements sys.FS: a name it replaces is removed. Renaming a
// file onto a name of its own (itself, or another hard link) changes
// nothing (POSIX), and gives nothing back.
func (s sandboxFS) Rename(from, to string) experimentalsys.Errno {
	if s.quota == nil {
		return s.FS.Rename(from, to)
	}
	st, errno := s.FS.Lstat(to)
	replaced := errno == 0
	if src, errno := s.FS.Lstat(from); replaced && errno == 0 && src.Dev == st.Dev && src.Ino == st.Ino {
		replaced = false
	}
	if errno = s.FS.Rename(from, to); errno == 0 && replaced {
		if st.Mode.IsDir() {
			s.quota.release(diskBlock)
		} else {
			s.quota.removed(st)
		}
	}
	return errno
}

// quotaFile is a guest's handle of a file in a dir with a quota: each call
// that can grow the file reserves the growth first, from the file's size
// as the kernel has it (another handle may have changed it).
type quotaFile struct {
	experimentalsys.File
	quota *diskQuota
	ino   sys.Inode
}

// Write implements sys.File.
func (f *quotaFile) Write(buf []byte) (int, experimentalsys.Errno) {
	st, errno := f.File.Stat()
	if errno != 0 {
		return 0, errno
	}
	off := st.Size // an append lands at the end
	if !f.File.IsAppend() {
		if off, errno = f.File.Seek(0, io.SeekCurrent); errno != 0 {
			return 0, errno
		}
	}
	return f.write(st.Size, off, len(buf), func() (int, experimentalsys.Errno) { return f.File.Write(buf) })
}

// Pwrite implements sys.File.
func (f *quotaFile) Pwrite(buf []byte, off int64) (int, experimentalsys.Errno) {
	st, errno := f.File.Stat()
	if errno != 0 {
		return 0, errno
	}
	return f.write(st.Size, off, len(buf), func() (int, experimentalsys.Errno) { return f.File.Pwrite(buf, off) })
}

// write runs op, a write of want bytes at off into the file of the given
// size, against the quota: it reserves the growth first and gives back
// what a short write did not use.
func (f *quotaFile) write(size, off int64, want int, op func() (int, experimentalsys.Errno)) (int, experimentalsys.Errno) {
	if off < 0 || want < 0 || off > maxFileEnd-int64(want) {
		if off < 0 {
			return 0, experimentalsys.EINVAL
		}
		return 0, f.quota.tooFar()
	}
	cost := charge(max(size, off+int64(want))) - charge(size)
	if errno := f.quota.reserve(cost); errno != 0 {
		return 0, errno
	}
	n, errno := op()
	if n < want {
		f.quota.release(cost - (charge(max(size, off+int64(max(n, 0)))) - charge(size)))
	}
	return n, errno
}

// Truncate implements sys.File: growing costs, shrinking gives back.
func (f *quotaFile) Truncate(size int64) experimentalsys.Errno {
	switch {
	case size < 0:
		return experimentalsys.EINVAL
	case size > maxFileEnd:
		return f.quota.tooFar()
	}
	st, errno := f.File.Stat()
	if errno != 0 {
		return errno
	}
	delta := charge(size) - charge(st.Size)
	if errno := f.quota.reserve(max(delta, 0)); errno != 0 {
		return errno
	}
	if errno := f.File.Truncate(size); errno != 0 {
		f.quota.release(max(delta, 0))
		return errno
	}
	if delta < 0 {
		f.quota.release(-delta)
	}
	return 0
}

// Close implements sys.File: the last handle of a file whose names are all
// gone gives its space back.
func (f *quotaFile) Close() experimentalsys.Errno {
	if f.quota.closed(f.ino) {
		if st, errno := f.File.Stat(); errno == 0 && st.Nlink == 0 && st.Mode.IsRegular() {
			f.quota.release(charge(st.Size))
		}
	}
	return f.File.Close()
}
