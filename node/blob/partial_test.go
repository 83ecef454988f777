package blob

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/protocol"
)

// serveFrom answers blob requests on h as a peer that holds data only
// from byte from on: a request at or past it gets data from its offset;
// an earlier one gets the header and nothing (it cannot send the start).
func serveFrom(h host.Host, data []byte, from int) {
	h.SetStreamHandler(libp2pproto.ID(protocol.BlobProtocol(testNet)), func(st network.Stream) {
		defer st.Close()
		req, err := protocol.ReadBlobRequest(bufio.NewReader(st))
		if err != nil {
			st.Reset()
			return
		}
		st.Write(protocol.Frame(protocol.BlobHeader{Status: protocol.BlobOK, Size: uint64(len(data))}.Encode()))
		if int(req.Offset) >= from && int(req.Offset) <= len(data) {
			st.Write(data[req.Offset:])
		}
	})
}

// A victim's upload of its input X to a provider is cut half way. An
// attacker that knows only X's second half names X as its own job's
// input on the same provider: the provider must not finish the victim's
// partial file with the attacker's bytes, which would make the attacker a
// holder of X, free to read all of it.
func TestFetchForDoesNotFinishAnothersPartial(t *testing.T) {
	provider := newService(t, 1<<20)
	victim, attacker := newHost(t), newHost(t)
	connect(t, provider.host, victim)
	connect(t, provider.host, attacker)
	secret := randomBytes(t, 3*chunkSize)
	id := idOf(secret)
	half := len(secret) / 2
	ctx := context.Background()

	serveFake(victim, uint64(len(secret)), secret[:half], nil) // then the link drops
	if err := provider.FetchFor(ctx, id, victim.ID()); err == nil {
		t.Fatal("the victim's cut upload succeeded")
	}
	serveFrom(attacker, secret, half)
	err := provider.FetchFor(ctx, id, attacker.ID())
	if err == nil || provider.store.HeldBy(id, attacker.ID()) || provider.store.Has(id) {
		t.Fatalf("the attacker completed the victim's upload: FetchFor = %v, holder %v, stored %v",
			err, provider.store.HeldBy(id, attacker.ID()), provider.store.Has(id))
	}
	// The victim's own retry still resumes its own partial.
	offsets := make(chan uint64, 1)
	serveFake(victim, uint64(len(secret)), secret[half:], offsets)
	if err := provider.FetchFor(ctx, id, victim.ID()); err != nil {
		t.Fatalf("the victim's resumed upload: %v", err)
	}
	if off := <-offsets; off != uint64(half) {
		t.Fatalf("the victim resumed at %d, want %d", off, half)
	}
	if !provider.store.HeldBy(id, victim.ID()) || provider.store.HeldBy(id, attacker.ID()) {
		t.Fatal("holders wrong after the victim's upload")
	}
}

// An attacker names the victim's input X first, sends junk and hangs up.
// The victim's own upload of X must not resume after the junk (and then
// fail the hash check, blaming the victim): it starts from its own
// beginning.
func TestFetchForIsNotPoisonedByAnothersPartial(t *testing.T) {
	provider, victim := newService(t, 1<<20), newService(t, 1<<20)
	attacker := newHost(t)
	connect(t, provider.host, victim.host)
	connect(t, provider.host, attacker)
	secret := randomBytes(t, 3*chunkSize)
	id, err := victim.store.PutBytes(secret, Operator)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	serveFake(attacker, uint64(len(secret)), randomBytes(t, 1000), nil)
	if err := provider.FetchFor(ctx, id, attacker.ID()); err == nil {
		t.Fatal("the attacker's junk was taken")
	}
	if err := provider.FetchFor(ctx, id, victim.host.ID()); err != nil {
		t.Fatalf("the victim's upload after the attacker's junk: %v", err)
	}
	if got, _ := provider.store.ReadAll(id); string(got) != string(secret) || provider.Stats.Rejected.Load() != 0 {
		t.Fatalf("stored the right bytes: %v; rejected %d, want 0", string(got) == string(secret), provider.Stats.Rejected.Load())
	}
}

// dirBytes is what the store's dir holds on disk: blobs and partial
// files alike.
func dirBytes(t *testing.T, s *Store) int64 {
	t.Helper()
	all, _ := dirBytesSplit(t, s)
	return all
}

// dirBytesSplit is what the store's dir holds on disk, and of it in
// partial files.
func dirBytesSplit(t *testing.T, s *Store) (all, partials int64) {
	t.Helper()
	des, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if info, err := de.Info(); err == nil && info.Mode().IsRegular() {
			all += info.Size()
			if strings.HasSuffix(de.Name(), ".part") {
				partials += info.Size()
			}
		}
	}
	return all, partials
}

// A rogue requester names blob after blob as its jobs' inputs, sends
// part of each and hangs up. The partial files it leaves must count
// against the store's budget and stay within a cap of their own per
// requester, and an honest requester's input must still fit afterwards.
func TestInterruptedFetchesStayWithinTheBudget(t *testing.T) {
	const maxSize = 512 << 10
	for _, budget := range []int64{2 << 20, 0} {
		t.Run(fmt.Sprintf("budget %d", budget), func(t *testing.T) {
			st, err := NewStore(t.TempDir(), Options{MaxSize: maxSize, Budget: budget})
			if err != nil {
				t.Fatal(err)
			}
			provider := NewService(newHost(t), testNet, st, slog.New(slog.DiscardHandler))
			t.Cleanup(provider.Close)
			rogue, honest := newHost(t), newService(t, maxSize)
			connect(t, provider.host, rogue)
			connect(t, provider.host, honest.host)
			ctx := context.Background()
			bound := budget
			if bound == 0 {
				bound = st.opt.MaxPartialPerRequester
			}
			for i := range 40 {
				data := randomBytes(t, maxSize)
				serveFake(rogue, maxSize, data[:400<<10], nil)
				if err := provider.FetchFor(ctx, idOf(data), rogue.ID()); err == nil {
					t.Fatalf("cut fetch %d succeeded", i)
				}
				if n := dirBytes(t, st); n > bound {
					t.Fatalf("after %d cut fetches the store's dir holds %d bytes, want at most %d", i+1, n, bound)
				}
				if n := st.partialBytesOf(ownerTag(rogue.ID())); n > st.opt.MaxPartialPerRequester {
					t.Fatalf("after %d cut fetches the rogue's partial files hold %d bytes, cap %d", i+1, n, st.opt.MaxPartialPerRequester)
				}
				// What the store counts is what the files hold.
				if _, onDisk := dirBytesSplit(t, st); st.Usage().PartialBytes != onDisk {
					t.Fatalf("after %d cut fetches the store counts %d bytes of partial files, the dir holds %d", i+1, st.Usage().PartialBytes, onDisk)
				}
			}
			input := randomBytes(t, maxSize)
			id, _ := honest.store.PutBytes(input, Operator)
			if err := provider.FetchFor(ctx, id, honest.host.ID()); err != nil {
				t.Fatalf("an honest input after the rogue's partials: %v", err)
			}
			if budget > 0 {
				if n := dirBytes(t, st); n > budget {
					t.Fatalf("the store's dir holds %d bytes, budget %d", n, budget)
				}
			}
		})
	}
}

// Partial files left by a node that stopped count against the budget
// after its restart, until the collector removes them.
func TestPartialsCountAcrossRestart(t *testing.T) {
	g := newGCStore(t, 1<<20)
	client := NewService(newHost(t), testNet, g.Store, slog.New(slog.DiscardHandler))
	t.Cleanup(client.Close)
	cutter := newHost(t)
	connect(t, client.host, cutter)
	data := randomBytes(t, 300<<10)
	serveFake(cutter, uint64(len(data)), data[:100<<10], nil)
	if err := client.FetchFor(context.Background(), idOf(data), cutter.ID()); err == nil {
		t.Fatal("a cut fetch succeeded")
	}
	if got := g.Usage().PartialBytes; got != 100<<10 {
		t.Fatalf("partial bytes %d, want %d", got, 100<<10)
	}
	g.reopen(t, 1<<20)
	if got := g.Usage().PartialBytes; got != 100<<10 {
		t.Fatalf("partial bytes after a restart %d, want %d", got, 100<<10)
	}
	// Past PartialTTL the collector removes the file and its count.
	longAgo := time.Now().Add(-3 * time.Hour)
	names, _ := filepath.Glob(filepath.Join(g.dir, "*.part"))
	for _, p := range names {
		os.Chtimes(p, longAgo, longAgo)
	}
	g.clock.now = time.Now()
	g.Collect()
	if _, onDisk := dirBytesSplit(t, g.Store); onDisk != 0 || g.Usage().PartialBytes != 0 {
		t.Fatalf("after the collector: %d bytes of partial files, %d counted", onDisk, g.Usage().PartialBytes)
	}
}

// A download waiting for another download of the same blob (and owner)
// gives up when its context ends, instead of waiting for the other,
// which a stalled peer can make last as long as it likes.
func TestFetchLockWaitEndsWithTheContext(t *testing.T) {
	client := newService(t, 1<<20)
	staller := newHost(t)
	connect(t, client.host, staller)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	served := make(chan struct{}, 1)
	staller.SetStreamHandler(libp2pproto.ID(protocol.BlobProtocol(testNet)), func(st network.Stream) {
		defer st.Close()
		protocol.ReadBlobRequest(bufio.NewReader(st))
		st.Write(protocol.Frame(protocol.BlobHeader{Status: protocol.BlobOK, Size: 1000}.Encode()))
		served <- struct{}{}
		<-release
	})
	id := idOf(randomBytes(t, 1000))
	go client.Fetch(t.Context(), id, Cached, staller.ID())
	<-served // the first download holds the lock, stalled
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := client.Fetch(ctx, id, Cached, staller.ID())
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the waiting fetch: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting fetch did not end with its context")
	}
}
