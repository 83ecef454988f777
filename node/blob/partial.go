package blob

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
)

// Partial downloads. A download writes into a partial file beside the
// blobs, so that a cut transfer resumes where it stopped. Each is its
// owner's: a download of a requester's input or module (FetchFor) has a
// file of its own per requester, named by the blob and a tag of the
// requester, so that one requester's bytes never complete, nor poison,
// another's; the node's own downloads (Fetch) share one per blob.
//
// Partial files count against the budget while they exist: a download
// under way counts the whole blob (reserved before its bytes arrive), a
// cut one what it holds, until it resumes, completes or is removed (by
// the collector after PartialTTL, or to make room: idle partial files go
// before any cached blob). A requester's partial files hold at most
// MaxPartialPerRequester bytes: past it its oldest idle ones go, and a
// download that still does not fit is refused.

// partial is the store's record of a partial file.
type partial struct {
	owner   string    // ownerTag of its requester; "" for the node's own downloads
	n       int64     // bytes it counts in Store.reserved
	touched time.Time // last reserved or settled, on the store's clock
}

// ownerTag names a requester in its partial files' names: a hash of its
// peer ID, 128 bits (a peer ID's bytes are not all safe in a file name).
func ownerTag(p peer.ID) string {
	if p == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(p))
	return hex.EncodeToString(sum[:16])
}

// partialName is the file name of owner's partial download of the blob
// named name: NAME.part for the node's own, NAME.OWNER.part for a
// requester's.
func partialName(name, owner string) string {
	if owner == "" {
		return name + ".part"
	}
	return name + "." + owner + ".part"
}

// parsePartialName returns the owner of a download's partial file name;
// false for any other name (an upload's put-*.part, say).
func parsePartialName(file string) (owner string, ok bool) {
	base, ok := strings.CutSuffix(file, ".part")
	if !ok {
		return "", false
	}
	name, owner, _ := strings.Cut(base, ".")
	if !isBlobName(name) {
		return "", false
	}
	if owner != "" {
		if b, err := hex.DecodeString(owner); err != nil || len(b) != 16 {
			return "", false
		}
	}
	return owner, true
}

// loadPartials records the partial files a store's dir holds (from
// before a restart): they count against the budget as they are.
// Called before the store is shared.
func (s *Store) loadPartials(des []fs.DirEntry) {
	now := s.opt.Now()
	for _, de := range des {
		owner, ok := parsePartialName(de.Name())
		if !ok || !de.Type().IsRegular() {
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue
		}
		s.partials[de.Name()] = &partial{owner: owner, n: info.Size(), touched: now}
		s.reserved += info.Size()
	}
}

// partialFile is a partial download open for writing.
type partialFile struct {
	s    *Store
	name string // its file name
	f    *os.File
	off  int64 // bytes it held when opened
	done func()
	gone bool // committed or removed: nothing to settle
}

// openPartial opens owner's partial download of id for appending (creating
// it), and marks it as being written.
func (s *Store) openPartial(id cid.Cid, owner string) (*partialFile, error) {
	name, err := nameOf(id)
	if err != nil {
		return nil, err
	}
	name = partialName(name, owner)
	done := s.writingTo(name)
	f, err := os.OpenFile(s.pathOf(name), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		done()
		return nil, fmt.Errorf("blob partial: %w", err)
	}
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		done()
		return nil, fmt.Errorf("blob partial: %w", err)
	}
	s.mu.Lock()
	if _, ok := s.partials[name]; !ok {
		// A new file (or one the collector just removed): what it
		// holds counts from now.
		s.partials[name] = &partial{owner: owner, n: off, touched: s.opt.Now()}
		s.reserved += off
	}
	s.mu.Unlock()
	return &partialFile{s: s, name: name, f: f, off: off, done: done}, nil
}

// reserve counts the whole blob, size bytes, against the budget for this
// download before its bytes arrive, so that concurrent downloads cannot
// together pass it: within its owner's cap (dropping the owner's oldest
// idle partial files), then within the budget (makeRoom).
func (pf *partialFile) reserve(size int64) error {
	s := pf.s
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.partials[pf.name]
	need := size - rec.n
	if need <= 0 {
		return nil
	}
	now := s.opt.Now()
	if rec.owner != "" {
		if err := s.ownerRoom(rec.owner, pf.name, need); err != nil {
			return err
		}
	}
	if err := s.makeRoom(need, now); err != nil {
		return err
	}
	s.reserved += need
	rec.n, rec.touched = size, now
	return nil
}

// close closes the file and, unless it was committed or removed, counts
// what it holds now instead of what was reserved: a cut download's bytes
// stay counted until it resumes or goes.
func (pf *partialFile) close() {
	defer pf.done()
	var size int64 = -1
	if !pf.gone {
		if info, err := pf.f.Stat(); err == nil {
			size = info.Size()
		}
	}
	pf.f.Close()
	if pf.gone {
		return
	}
	s := pf.s
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.partials[pf.name]
	if !ok {
		return
	}
	if size < 0 { // cannot tell: keep counting what was reserved
		return
	}
	s.reserved += size - rec.n
	rec.n, rec.touched = size, s.opt.Now()
}

// drop removes the partial file, whatever it holds.
func (pf *partialFile) drop() {
	s := pf.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removePartial(pf.name)
	pf.gone = true
}

// removePartial removes a partial file and its record. Called with s.mu
// held.
func (s *Store) removePartial(name string) bool {
	if err := os.Remove(s.pathOf(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.opt.Log.Warn("remove partial blob", "file", name, "err", err)
		return false
	}
	s.forgetPartial(name)
	return true
}

// forgetPartial drops the record of a partial file that is gone (renamed
// into place, or removed). Called with s.mu held.
func (s *Store) forgetPartial(name string) int64 {
	rec, ok := s.partials[name]
	if !ok {
		return 0
	}
	s.reserved -= rec.n
	delete(s.partials, name)
	return rec.n
}

// idlePartials are the partial files no download is writing (of owner,
// or of anyone when owner is "*"), oldest first. Called with s.mu held.
func (s *Store) idlePartials(owner string) []string {
	var names []string
	for name, rec := range s.partials {
		if s.writing[name] == 0 && (owner == "*" || rec.owner == owner) {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(s.partials[a].touched.Compare(s.partials[b].touched), strings.Compare(a, b))
	})
	return names
}

// ownerRoom makes room for need more bytes of owner's partial files
// besides except (the one asking), dropping the owner's oldest idle ones,
// or refuses with ErrFull. Called with s.mu held.
func (s *Store) ownerRoom(owner, except string, need int64) error {
	limit := s.opt.MaxPartialPerRequester
	over := s.partialBytesOfLocked(owner) + need - limit
	if over <= 0 {
		return nil
	}
	for _, name := range s.idlePartials(owner) {
		if over <= 0 {
			break
		}
		if name == except {
			continue
		}
		n := s.partials[name].n
		if s.removePartial(name) {
			s.stats.PartialsRemoved++
			over -= n
		}
	}
	if over > 0 {
		s.stats.Refused++
		return fmt.Errorf("%w: this requester's downloads under way already hold %d bytes, its limit is %d",
			ErrFull, s.partialBytesOfLocked(owner), limit)
	}
	return nil
}

// partialBytesOf is what owner's partial files count against the budget.
func (s *Store) partialBytesOf(owner string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.partialBytesOfLocked(owner)
}

func (s *Store) partialBytesOfLocked(owner string) int64 {
	var n int64
	for _, rec := range s.partials {
		if rec.owner == owner {
			n += rec.n
		}
	}
	return n
}

// complete checks a finished partial download against id and moves it into
// place as a blob of kind delivered by holder; a mismatch deletes it so
// the next source starts from zero.
func (s *Store) complete(id cid.Cid, pf *partialFile, kind Kind, holder peer.ID) error {
	_, want, err := protocol.ParseBlobID(id.String())
	if err != nil {
		return err
	}
	h := sha256.New()
	if _, err := pf.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("blob check: %w", err)
	}
	n, err := io.Copy(h, pf.f)
	if err != nil {
		return fmt.Errorf("blob check: %w", err)
	}
	if err := pf.f.Sync(); err != nil {
		return fmt.Errorf("blob check: %w", err)
	}
	if got := h.Sum(nil); string(got) != string(want) {
		pf.drop()
		return fmt.Errorf("%w: %s hashed to %x", ErrMismatch, id, got)
	}
	if err := s.commit(id, s.pathOf(pf.name), n, kind, holder, pf.name); err != nil {
		return fmt.Errorf("blob complete: %w", err)
	}
	pf.gone = true
	return nil
}
