package blob

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/protocol"
)

const testNet = "blobtest"

func newHost(t *testing.T) host.Host { return newHostTB(t) }

func newHostTB(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func newService(t *testing.T, maxSize int64) *Service {
	t.Helper()
	st, err := NewStore(t.TempDir(), Options{MaxSize: maxSize})
	if err != nil {
		t.Fatal(err)
	}
	s := NewService(newHost(t), testNet, st, slog.New(slog.DiscardHandler))
	t.Cleanup(s.Close)
	return s
}

func connect(t *testing.T, a, b host.Host) {
	t.Helper()
	if err := a.Connect(context.Background(), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestStorePutOpen(t *testing.T) {
	st, err := NewStore(t.TempDir(), Options{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hello blob")
	id, err := st.PutBytes(data, Operator)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Has(id) {
		t.Fatalf("stored blob %s missing", id)
	}
	got, err := st.ReadAll(id)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	if _, _, err := st.Put(bytes.NewReader(make([]byte, 1<<20+1)), Operator); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized put: %v, want ErrTooLarge", err)
	}
	other, _ := protocol.BlobID(make([]byte, 32))
	if _, _, err := st.Open(other); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open missing: %v", err)
	}
}

func TestFetch(t *testing.T) {
	server, client := newService(t, 64<<20), newService(t, 64<<20)
	connect(t, client.host, server.host)
	data := randomBytes(t, 3*chunkSize+17)
	id, err := server.store.PutBytes(data, Operator)
	if err != nil {
		t.Fatal(err)
	}
	size, err := client.Fetch(context.Background(), id, Cached, server.host.ID())
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Fetch = %d, %v", size, err)
	}
	got, _ := client.store.ReadAll(id)
	if !bytes.Equal(got, data) {
		t.Fatal("fetched blob differs")
	}
	missing, _ := protocol.BlobID(make([]byte, 32))
	if _, err := client.Fetch(context.Background(), missing, Cached, server.host.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch of a missing blob: %v", err)
	}
}

// serveFake answers blob requests on h with header and body, whatever was
// asked, and reports the offsets requested.
func serveFake(h host.Host, size uint64, body []byte, offsets chan<- uint64) {
	h.SetStreamHandler(libp2pproto.ID(protocol.BlobProtocol(testNet)), func(st network.Stream) {
		defer st.Close()
		req, err := protocol.ReadBlobRequest(bufio.NewReader(st))
		if err != nil {
			st.Reset()
			return
		}
		if offsets != nil {
			offsets <- req.Offset
		}
		st.Write(protocol.Frame(protocol.BlobHeader{Status: protocol.BlobOK, Size: size}.Encode()))
		st.Write(body)
	})
}

func TestFetchRejectsCorruptBlobAndUsesNextSource(t *testing.T) {
	good, client := newService(t, 64<<20), newService(t, 64<<20)
	liar := newHost(t)
	connect(t, client.host, good.host)
	connect(t, client.host, liar)
	data := randomBytes(t, 100_000)
	id, _ := good.store.PutBytes(data, Operator)
	corrupt := bytes.Clone(data)
	corrupt[500] ^= 1
	serveFake(liar, uint64(len(corrupt)), corrupt, nil)

	// The liar alone: the download is refused and nothing is stored.
	if _, err := client.Fetch(context.Background(), id, Cached, liar.ID()); !errors.Is(err, ErrMismatch) {
		t.Fatalf("fetch from liar: %v, want ErrMismatch", err)
	}
	if client.store.Has(id) || client.Stats.Rejected.Load() != 1 {
		t.Fatalf("corrupt blob stored (%v) or not counted (%d)", client.store.Has(id), client.Stats.Rejected.Load())
	}
	// Liar first, then an honest source: the blob arrives intact.
	if _, err := client.Fetch(context.Background(), id, Cached, liar.ID(), good.host.ID()); err != nil {
		t.Fatal(err)
	}
	got, _ := client.store.ReadAll(id)
	if !bytes.Equal(got, data) || client.Stats.Rejected.Load() != 2 {
		t.Fatalf("got the right blob: %v; rejected %d, want 2", bytes.Equal(got, data), client.Stats.Rejected.Load())
	}
}

func TestFetchResumesPartialDownload(t *testing.T) {
	good, client := newService(t, 64<<20), newService(t, 64<<20)
	cutter := newHost(t)
	connect(t, client.host, good.host)
	connect(t, client.host, cutter)
	data := randomBytes(t, 2*chunkSize)
	id, _ := good.store.PutBytes(data, Operator)
	// The cutter sends the first 1000 bytes and hangs up.
	serveFake(cutter, uint64(len(data)), data[:1000], nil)
	if _, err := client.Fetch(context.Background(), id, Cached, cutter.ID()); err == nil {
		t.Fatal("a cut download succeeded")
	}
	// The next request asks for the rest only.
	offsets := make(chan uint64, 1)
	rest := newHost(t)
	connect(t, client.host, rest)
	serveFake(rest, uint64(len(data)), data[1000:], offsets)
	if _, err := client.Fetch(context.Background(), id, Cached, rest.ID()); err != nil {
		t.Fatal(err)
	}
	if off := <-offsets; off != 1000 {
		t.Fatalf("resumed at %d, want 1000", off)
	}
	got, _ := client.store.ReadAll(id)
	if !bytes.Equal(got, data) {
		t.Fatal("resumed blob differs")
	}
}

func TestFetchRefusesOversizedBlob(t *testing.T) {
	client := newService(t, 1<<10)
	big := newHost(t)
	connect(t, client.host, big)
	id, _ := protocol.BlobID(make([]byte, 32))
	serveFake(big, 1<<30, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.Fetch(ctx, id, Cached, big.ID()); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v, want ErrTooLarge", err)
	}
}

func TestServeRejectsGarbageRequest(t *testing.T) {
	server := newService(t, 1<<20)
	h := newHost(t)
	connect(t, h, server.host)
	st, err := h.NewStream(context.Background(), server.host.ID(), server.proto)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3})
	st.CloseWrite()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(st); err == nil && len(b) > 0 {
		t.Fatalf("garbage request answered with %q", b)
	}
}

// Concurrent fetches of one blob, one from a liar, leave the stored blob
// intact: downloads of a blob take turns.
func TestConcurrentFetchesDoNotMix(t *testing.T) {
	good, client := newService(t, 64<<20), newService(t, 64<<20)
	liar := newHost(t)
	connect(t, client.host, good.host)
	connect(t, client.host, liar)
	data := randomBytes(t, 4*chunkSize)
	id, _ := good.store.PutBytes(data, Operator)
	serveFake(liar, uint64(len(data)), randomBytes(t, len(data)), nil)
	done := make(chan error, 2)
	go func() { _, err := client.Fetch(context.Background(), id, Cached, liar.ID()); done <- err }()
	go func() { _, err := client.Fetch(context.Background(), id, Cached, good.host.ID()); done <- err }()
	<-done
	<-done
	got, err := client.store.ReadAll(id)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("stored blob is not the original (%v)", err)
	}
}
