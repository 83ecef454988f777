package blob

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
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
	// Proved counts requesters that sent a blob the store already held,
	// proving they hold it.
	Proved atomic.Uint64
	// Unproven counts FetchFor calls refused: the requester did not send
	// the blob (it does not hold it, or sent other bytes).
	Unproven atomic.Uint64
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
	fetching map[fetchKey]*fetchLock // one download per blob and owner at a time

	allow func(peer.ID, cid.Cid) bool
}

// SetAllow sets who may fetch what: a request for id from p is served only
// if allow(p, id). Without it every peer may fetch every blob.
func (s *Service) SetAllow(allow func(p peer.ID, id cid.Cid) bool) { s.allow = allow }

// NewService registers the blob protocol of network on h, serving store.
func NewService(h host.Host, network string, store *Store, log *slog.Logger) *Service {
	s := &Service{host: h, store: store, proto: libp2pproto.ID(protocol.BlobProtocol(network)), log: log,
		fetching: map[fetchKey]*fetchLock{}}
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
	s.store.Served(req.ID, st.Conn().RemotePeer()) // before the count, which tests wait on
	s.Stats.Served.Add(1)
}

// Fetch makes sure the store holds id, fetching it from the first of
// sources that has it, and marks it of kind. A partial download resumes
// where it stopped; a download that does not match id is deleted,
// counted, and fetched again from the next source. It returns the blob's
// size.
func (s *Service) Fetch(ctx context.Context, id cid.Cid, kind Kind, sources ...peer.ID) (int64, error) {
	// Two downloads of one blob must not share its partial file: the
	// second could write into the first's checked result.
	unlock, err := s.lock(ctx, fetchKey{id, ""})
	if err != nil {
		return 0, fmt.Errorf("fetch %s: %w", id, err)
	}
	defer unlock()
	if size, ok := s.store.Mark(id, kind, ""); ok {
		return size, nil
	}
	if len(sources) == 0 {
		return 0, fmt.Errorf("fetch %s: %w and no source to fetch it from", id, ErrNotFound)
	}
	var errs []error
	for _, p := range sources {
		size, err := s.fetchFrom(ctx, id, p, kind, "")
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

// FetchFor makes sure the store holds id for a job of requester p, which
// must prove it holds the blob itself: a copy p delivered before is used
// as it is; otherwise p sends the bytes, checked against id, whether or
// not the store holds them already (from another requester, a result, the
// operator). A content ID is public (offers and receipts name it): naming
// one must not be a way to read a copy someone else put here. A blob p
// delivered is Cached, and p recorded as its holder. A download from p
// resumes only a partial file p itself wrote: another requester's bytes
// never complete, nor spoil, p's (nor p's theirs).
func (s *Service) FetchFor(ctx context.Context, id cid.Cid, p peer.ID) error {
	defer s.store.Use(id)() // not evicted between the proof and the record of it
	// Downloads of one blob by different requesters go side by side, each
	// into its own partial file: a slow one cannot hold up the others.
	unlock, err := s.lock(ctx, fetchKey{id, ownerTag(p)})
	if err != nil {
		s.Stats.Unproven.Add(1)
		return fmt.Errorf("fetch %s from %s: %w", id, p, err)
	}
	defer unlock()
	if s.store.HeldBy(id, p) {
		s.store.Mark(id, Cached, p)
		return nil
	}
	if size, ok := s.store.Mark(id, 0, ""); ok {
		if err = s.prove(ctx, id, size, p); err == nil {
			s.store.Mark(id, Cached, p)
			s.Stats.Proved.Add(1)
		}
	} else if _, err = s.fetchFrom(ctx, id, p, Cached, p); err == nil {
		s.Stats.Fetched.Add(1)
	}
	if err != nil {
		s.Stats.Unproven.Add(1)
		if errors.Is(err, ErrMismatch) {
			s.Stats.Rejected.Add(1)
			s.log.Warn("blob from requester did not match its ID; rejected", "blob", id, "peer", p)
		}
		return fmt.Errorf("fetch %s from %s: %w", id, p, err)
	}
	return nil
}

// prove has p send the whole blob id, which the store holds (size bytes),
// and checks it against id without storing it: only a peer that holds the
// bytes can pass.
func (s *Service) prove(ctx context.Context, id cid.Cid, size int64, p peer.ID) error {
	st, br, h, end, err := s.request(ctx, id, p, 0)
	if err != nil {
		return err
	}
	defer end()
	if err := headerError(h); err != nil {
		return err
	}
	if h.Size != uint64(size) {
		return fmt.Errorf("%w: peer offers %d bytes, the blob has %d", ErrMismatch, h.Size, size)
	}
	st.SetReadDeadline(time.Time{})
	sum := sha256.New()
	n, err := io.CopyBuffer(sum, io.LimitReader(br, size), make([]byte, chunkSize))
	if err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	if n < size {
		return fmt.Errorf("receive: stream ended after %d of %d bytes", n, size)
	}
	if _, want, _ := protocol.ParseBlobID(id.String()); !bytes.Equal(sum.Sum(nil), want) {
		return fmt.Errorf("%w: %s", ErrMismatch, id)
	}
	return nil
}

// fetchKey names the downloads that share a partial file: of one blob,
// by one owner (ownerTag of a requester; "" for the node's own).
type fetchKey struct {
	id    cid.Cid
	owner string
}

// lock takes the download lock of key, or gives up when ctx is done; the
// returned func releases it.
func (s *Service) lock(ctx context.Context, key fetchKey) (func(), error) {
	s.mu.Lock()
	l, ok := s.fetching[key]
	if !ok {
		l = &fetchLock{held: make(chan struct{}, 1)}
		s.fetching[key] = l
	}
	l.users++
	s.mu.Unlock()
	leave := func() {
		s.mu.Lock()
		if l.users--; l.users == 0 {
			delete(s.fetching, key)
		}
		s.mu.Unlock()
	}
	select {
	case l.held <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
	return func() {
		<-l.held
		leave()
	}, nil
}

// fetchLock serialises the downloads of one blob by one owner: held has
// room for one; users counts holders and waiters, so the entry goes when
// the last one leaves.
type fetchLock struct {
	held  chan struct{}
	users int
}

// request asks p for id from offset off and reads the answer's header;
// end closes the stream.
func (s *Service) request(ctx context.Context, id cid.Cid, p peer.ID, off int64) (network.Stream, *bufio.Reader, protocol.BlobHeader, func(), error) {
	st, err := s.host.NewStream(network.WithAllowLimitedConn(ctx, "blob"), p, s.proto)
	if err != nil {
		return nil, nil, protocol.BlobHeader{}, nil, fmt.Errorf("open stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	end := func() {
		stop()
		st.Close()
	}
	if _, err := st.Write(protocol.Frame(protocol.BlobRequest{ID: id, Offset: uint64(off)}.Encode())); err != nil {
		end()
		return nil, nil, protocol.BlobHeader{}, nil, fmt.Errorf("send request: %w", err)
	}
	st.CloseWrite()
	st.SetReadDeadline(time.Now().Add(requestTimeout))
	br := bufio.NewReaderSize(st, chunkSize)
	h, err := protocol.ReadBlobHeader(br)
	if err != nil {
		end()
		return nil, nil, protocol.BlobHeader{}, nil, fmt.Errorf("read header: %w", err)
	}
	return st, br, h, end, nil
}

// headerError is the error a header other than OK stands for.
func headerError(h protocol.BlobHeader) error {
	switch h.Status {
	case protocol.BlobOK:
		return nil
	case protocol.BlobNotFound:
		return fmt.Errorf("%w: %s", ErrNotFound, h.Message)
	default:
		return fmt.Errorf("refused: %s", h.Message)
	}
}

// fetchFrom downloads id from p into the store as a blob of kind
// delivered by holder (none: ""), resuming holder's own partial file.
func (s *Service) fetchFrom(ctx context.Context, id cid.Cid, p peer.ID, kind Kind, holder peer.ID) (int64, error) {
	pf, err := s.store.openPartial(id, ownerTag(holder))
	if err != nil {
		return 0, err
	}
	defer pf.close()
	st, br, h, end, err := s.request(ctx, id, p, pf.off)
	if err != nil {
		return 0, err
	}
	defer end()
	if err := headerError(h); err != nil {
		if h.Status != protocol.BlobNotFound && h.Size > 0 && h.Size < uint64(pf.off) {
			pf.drop() // our partial is longer than the blob
		}
		return 0, err
	}
	if h.Size > uint64(s.store.MaxSize()) {
		return 0, fmt.Errorf("%w: peer offers %d bytes, limit %d", ErrTooLarge, h.Size, s.store.MaxSize())
	}
	if err := pf.reserve(int64(h.Size)); err != nil {
		return 0, err
	}
	st.SetReadDeadline(time.Time{})
	want := int64(h.Size) - pf.off
	n, err := io.CopyBuffer(pf.f, io.LimitReader(br, want), make([]byte, chunkSize))
	if err != nil {
		return 0, fmt.Errorf("receive: %w (kept %d bytes to resume)", err, pf.off+n)
	}
	if n < want {
		return 0, fmt.Errorf("receive: stream ended after %d of %d bytes", pf.off+n, h.Size)
	}
	if err := s.store.complete(id, pf, kind, holder); err != nil {
		return 0, err
	}
	return int64(h.Size), nil
}
