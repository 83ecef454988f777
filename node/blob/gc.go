package blob

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
)

// GCStats counts what the collector did.
type GCStats struct {
	// Evictions counts blobs removed to keep the budget (or deleted by
	// the operator), EvictedBytes their bytes.
	Evictions    uint64
	EvictedBytes int64
	// PartialsRemoved counts abandoned partial files removed.
	PartialsRemoved uint64
	// Refused counts writes refused because they did not fit the budget.
	Refused uint64
}

// Usage is what the store holds, by the kind that keeps each blob now
// (a pinned kind first; Held only while its retention lasts), and what
// partial downloads count against the budget.
type Usage struct {
	Bytes        map[Kind]int64
	Blobs        map[Kind]int
	PartialBytes int64
	Budget       int64
	GCStats
}

// Usage returns what the store holds now.
func (s *Store) Usage() Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := Usage{Bytes: map[Kind]int64{}, Blobs: map[Kind]int{}, PartialBytes: s.reserved, Budget: s.opt.Budget, GCStats: s.stats}
	now := s.opt.Now()
	for _, e := range s.blobs {
		c := e.class(now)
		u.Bytes[c] += e.size
		u.Blobs[c]++
	}
	return u
}

// makeRoom frees what must go for size more bytes to fit the budget:
// idle partial downloads first, oldest first, then evictable blobs, least
// recently used first; if even all of them would not do, it frees nothing
// and returns ErrFull. Called with s.mu held.
func (s *Store) makeRoom(size int64, now time.Time) error {
	over := s.used + s.reserved + size - s.opt.Budget
	if s.opt.Budget <= 0 || over <= 0 {
		return nil
	}
	partials, victims := s.idlePartials("*"), s.victims(now)
	var evictable int64
	for _, name := range partials {
		evictable += s.partials[name].n
	}
	for _, name := range victims {
		evictable += s.blobs[name].size
	}
	if evictable < over {
		s.stats.Refused++
		return fmt.Errorf("%w: %d more bytes do not fit its %d-byte budget; %d bytes are pinned, held for requesters, in use or being fetched",
			ErrFull, size, s.opt.Budget, s.used+s.reserved-evictable)
	}
	s.evictUntil(victims, s.dropPartialsUntil(partials, over))
	return nil
}

// dropPartialsUntil removes the partial files names in order until at
// least need bytes are freed (or the list ends), and returns what is
// still needed. Called with s.mu held.
func (s *Store) dropPartialsUntil(names []string, need int64) int64 {
	for _, name := range names {
		if need <= 0 {
			break
		}
		n := s.partials[name].n
		if s.removePartial(name) {
			s.stats.PartialsRemoved++
			need -= n
		}
	}
	return need
}

// victims are the blobs the collector may evict now, least recently used
// first: Cached (or Held past retention), and not in use.
func (s *Store) victims(now time.Time) []string {
	var names []string
	for name, e := range s.blobs {
		if e.class(now) == Cached && s.inUse[name] == 0 {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(s.blobs[a].used.Compare(s.blobs[b].used), strings.Compare(a, b))
	})
	return names
}

// evictUntil evicts victims in order until at least need bytes are freed
// (or the list ends). Called with s.mu held.
func (s *Store) evictUntil(victims []string, need int64) {
	for _, name := range victims {
		if need <= 0 {
			return
		}
		size := s.blobs[name].size
		if s.evict(name) {
			need -= size
		}
	}
}

// evict removes a blob's file, then its record: a crash between the two
// leaves a record without a file, which the next load drops. Called with
// s.mu held.
func (s *Store) evict(name string) bool {
	e := s.blobs[name]
	if err := os.Remove(s.pathOf(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.opt.Log.Warn("evict blob", "blob", name, "err", err)
		return false
	}
	if s.opt.Index != nil {
		if err := s.opt.Index.DeleteBlobRecord(name); err != nil {
			s.opt.Log.Warn("delete blob record", "blob", name, "err", err)
		}
	}
	delete(s.blobs, name)
	s.used -= e.size
	s.stats.Evictions++
	s.stats.EvictedBytes += e.size
	s.opt.Log.Debug("blob evicted", "blob", name, "kinds", e.kinds, "size", e.size)
	return true
}

// Delete is the operator's removal of a blob: it unpins it (Operator and
// Own) and removes it at once unless a requester's job still needs it
// (Held within its retention) or it is in use; such a blob stays,
// evictable when that ends. It reports whether the blob is gone.
func (s *Store) Delete(id cid.Cid) (bool, error) {
	name, err := nameOf(id)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[name]
	if !ok {
		return false, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if e.kinds &^= Operator | Own; e.kinds == 0 {
		e.kinds = Cached
	}
	if s.inUse[name] > 0 || e.class(s.opt.Now()) != Cached {
		return false, s.persist(name, e)
	}
	if !s.evict(name) {
		return false, fmt.Errorf("delete blob %s: the file could not be removed", id)
	}
	return true, nil
}

// Collect is the collector's periodic pass: it removes partial files
// untouched for PartialTTL, evicts down to the budget (which a smaller
// budget after a restart, or retentions that ended, may call for), and
// writes last-use times that changed since they were stored.
func (s *Store) Collect() {
	s.removeAbandonedPartials()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opt.Now()
	if over := s.used + s.reserved - s.opt.Budget; s.opt.Budget > 0 && over > 0 {
		s.evictUntil(s.victims(now), s.dropPartialsUntil(s.idlePartials("*"), over))
	}
	for name, e := range s.blobs {
		if !e.used.Equal(e.usedStored) {
			if err := s.persist(name, e); err != nil {
				s.opt.Log.Warn("store blob record", "blob", name, "err", err)
			}
		}
	}
}

// removeAbandonedPartials removes partial downloads and uploads nobody is
// writing that were last written PartialTTL ago or earlier.
func (s *Store) removeAbandonedPartials() {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		s.opt.Log.Warn("list blob store", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cutoff := s.opt.Now().Add(-s.opt.PartialTTL)
	for _, de := range des {
		name := de.Name()
		if !strings.HasSuffix(name, ".part") || s.writing[name] > 0 {
			continue
		}
		info, err := de.Info()
		if err != nil || info.ModTime().After(cutoff) {
			continue
		}
		if err := os.Remove(s.pathOf(name)); err == nil {
			s.forgetPartial(name)
			s.stats.PartialsRemoved++
			s.opt.Log.Debug("abandoned partial blob removed", "file", name, "size", info.Size())
		}
	}
}
