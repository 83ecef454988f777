package blobd

import (
	"errors"
	"fmt"
	"io"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/protocol"
)

// Put stores an uploaded blob: the operator's, pinned until deleted.
func (s *Service) Put(r io.Reader) (api.BlobInfo, error) {
	c, size, err := s.store.Put(r, blob.Operator)
	if errors.Is(err, blob.ErrTooLarge) {
		return api.BlobInfo{}, fmt.Errorf("%w: %w", api.ErrTooLarge, err)
	}
	if errors.Is(err, blob.ErrFull) {
		return api.BlobInfo{}, fmt.Errorf("%w: %w (blob_cache_mib)", api.ErrInsufficientStorage, err)
	}
	if err != nil {
		return api.BlobInfo{}, err
	}
	return api.BlobInfo{ID: c.String(), Size: size}, nil
}

// Open opens a stored blob.
func (s *Service) Open(id string) (io.ReadCloser, api.BlobInfo, error) {
	c, _, err := protocol.ParseBlobID(id)
	if err != nil {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: %w", api.ErrNotFound, err)
	}
	f, size, err := s.store.Open(c)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: %w", api.ErrNotFound, err)
	}
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	return f, api.BlobInfo{ID: c.String(), Size: size}, nil
}

// Delete is the operator's removal of a blob: it unpins it and removes it
// unless a requester's job still needs it, which keeps it (evictable)
// until its retention ends.
func (s *Service) Delete(id string) (api.BlobDeleted, error) {
	c, _, err := protocol.ParseBlobID(id)
	if err != nil {
		return api.BlobDeleted{}, fmt.Errorf("id: %w", err) // 400
	}
	removed, err := s.store.Delete(c)
	if errors.Is(err, blob.ErrNotFound) {
		return api.BlobDeleted{}, fmt.Errorf("%w: %w", api.ErrNotFound, err)
	}
	if err != nil {
		return api.BlobDeleted{}, err
	}
	return api.BlobDeleted{ID: c.String(), Removed: removed}, nil
}
