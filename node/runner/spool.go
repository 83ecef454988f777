package runner

import (
	"os"
	"path/filepath"
	"sync"

	"github.com/mira-market/mira/protocol"
)

// spool takes a run's stdout, at most limit bytes (noting when more came).
// It keeps up to protocol.MaxResultOutput bytes, what a result carries
// inline, in memory, and moves them to a file at path once the output
// grows beyond that: most results never touch the disk.
type spool struct {
	path  string
	limit int64

	mu   sync.Mutex
	mem  []byte
	f    *os.File // nil while the output fits in mem
	n    int64
	over bool
	err  error
}

func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := len(p)
	if room := s.limit - s.n; int64(size) > room {
		s.over = true
		p = p[:max(room, 0)]
	}
	if s.err != nil {
		return 0, s.err
	}
	if s.f == nil && len(s.mem)+len(p) <= protocol.MaxResultOutput {
		s.mem = append(s.mem, p...)
		s.n += int64(len(p))
		return size, nil
	}
	if s.f == nil {
		if s.err = s.spill(); s.err != nil {
			return 0, s.err
		}
	}
	n, err := s.f.Write(p)
	s.n += int64(n)
	if err != nil {
		s.err = err
		return n, err
	}
	return size, nil
}

// spill moves the output so far into the spool's file.
func (s *spool) spill() error {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	f, err := os.Create(s.path)
	if err != nil {
		return err
	}
	if _, err := f.Write(s.mem); err != nil {
		f.Close()
		return err
	}
	s.f, s.mem = f, nil
	return nil
}

func (s *spool) close() {
	if s.f != nil {
		s.f.Close()
	}
}
