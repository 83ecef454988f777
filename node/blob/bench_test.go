package blob

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/mira-market/mira/storage"
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

// BenchmarkStageCached is what a provider does to stage a module or input
// that the same requester delivered for an earlier job: check that this
// requester may use the copy, keep it from the collector, read it. (Before
// blobs had holders, a Fetch that found the blob and the read.)
func BenchmarkStageCached(b *testing.B) {
	for _, size := range []int{50_000, 2 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			server, client := newBenchService(b), newBenchService(b)
			db, err := storage.Open(b.TempDir(), storage.Options{Network: testNet})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			if client.store, err = NewStore(b.TempDir(), Options{MaxSize: 1 << 30, Index: db}); err != nil {
				b.Fatal(err)
			}
			if err := client.host.Connect(context.Background(), server.host.Peerstore().PeerInfo(server.host.ID())); err != nil {
				b.Fatal(err)
			}
			id, _, err := server.store.Put(io.LimitReader(rand.Reader, int64(size)), Operator)
			if err != nil {
				b.Fatal(err)
			}
			requester := server.host.ID()
			if err := client.FetchFor(context.Background(), id, requester); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for range b.N {
				release := client.store.Use(id)
				if !client.store.HeldBy(id, requester) {
					b.Fatal("the requester's copy is not recorded")
				}
				client.store.Mark(id, 0, "")
				if _, err := client.store.ReadAll(id); err != nil {
					b.Fatal(err)
				}
				release()
			}
		})
	}
}
