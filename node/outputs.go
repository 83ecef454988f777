package node

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
	"syscall"
	"time"
)

// outputsDir is the directory, in a job's scratch dir, whose files come
// back to the requester as the job's outputs: /out for a wasm guest,
// /work/out in a container, ./out for a process.
const outputsDir = "out"

// maxOutputEntries bounds the files and directories an outputs archive
// holds, and so what reading a job's out/ costs the provider.
const maxOutputEntries = 10000

var (
	// errOutputsTooLarge means a job's outputs do not fit the blob limit.
	errOutputsTooLarge = errors.New("outputs over the blob limit")
	// errTooManyOutputs means more than maxOutputEntries files and
	// directories.
	errTooManyOutputs = fmt.Errorf("outputs: more than %d files and directories in %s/", maxOutputEntries, outputsDir)
	// errOutputsWrite means the archive could not be written out: the
	// provider's failure, not the job's.
	errOutputsWrite = errors.New("outputs archive not written")
)

// archiveOutputs writes the regular files and directories under out/ in
// the scratch dir to w as a tar archive, and reports how many files it
// holds. The archive depends only on the names, contents and executable
// bits: entries in lexical order, no owners, no times. Symbolic links
// and special files are left out; every name is resolved inside the
// scratch dir (os.Root), so a link, even one a still-running job swaps in
// during the walk, never leads to the provider's own files. More than
// limit bytes of archive, or more than maxOutputEntries entries, is an
// error. Errors name the path relative to the scratch dir only: their
// text goes into the signed result.
func archiveOutputs(scratch string, w io.Writer, limit int64) (files int, err error) {
	root, err := os.OpenRoot(scratch)
	if err != nil {
		return 0, outputsErr(".", err)
	}
	defer root.Close()
	if err := outputsDirOf(root); err != nil {
		return 0, err
	}
	a := &archiver{root: root, w: &limitedWriter{w: w, left: limit}}
	a.tw = tar.NewWriter(a.w)
	err = a.dir(outputsDir)
	if err == nil {
		err = a.tw.Close()
	}
	switch {
	case a.w.over:
		return a.files, fmt.Errorf("%w (%d bytes)", errOutputsTooLarge, limit)
	case a.w.err != nil:
		return a.files, fmt.Errorf("%w: %w", errOutputsWrite, a.w.err)
	}
	return a.files, err
}

// outputsEmpty reports whether out/ in the scratch dir holds nothing (or
// is not a directory): the common case, which stores no archive.
func outputsEmpty(scratch string) bool {
	root, err := os.OpenRoot(scratch)
	if err != nil {
		return false // archiveOutputs reports it
	}
	defer root.Close()
	if err := outputsDirOf(root); err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	d, err := root.Open(outputsDir)
	if err != nil {
		return false
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	return len(names) == 0 && err == io.EOF
}

// outputsDirOf checks that out/ in the scratch dir is a directory:
// fs.ErrNotExist if the job removed it or put something else there.
func outputsDirOf(root *os.Root) error {
	fi, err := root.Lstat(outputsDir)
	switch {
	case errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir():
		return fs.ErrNotExist
	case err != nil:
		return outputsErr(outputsDir, err)
	}
	return nil
}

// archiver is one walk of a job's out/ directory.
type archiver struct {
	root    *os.Root
	w       *limitedWriter
	tw      *tar.Writer
	entries int
	files   int
}

// dir archives the directory at name (relative to the scratch dir) and
// what it holds, in lexical order. Its own entry is written by the caller.
func (a *archiver) dir(name string) error {
	d, err := a.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_DIRECTORY, 0)
	if err != nil {
		return outputsErr(name, err)
	}
	var list []fs.DirEntry
	for {
		batch, err := d.ReadDir(256)
		list = append(list, batch...)
		if a.entries += len(batch); a.entries > maxOutputEntries {
			d.Close()
			return errTooManyOutputs
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			d.Close()
			return outputsErr(name, err)
		}
	}
	d.Close()
	slices.SortFunc(list, func(x, y fs.DirEntry) int { return strings.Compare(x.Name(), y.Name()) })
	for _, e := range list {
		rel := path.Join(name, e.Name())
		// The archive's names are relative to out/.
		h := &tar.Header{Name: strings.TrimPrefix(rel, outputsDir+"/"), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		switch {
		case e.IsDir():
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			if err := a.tw.WriteHeader(h); err != nil {
				return err
			}
			if err := a.dir(rel); err != nil {
				return err
			}
		case e.Type().IsRegular():
			if err := a.file(rel, h); err != nil {
				return err
			}
		}
	}
	return nil
}

// file archives the regular file at name under header h. O_NOFOLLOW and
// O_NONBLOCK: a name swapped for a link or a FIFO since the directory was
// read is neither followed nor waited on, and then left out.
func (a *archiver) file(name string, h *tar.Header) error {
	f, err := a.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil // now a link
	}
	if err != nil {
		return outputsErr(name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return outputsErr(name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	if fi.Size() > a.w.left {
		a.w.over = true
		return errOutputsTooLarge
	}
	h.Typeflag, h.Size, h.Mode = tar.TypeReg, fi.Size(), 0o644
	if fi.Mode()&0o111 != 0 {
		h.Mode = 0o755
	}
	if err := a.tw.WriteHeader(h); err != nil {
		return err
	}
	// The size read at open: a file that grows meanwhile is cut there.
	if _, err := io.CopyN(a.tw, f, fi.Size()); err != nil {
		if a.w.over || a.w.err != nil {
			return err // reported by archiveOutputs
		}
		return outputsErr(name, err)
	}
	a.files++
	return nil
}

// outputsErr reports a failure to read a job's outputs without the
// provider's own paths and with valid UTF-8 (a job picks its file names;
// the text is signed into a protobuf string).
func outputsErr(name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
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
