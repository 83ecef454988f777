package api

import (
	"context"
	"io"
	"net/http"
	"strconv"
)

const blobsPath = "/v1/blobs"

// BlobInfo names a stored blob.
type BlobInfo struct {
	ID   string `json:"id"`
	Size int64  `json:"size"`
}

// BlobDeleted answers a blob's deletion: Removed is false when the blob
// was unpinned but stays for now (a requester's job still needs it, or it
// is being read); the collector evicts it when that ends.
type BlobDeleted struct {
	ID      string `json:"id"`
	Removed bool   `json:"removed"`
}

// BlobBackend stores and serves content-addressed blobs: job inputs and
// modules uploaded by scripts, results fetched from providers.
type BlobBackend interface {
	// PutBlob stores what r yields; ErrTooLarge over the node's limit.
	PutBlob(ctx context.Context, r io.Reader) (BlobInfo, error)
	// OpenBlob opens a stored blob; ErrNotFound if the node lacks it.
	OpenBlob(ctx context.Context, id string) (io.ReadCloser, BlobInfo, error)
	// DeleteBlob unpins a stored blob and removes it unless it is still
	// needed; ErrNotFound if the node lacks it.
	DeleteBlob(ctx context.Context, id string) (BlobDeleted, error)
}

func (s *server) routeBlobs() {
	s.mux.Handle("POST "+blobsPath, s.auth(http.HandlerFunc(s.postBlob)))
	s.mux.Handle("GET "+blobsPath+"/{id}", s.auth(http.HandlerFunc(s.getBlob)))
	s.mux.Handle("DELETE "+blobsPath+"/{id}", s.auth(http.HandlerFunc(s.deleteBlob)))
}

// postBlob stores the raw request body and answers 201 {"id","size"}.
func (s *server) postBlob(w http.ResponseWriter, r *http.Request) {
	info, err := s.cfg.Backend.PutBlob(r.Context(), r.Body)
	if err != nil {
		s.jobError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (s *server) getBlob(w http.ResponseWriter, r *http.Request) {
	rc, info, err := s.cfg.Backend.OpenBlob(r.Context(), r.PathValue("id"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	defer rc.Close()
	sendBlob(w, rc, info)
}

// deleteBlob answers 200 {"id","removed"}.
func (s *server) deleteBlob(w http.ResponseWriter, r *http.Request) {
	d, err := s.cfg.Backend.DeleteBlob(r.Context(), r.PathValue("id"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func sendBlob(w http.ResponseWriter, rc io.Reader, info BlobInfo) {
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
	w.Header().Set("X-Mira-Content-Id", info.ID)
	w.WriteHeader(http.StatusOK)
	io.Copy(w, rc)
}
