// Package blob stores content-addressed blobs (job inputs and results) in a
// node's data dir and moves them between nodes over the blob stream
// protocol: chunked, resumable from a partial download, and checked
// against the content ID on arrival. The store knows why it keeps each
// blob (its Kind) and which requesters delivered it, and collects
// evictable blobs to stay within a size budget.
package blob

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
)

// ErrNotFound is returned for a blob the store does not hold.
var ErrNotFound = errors.New("blob not found")

// ErrTooLarge is returned for a blob over the store's size limit.
var ErrTooLarge = errors.New("blob too large")

// ErrMismatch is returned when a blob's bytes do not hash to its ID.
var ErrMismatch = errors.New("blob content does not match its ID")

// ErrFull is returned for a blob that does not fit in the store's budget
// even after every evictable blob is gone.
var ErrFull = errors.New("blob store full")

// Defaults of Options.
const (
	DefaultHeldFor    = 24 * time.Hour
	DefaultPartialTTL = time.Hour
)

// Options configure a Store.
type Options struct {
	// MaxSize is the largest blob the store accepts, in bytes.
	MaxSize int64
	// Budget bounds the bytes of all stored blobs; 0 is no bound. A write
	// that would pass it first evicts Cached blobs (and Held ones past
	// their retention), least recently used first, and is refused with
	// ErrFull when that is not enough.
	Budget int64
	// HeldFor is how long a Held blob is kept after it was stored
	// (DefaultHeldFor if 0).
	HeldFor time.Duration
	// PartialTTL is how long a partial download or upload may sit
	// untouched before the collector removes it (DefaultPartialTTL if 0).
	PartialTTL time.Duration
	// MaxPartialPerRequester bounds the bytes one requester's partial
	// downloads (its inputs and modules, under way or cut) count against
	// the budget; 4 × MaxSize if 0.
	MaxPartialPerRequester int64
	// Index keeps the blobs' kinds and holders across restarts; nil keeps
	// them in memory only.
	Index Index
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// Log receives what the collector does; nil discards it.
	Log *slog.Logger
}

// Store keeps blobs as files named by their SHA-256 in one directory;
// partial downloads sit beside them with a ".part" suffix. Its records of
// the blobs (kinds, holders, last use) are guarded by one mutex, under
// which every file is also created (renamed into place) and removed, so
// the collector never races a write or a use.
type Store struct {
	dir string
	opt Options

	mu      sync.Mutex
	blobs   map[string]*entry // by file name (hex SHA-256)
	inUse   map[string]int    // names staged or served: never evicted
	writing map[string]int    // partial files being written
	used    int64             // bytes of blobs
	// partials are the partial downloads' files, by name (see partial.go).
	partials map[string]*partial
	// reserved is the bytes of partial downloads: the whole blob for one
	// under way, what the file holds for one cut.
	reserved int64
	stats    GCStats
}

// NewStore opens (creating) a store in dir, and reads back its records.
// A blob file with no record (a data dir from before records were kept)
// is kept as the operator's: pinned, never evicted.
func NewStore(dir string, opt Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	if opt.HeldFor <= 0 {
		opt.HeldFor = DefaultHeldFor
	}
	if opt.PartialTTL <= 0 {
		opt.PartialTTL = DefaultPartialTTL
	}
	if opt.MaxPartialPerRequester <= 0 {
		opt.MaxPartialPerRequester = 4 * opt.MaxSize
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: dir, opt: opt, blobs: map[string]*entry{}, inUse: map[string]int{}, writing: map[string]int{}, partials: map[string]*partial{}}
	if err := s.load(); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	return s, nil
}

// MaxSize is the largest blob the store accepts.
func (s *Store) MaxSize() int64 { return s.opt.MaxSize }

// nameOf is the file name of id: its SHA-256 in hex.
func nameOf(id cid.Cid) (string, error) {
	_, sum, err := protocol.ParseBlobID(id.String())
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(sum), nil
}

// isBlobName reports whether a file name is a blob's (not a partial).
func isBlobName(name string) bool {
	if len(name) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

func (s *Store) pathOf(name string) string { return filepath.Join(s.dir, name) }

func (s *Store) path(id cid.Cid) (string, error) {
	name, err := nameOf(id)
	if err != nil {
		return "", err
	}
	return s.pathOf(name), nil
}

// load reads the directory and the index: a record whose file is gone (a
// crash between writing the record and renaming the file, or a blob
// removed by hand) is dropped; a file without a record is adopted.
func (s *Store) load() error {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	s.loadPartials(des)
	files := map[string]os.FileInfo{}
	for _, de := range des {
		if !isBlobName(de.Name()) || !de.Type().IsRegular() {
			continue
		}
		if info, err := de.Info(); err == nil {
			files[de.Name()] = info
		}
	}
	if s.opt.Index != nil {
		var stale []string
		err := s.opt.Index.BlobRecords(func(name string, rec []byte) error {
			info, ok := files[name]
			if !ok {
				stale = append(stale, name)
				return nil
			}
			e, err := decodeEntry(rec)
			if err != nil {
				s.opt.Log.Warn("unreadable blob record; the blob is kept as the operator's", "blob", name, "err", err)
				return nil
			}
			e.size = info.Size()
			s.blobs[name] = e
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range stale {
			if err := s.opt.Index.DeleteBlobRecord(name); err != nil {
				return err
			}
		}
	}
	adopted := 0
	for name, info := range files {
		if _, ok := s.blobs[name]; !ok {
			e := &entry{kinds: Operator, size: info.Size(), used: info.ModTime()}
			if err := s.persist(name, e); err != nil {
				return err
			}
			s.blobs[name] = e
			adopted++
		}
	}
	for _, e := range s.blobs {
		s.used += e.size
	}
	if adopted > 0 && s.opt.Index != nil {
		s.opt.Log.Info("blobs without a record kept as the operator's (pinned; DELETE /v1/blobs/{id} frees one)", "count", adopted)
	}
	return nil
}

// persist writes e's record. Called with s.mu held (or before the store
// is shared).
func (s *Store) persist(name string, e *entry) error {
	if s.opt.Index == nil {
		e.usedStored = e.used
		return nil
	}
	if err := s.opt.Index.PutBlobRecord(name, e.encode()); err != nil {
		return err
	}
	e.usedStored = e.used
	return nil
}

// Put stores what r yields as a blob of kind, and returns its content ID
// and size.
func (s *Store) Put(r io.Reader, kind Kind) (cid.Cid, int64, error) {
	return s.PutFor(r, kind, "")
}

// PutFor is Put of a blob for holder: a Held result for the requester
// of its job, whose retention ends once holder has fetched it (Served).
// It does not make holder one that delivered the bytes (HeldBy).
func (s *Store) PutFor(r io.Reader, kind Kind, holder peer.ID) (cid.Cid, int64, error) {
	tmp, err := os.CreateTemp(s.dir, "put-*.part")
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("blob put: %w", err)
	}
	done := s.writingTo(filepath.Base(tmp.Name()))
	defer done()
	defer os.Remove(tmp.Name()) // a no-op once renamed
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, s.opt.MaxSize+1))
	if err == nil && n > s.opt.MaxSize {
		err = fmt.Errorf("%w: limit %d bytes", ErrTooLarge, s.opt.MaxSize)
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
	if err := s.commit(id, tmp.Name(), n, kind, holder, ""); err != nil {
		return cid.Undef, 0, fmt.Errorf("blob put: %w", err)
	}
	return id, n, nil
}

// PutBytes stores b as a blob of kind.
func (s *Store) PutBytes(b []byte, kind Kind) (cid.Cid, error) {
	id, _, err := s.Put(bytes.NewReader(b), kind)
	return id, err
}

// commit moves the checked file from into place as blob id of kind
// (delivered by holder, if any), making room within the budget beyond
// what the partial download partialFile (if any) has reserved; once the
// blob is in place the partial's record goes. The record is written
// before the rename: a crash between the two leaves a record without a
// file, which the next load drops, never a file of unknown kind.
func (s *Store) commit(id cid.Cid, from string, size int64, kind Kind, holder peer.ID, partialFile string) error {
	name, err := nameOf(id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opt.Now()
	var promised int64
	if rec, ok := s.partials[partialFile]; ok {
		promised = rec.n
	}
	if e, ok := s.blobs[name]; ok {
		os.Remove(from) // the same bytes are here already
		s.forgetPartial(partialFile)
		s.mark(name, e, kind, holder, now)
		return nil
	}
	if size > promised {
		if err := s.makeRoom(size-promised, now); err != nil {
			return err
		}
	}
	e := &entry{size: size, used: now}
	e.apply(kind, holder, now, s.opt.HeldFor)
	if err := s.persist(name, e); err != nil {
		return err
	}
	if err := os.Rename(from, s.pathOf(name)); err != nil {
		if s.opt.Index != nil {
			s.opt.Index.DeleteBlobRecord(name)
		}
		return err
	}
	s.forgetPartial(partialFile)
	s.blobs[name] = e
	s.used += size
	return nil
}

// apply adds kind and holder to e; it reports whether the record changed.
func (e *entry) apply(kind Kind, holder peer.ID, now time.Time, heldFor time.Duration) bool {
	changed := e.kinds&kind != kind
	e.kinds |= kind
	if kind&Held != 0 {
		if until := now.Add(heldFor); until.After(e.heldUntil) {
			e.heldUntil, changed = until, true
		}
	}
	// A Held blob's holder is the requester it is kept for (PutFor), not
	// one that delivered its bytes: the provider made them, and they are
	// the requester's only once it paid for them (the market then opens
	// them to it). Recorded as a holder (HeldBy), it could stage them as
	// its next job's input unpaid.
	switch {
	case holder == "":
	case kind&Held != 0:
		changed = e.addWaiting(holder) || changed
	default:
		changed = e.addHolder(holder) || changed
	}
	return changed
}

// mark adds kind and holder to the blob name, and counts it as used now.
// Called with s.mu held.
func (s *Store) mark(name string, e *entry, kind Kind, holder peer.ID, now time.Time) {
	changed := e.apply(kind, holder, now, s.opt.HeldFor)
	e.used = now
	if changed || now.Sub(e.usedStored) >= touchPersist {
		if err := s.persist(name, e); err != nil {
			s.opt.Log.Warn("store blob record", "blob", name, "err", err)
		}
	}
}

// Mark adds kind (and holder, if any) to a stored blob and returns its
// size; false if the store does not hold it.
func (s *Store) Mark(id cid.Cid, kind Kind, holder peer.ID) (int64, bool) {
	name, err := nameOf(id)
	if err != nil {
		return 0, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[name]
	if !ok {
		return 0, false
	}
	s.mark(name, e, kind, holder, s.opt.Now())
	return e.size, true
}

// Served records that p was sent the whole of blob id: a Held blob kept
// for p (the requester of the job whose result it is; PutFor) has reached
// it. Once every requester it was kept for has fetched it, its retention
// ends: it stays, evictable like a cached blob, least recently used
// first.
func (s *Store) Served(id cid.Cid, p peer.ID) {
	name, err := nameOf(id)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[name]
	now := s.opt.Now()
	if !ok || e.kinds&Held == 0 || !slices.Contains(e.waiting, p) {
		return
	}
	e.waiting = slices.DeleteFunc(e.waiting, func(q peer.ID) bool { return q == p })
	if len(e.waiting) == 0 && now.Before(e.heldUntil) {
		e.heldUntil = now
	}
	if err := s.persist(name, e); err != nil {
		s.opt.Log.Warn("store blob record", "blob", name, "err", err)
	}
}

// HeldBy reports whether the store holds id and p delivered its bytes
// (checked against the ID): the proof that p may use this copy.
func (s *Store) HeldBy(id cid.Cid, p peer.ID) bool {
	name, err := nameOf(id)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[name]
	return ok && e.heldBy(p)
}

// KindOf returns the kinds of a stored blob; false if the store does not
// hold it.
func (s *Store) KindOf(id cid.Cid) (Kind, bool) {
	name, err := nameOf(id)
	if err != nil {
		return 0, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[name]
	if !ok {
		return 0, false
	}
	return e.kinds, true
}

// Use keeps the collector away from id (held or not yet) until the
// returned func is called: a blob being staged for a run stays, from
// before it is fetched until it is copied.
func (s *Store) Use(id cid.Cid) (release func()) {
	name, err := nameOf(id)
	if err != nil {
		return func() {}
	}
	s.mu.Lock()
	s.inUse[name]++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.inUse[name]--; s.inUse[name] == 0 {
				delete(s.inUse, name)
			}
			s.mu.Unlock()
		})
	}
}

// File is an open stored blob; the collector leaves the blob alone until
// it is closed.
type File struct {
	*os.File
	release func()
}

// Close closes the file and lets the collector have the blob again.
func (f *File) Close() error {
	f.release()
	return f.File.Close()
}

// Open opens a stored blob for reading, counts it as used, and returns
// its size. The blob is not collected while the file is open.
func (s *Store) Open(id cid.Cid) (*File, int64, error) {
	name, err := nameOf(id)
	if err != nil {
		return nil, 0, err
	}
	release := s.Use(id)
	f, err := os.Open(s.pathOf(name))
	if errors.Is(err, os.ErrNotExist) {
		release()
		return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		release()
		return nil, 0, fmt.Errorf("blob open: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		release()
		f.Close()
		return nil, 0, fmt.Errorf("blob open: %w", err)
	}
	s.Mark(id, 0, "")
	return &File{File: f, release: release}, st.Size(), nil
}

// Has reports whether the store holds id.
func (s *Store) Has(id cid.Cid) bool {
	name, err := nameOf(id)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blobs[name]
	return ok
}

// ReadAll returns a stored blob's bytes; for small blobs such as modules.
func (s *Store) ReadAll(id cid.Cid) ([]byte, error) {
	f, _, err := s.Open(id)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f.File)
}

// writingTo marks a partial file as being written, so the collector
// leaves it; the returned func unmarks it.
func (s *Store) writingTo(name string) func() {
	s.mu.Lock()
	s.writing[name]++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.writing[name]--; s.writing[name] == 0 {
			delete(s.writing, name)
		}
		s.mu.Unlock()
	}
}
