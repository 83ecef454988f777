package runner

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// outputsDir is the directory, in a job's scratch dir, whose files come
// back to the requester as the job's outputs: /out for a wasm guest,
// /work/out in a container, ./out for a process. It exists, empty, when
// the job starts.
const outputsDir = "out"

const (
	// maxOutputEntries bounds the files and directories an outputs
	// archive holds, and so what reading a job's out/ costs the provider.
	maxOutputEntries = 10000
	// maxOutputDepth bounds how deep directories in out/ may nest: the
	// walk holds one open directory per level.
	maxOutputDepth = 64
)

var (
	// errOutputsTooLarge means a job's outputs do not fit the blob limit.
	errOutputsTooLarge = errors.New("outputs over the blob limit")
	// errTooManyOutputs means more than maxOutputEntries files and
	// directories.
	errTooManyOutputs = fmt.Errorf("outputs: more than %d files and directories in %s/", maxOutputEntries, outputsDir)
	// errOutputsTooDeep means directories nested more than maxOutputDepth
	// levels.
	errOutputsTooDeep = fmt.Errorf("outputs: directories in %s/ nested more than %d deep", outputsDir, maxOutputDepth)
	// errOutputsProvider means the provider failed to read or write the
	// archive (too many open files, an I/O error): not the job's doing.
	errOutputsProvider = errors.New("outputs could not be archived")
)

// openFlags open one name in a directory: never through a link (a link
// is ELOOP), never waiting on a FIFO.
const openFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC

// archiveOutputs writes the regular files and directories under out/ in
// the scratch dir to w as a tar archive, and reports how many entries it
// holds. The archive depends only on the names, contents and executable
// bits: entries in lexical order, no owners, no times. Symbolic links
// and special files are left out. Each name is opened relative to its
// directory's open handle with O_NOFOLLOW, so no link, not even one that
// a still-running process swaps in during the walk, is ever followed.
// fs.ErrNotExist means out/ is gone (or is not a directory): no outputs.
// More than limit bytes of archive, maxOutputEntries entries or
// maxOutputDepth levels is an error. Errors the job caused name only the
// path under the scratch dir, in valid UTF-8: their text goes into the
// signed result.
func archiveOutputs(scratch string, w io.Writer, limit int64) (entries int, err error) {
	out, err := openOutputs(scratch)
	if err != nil {
		return 0, err
	}
	a := &archiver{w: &limitedWriter{w: w, left: limit}}
	a.tw = tar.NewWriter(a.w)
	err = a.dir(out, "", 0) // closes out
	if err == nil {
		err = a.tw.Close()
	}
	switch {
	case a.w.over:
		return a.entries, fmt.Errorf("%w (%d bytes)", errOutputsTooLarge, limit)
	case a.w.err != nil:
		return a.entries, fmt.Errorf("%w: %w", errOutputsProvider, a.w.err)
	}
	return a.entries, err
}

// openOutputs opens out/ in the scratch dir; fs.ErrNotExist if the job
// removed it or put something else (a link, a file) in its place.
func openOutputs(scratch string) (*os.File, error) {
	sfd, err := unix.Open(scratch, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: scratch dir: %w", errOutputsProvider, err)
	}
	defer unix.Close(sfd)
	fd, err := unix.Openat(sfd, outputsDir, openFlags|unix.O_DIRECTORY, 0)
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		return nil, fs.ErrNotExist
	case err != nil:
		return nil, outputsErr(outputsDir, err)
	}
	return os.NewFile(uintptr(fd), outputsDir), nil
}

// outputsEmpty reports whether out/ in the scratch dir holds nothing (or
// is gone): the common case, which stores no archive.
func outputsEmpty(scratch string) bool {
	d, err := openOutputs(scratch)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	return len(names) == 0 && err == io.EOF
}

// archiver is one walk of a job's out/ directory.
type archiver struct {
	w       *limitedWriter
	tw      *tar.Writer
	entries int // written to the archive
	seen    int // read from directories
}

// dir archives what the open directory d (at rel under out/, "" for out/
// itself, depth levels down) holds, in lexical order, and closes d. Its
// own entry is written by the caller.
func (a *archiver) dir(d *os.File, rel string, depth int) error {
	list, err := a.list(d, rel)
	if err != nil {
		d.Close()
		return err
	}
	defer d.Close()
	for _, name := range list {
		child := path.Join(rel, name)
		fd, err := unix.Openat(int(d.Fd()), name, openFlags, 0)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOENT) {
			continue // a link, or gone since the listing
		}
		if err != nil {
			return outputsErr(path.Join(outputsDir, child), err)
		}
		f := os.NewFile(uintptr(fd), name)
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return outputsErr(path.Join(outputsDir, child), err)
		}
		h := &tar.Header{Name: child, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		switch {
		case fi.IsDir():
			if depth+1 > maxOutputDepth {
				f.Close()
				return errOutputsTooDeep
			}
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, child+"/", 0o755
			if err := a.write(h, nil); err != nil {
				f.Close()
				return err
			}
			if err := a.dir(f, child, depth+1); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			h.Typeflag, h.Size, h.Mode = tar.TypeReg, fi.Size(), 0o644
			if fi.Mode()&0o111 != 0 {
				h.Mode = 0o755
			}
			err := a.write(h, f)
			f.Close()
			if err != nil {
				return err
			}
		default:
			f.Close() // a FIFO, socket or device: left out
		}
	}
	return nil
}

// list returns the names in the open directory d, sorted, counting them
// against maxOutputEntries as they are read.
func (a *archiver) list(d *os.File, rel string) ([]string, error) {
	var names []string
	for {
		batch, err := d.Readdirnames(256)
		names = append(names, batch...)
		if a.seen += len(batch); a.seen > maxOutputEntries {
			return nil, errTooManyOutputs
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, outputsErr(path.Join(outputsDir, rel), err)
		}
	}
	slices.Sort(names)
	return names, nil
}

// write adds header h and, for a file, h.Size bytes of f: the size read
// when it was opened, so a file that grows meanwhile is cut there.
func (a *archiver) write(h *tar.Header, f *os.File) error {
	if h.Size > a.w.left {
		a.w.over = true
		return errOutputsTooLarge
	}
	if err := a.tw.WriteHeader(h); err != nil {
		return err
	}
	if f != nil {
		if _, err := io.CopyN(a.tw, f, h.Size); err != nil {
			if a.w.over || a.w.err != nil {
				return err // reported by archiveOutputs
			}
			return outputsErr(path.Join(outputsDir, h.Name), err)
		}
	}
	a.entries++
	return nil
}

// outputsErr reports a failure to read a job's outputs. What the job
// caused (a file it made unreadable) is its error, with only the path
// under the scratch dir, in valid UTF-8 (the job picks its file names; the
// text is signed into a protobuf string); anything else is the
// provider's (errOutputsProvider).
func outputsErr(name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w: %s: %w", errOutputsProvider, name, err)
	}
	if len(name) > 200 {
		name = name[:200] + "…"
	}
	return fmt.Errorf("outputs: %s: %v", strings.ToValidUTF8(name, "?"), strings.ToValidUTF8(err.Error(), "?"))
}

// limitedWriter passes at most left bytes on and fails past that. It
// notes why it failed: over the limit, or the writer's own error.
type limitedWriter struct {
	w    io.Writer
	left int64
	over bool
	err  error
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, errOutputsTooLarge
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	if err != nil {
		l.err = err
	}
	return n, err
}
