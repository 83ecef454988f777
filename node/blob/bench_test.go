package blob

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
)

// BenchmarkFetch256MiB moves a 256 MiB blob between two libp2p hosts over
// loopback TCP (Noise, yamux), checked against its content ID on arrival.
// Compare with curl of the same file from a local HTTP server (see
// docs/BENCHMARKS.md).
func BenchmarkFetch256MiB(b *testing.B) {
	const size = 256 << 20
	server, client := newBenchService(b), newBenchService(b)
	if err := client.host.Connect(context.Background(), server.host.Peerstore().PeerInfo(server.host.ID())); err != nil {
		b.Fatal(err)
	}
	id, _, err := server.store.Put(io.LimitReader(rand.Reader, size), Operator)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		if _, err := client.Fetch(context.Background(), id, Cached, server.host.ID()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := client.store.Delete(id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

func newBenchService(b *testing.B) *Service {
	b.Helper()
	st, err := NewStore(filepath.Join(b.TempDir(), "blobs"), Options{MaxSize: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	h := newHostTB(b)
	return NewService(h, testNet, st, slog.New(slog.DiscardHandler))
}
