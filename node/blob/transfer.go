package blob

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/protocol"
)

// chunkSize is the unit of reads and writes on a blob stream.
const chunkSize = 256 << 10

// requestTimeout bounds reading a request or a header; a blob's bytes are
// bounded by the caller's context instead, since their time grows with size.
const requestTimeout = 10 * time.Second

// Stats counts a Service's transfers.
type Stats struct {
	// Served counts blobs sent to peers.
	Served atomic.Uint64
	// Fetched counts blobs received and checked.
	Fetched atomic.Uint64
	// Rejected counts downloads that did not match their content ID.
	Rejected atomic.Uint64
}

// Service serves a Store's blobs on a host and fetches blobs from peers.
type Service struct {
	host  host.Host
	store *Store
	proto libp2pproto.ID
	log   *slog.Logger
	// Stats counts transfers.
	Stats Stats

	mu       sync.Mutex
	fetching map[cid.Cid]*fetchLock // one download per blob at a time

	allow func(peer.ID, cid.Cid) bool
}

// SetAllow sets who may fetch what: a request for id from p is served only
// if allow(p, id). Without it every peer may fetch every blob.
func (s *Service) SetAllow(allow func(p peer.ID, id cid.Cid) bool) { s.allow = allow }

// NewService registers the blob protocol of network on h, serving store.
func NewService(h host.Host, network string, store *Store, log *slog.Logger) *Service {
	s := &Service{host: h, store: store, proto: libp2pproto.ID(protocol.BlobProtocol(network)), log: log,
		fetching: map[cid.Cid]*fetchLock{}}
	h.SetStreamHandler(s.proto, s.serve)
	return s
}

// WrapHandler registers the protocol's handler again, wrapped by wrap (a
// limit on a peer's open streams, say).
func (s *Service) WrapHandler(wrap func(network.StreamHandler) network.StreamHandler) {
	s.host.SetStreamHandler(s.proto, wrap(s.serve))
}

// Close unregisters the protocol.
func (s *Service) Close() { s.host.RemoveStreamHandler(s.proto) }

// Store is the service's store.
func (s *Service) Store() *Store { return s.store }

func (s *Service) serve(st network.Stream) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(requestTimeout))
	req, err := protocol.ReadBlobRequest(bufio.NewReader(io.LimitReader(st, protocol.MaxBlobRequest+16)))
	if err != nil {
		s.log.Debug("bad blob request", "peer", st.Conn().RemotePeer(), "err", err)
		st.Reset()
		return
	}
	if s.allow != nil && !s.allow(st.Conn().RemotePeer(), req.ID) {
		st.Write(protocol.Frame(protocol.BlobHeader{Status: protocol.BlobRefused, Message: "not shared with this peer"}.Encode()))
		return
	}
	f, size, err := s.store.Open(req.ID)
	if err != nil {
		st.Write(protocol.Frame(protocol.BlobHeader{Status: protocol.BlobNotFound, Message: "not found"}.Encode()))
		return
	}
	defer f.Close()
	if req.Offset > uint64(size) {
		st.Write(protocol.Frame(protocol.BlobHeader{Status: protocol.BlobRefused, Size: uint64(size), Message: "offset beyond end"}.Encode()))
		return
	}
	if _, err := st.Write(protocol.Frame(protocol.BlobHeader{Status: protocol.BlobOK, Size: uint64(size)}.Encode())); err != nil {
		return
	}
	if _, err := f.Seek(int64(req.Offset), io.SeekStart); err != nil {
		st.Reset()
		return
	}
	if _, err := io.CopyBuffer(st, f, make([]byte, chunkSize)); err != nil {
		st.Reset()
		return
	}
	s.Stats.Served.Add(1)
}

// Fetch makes sure the store holds id, fetching it from the first of
// sources that has it. A partial download resumes where it stopped; a
// download that does not match id is deleted, counted, and fetched again
// from the next source. It returns the blob's size.
func (s *Service) Fetch(ctx context.Context, id cid.Cid, sources ...peer.ID) (int64, error) {
	// Two downloads of one blob must not share its partial file: the
	// second could write into the first's checked result.
	unlock := s.lock(id)
	defer unlock()
	if f, size, err := s.store.Open(id); err == nil {
		f.Close()
		return size, nil
	}
	if len(sources) == 0 {
		return 0, fmt.Errorf("fetch %s: %w and no source to fetch it from", id, ErrNotFound)
	}
	var errs []error
	for _, p := range sources {
		size, err := s.fetchFrom(ctx, id, p)
		if err == nil {
			s.Stats.Fetched.Add(1)
			return size, nil
		}
		if errors.Is(err, ErrMismatch) {
			s.Stats.Rejected.Add(1)
			s.log.Warn("blob from peer did not match its ID; rejected", "blob", id, "peer", p)
		}
		errs = append(errs, fmt.Errorf("from %s: %w", p, err))
		if ctx.Err() != nil {
			break
		}
	}
	return 0, fmt.Errorf("fetch %s: %w", id, errors.Join(errs...))
}

// lock takes the download lock of id; the returned func releases it.
func (s *Service) lock(id cid.Cid) func() {
	s.mu.Lock()
	l, ok := s.fetching[id]
	if !ok {
		l = &fetchLock{}
		s.fetching[id] = l
	}
	l.users++
	s.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.mu.Lock()
		if l.users--; l.users == 0 {
			delete(s.fetching, id)
		}
		s.mu.Unlock()
	}
}

// fetchLock serialises the downloads of one blob; users counts holders and
// waiters, so the entry goes when the last one leaves.
type fetchLock struct {
	sync.Mutex
	users int
}

func (s *Service) fetchFrom(ctx context.Context, id cid.Cid, p peer.ID) (int64, error) {
	f, off, err := s.store.partial(id)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := s.host.NewStream(network.WithAllowLimitedConn(ctx, "blob"), p, s.proto)
	if err != nil {
		return 0, fmt.Errorf("open stream: %w", err)
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	if _, err := st.Write(protocol.Frame(protocol.BlobRequest{ID: id, Offset: uint64(off)}.Encode())); err != nil {
		return 0, fmt.Errorf("send request: %w", err)
	}
	st.CloseWrite()
	st.SetReadDeadline(time.Now().Add(requestTimeout))
	br := bufio.NewReaderSize(st, chunkSize)
	h, err := protocol.ReadBlobHeader(br)
	if err != nil {
		return 0, fmt.Errorf("read header: %w", err)
	}
	switch {
	case h.Status == protocol.BlobNotFound:
		return 0, fmt.Errorf("%w: %s", ErrNotFound, h.Message)
	case h.Status != protocol.BlobOK:
		if h.Size > 0 && h.Size < uint64(off) {
			s.store.dropPartial(id) // our partial is longer than the blob
		}
		return 0, fmt.Errorf("refused: %s", h.Message)
	case h.Size > uint64(s.store.maxSize):
		return 0, fmt.Errorf("%w: peer offers %d bytes, limit %d", ErrTooLarge, h.Size, s.store.maxSize)
	}
	st.SetReadDeadline(time.Time{})
	want := int64(h.Size) - off
	n, err := io.CopyBuffer(f, io.LimitReader(br, want), make([]byte, chunkSize))
	if err != nil {
		return 0, fmt.Errorf("receive: %w (kept %d bytes to resume)", err, off+n)
	}
	if n < want {
		return 0, fmt.Errorf("receive: stream ended after %d of %d bytes", off+n, h.Size)
	}
	if err := s.store.complete(id, f); err != nil {
		return 0, err
	}
	return int64(h.Size), nil
}
