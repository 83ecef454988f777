// Package blob stores content-addressed blobs (job inputs and results) in a
// node's data dir and moves them between nodes over the blob stream
// protocol: chunked, resumable from a partial download, and checked
// against the content ID on arrival.
package blob

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ipfs/go-cid"

	"github.com/mira-market/mira/protocol"
)

// ErrNotFound is returned for a blob the store does not hold.
var ErrNotFound = errors.New("blob not found")

// ErrTooLarge is returned for a blob over the store's size limit.
var ErrTooLarge = errors.New("blob too large")

// ErrMismatch is returned when a blob's bytes do not hash to its ID.
var ErrMismatch = errors.New("blob content does not match its ID")

// Store keeps blobs as files named by their SHA-256 in one directory;
// partial downloads sit beside them with a ".part" suffix.
type Store struct {
	dir     string
	maxSize int64
}

// NewStore opens (creating) a store in dir that holds blobs of at most
// maxSize bytes.
func NewStore(dir string, maxSize int64) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	return &Store{dir: dir, maxSize: maxSize}, nil
}

// MaxSize is the largest blob the store accepts.
func (s *Store) MaxSize() int64 { return s.maxSize }

func (s *Store) path(id cid.Cid) (string, error) {
	_, sum, err := protocol.ParseBlobID(id.String())
	if err != nil {
		return "", err
	}
	return filepath.Join(s.dir, fmt.Sprintf("%x", sum)), nil
}

// Put stores what r yields and returns its content ID and size.
func (s *Store) Put(r io.Reader) (cid.Cid, int64, error) {
	tmp, err := os.CreateTemp(s.dir, "put-*.part")
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("blob put: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, s.maxSize+1))
	if err == nil && n > s.maxSize {
		err = fmt.Errorf("%w: limit %d bytes", ErrTooLarge, s.maxSize)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("blob put: %w", err)
	}
	id, err := protocol.BlobID(h.Sum(nil))
	if err != nil {
		return cid.Undef, 0, err
	}
	p, _ := s.path(id)
	if err := os.Rename(tmp.Name(), p); err != nil {
		return cid.Undef, 0, fmt.Errorf("blob put: %w", err)
	}
	return id, n, nil
}

// PutBytes stores b.
func (s *Store) PutBytes(b []byte) (cid.Cid, error) {
	id, _, err := s.Put(bytes.NewReader(b))
	return id, err
}

// Open opens a stored blob for reading and returns its size.
func (s *Store) Open(id cid.Cid) (*os.File, int64, error) {
	p, err := s.path(id)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blob open: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("blob open: %w", err)
	}
	return f, st.Size(), nil
}

// Has reports whether the store holds id.
func (s *Store) Has(id cid.Cid) bool {
	p, err := s.path(id)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// ReadAll returns a stored blob's bytes; for small blobs such as modules.
func (s *Store) ReadAll(id cid.Cid) ([]byte, error) {
	f, _, err := s.Open(id)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// partial opens the partial download of id for appending and returns how
// many bytes it already holds.
func (s *Store) partial(id cid.Cid) (*os.File, int64, error) {
	p, err := s.path(id)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(p+".part", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("blob partial: %w", err)
	}
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("blob partial: %w", err)
	}
	return f, off, nil
}

// complete checks a finished partial download against id and moves it into
// place; a mismatch deletes it so the next source starts from zero.
func (s *Store) complete(id cid.Cid, f *os.File) error {
	p, _ := s.path(id)
	_, want, _ := protocol.ParseBlobID(id.String())
	h := sha256.New()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("blob check: %w", err)
	}
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("blob check: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("blob check: %w", err)
	}
	f.Close()
	if got := h.Sum(nil); string(got) != string(want) {
		os.Remove(p + ".part")
		return fmt.Errorf("%w: %s hashed to %x", ErrMismatch, id, got)
	}
	if err := os.Rename(p+".part", p); err != nil {
		return fmt.Errorf("blob complete: %w", err)
	}
	return nil
}

// dropPartial deletes a partial download of id.
func (s *Store) dropPartial(id cid.Cid) {
	if p, err := s.path(id); err == nil {
		os.Remove(p + ".part")
	}
}
