package capacity

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol"
)

const testTTL = 10 * time.Minute

// announced is one capacity record put into the routing.
type announced struct {
	at        time.Time
	freeSlots int
}

// fakeRouting records the capacity records put into it; the first
// failPuts puts fail.
type fakeRouting struct {
	mu       sync.Mutex
	failPuts int
	puts     []announced
	tries    []time.Time
}

func (r *fakeRouting) PutValue(_ context.Context, _ string, value []byte, _ ...routing.Option) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries = append(r.tries, time.Now())
	if r.failPuts > 0 {
		r.failPuts--
		return errors.New("no peers in the routing table")
	}
	rec, err := protocol.OpenCapacity(value)
	if err != nil {
		return err
	}
	r.puts = append(r.puts, announced{time.Now(), rec.FreeSlots})
	return nil
}

func (r *fakeRouting) GetValue(context.Context, string, ...routing.Option) ([]byte, error) {
	return nil, routing.ErrNotFound
}

func (r *fakeRouting) Provide(context.Context, cid.Cid, bool) error { return nil }

func (r *fakeRouting) FindProvidersAsync(context.Context, cid.Cid, int) <-chan peer.AddrInfo {
	ch := make(chan peer.AddrInfo)
	close(ch)
	return ch
}

func (r *fakeRouting) announced() []announced {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]announced(nil), r.puts...)
}

func (r *fakeRouting) tried() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.tries...)
}

// startProvider starts a provider's service with 2 slots on r, stopped
// when the test ends; it must run inside a synctest bubble.
func startProvider(t *testing.T, r Routing) *Service {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Priv: priv, Network: "captest", Slots: 2, TTL: testTTL,
		GPUs: []gpu.Device{{Model: "nvidia-rtx-4090", VRAMMiB: 24564, Count: 1, Source: gpu.SourceDetected}},
		Log:  slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.Start(ctx, r)
	t.Cleanup(func() { cancel(); s.Close() })
	return s
}

// wantAnnounced waits until every goroutine of the bubble blocks and
// checks the records announced since start, as offsets from it with their
// free slots.
func wantAnnounced(t *testing.T, r *fakeRouting, start time.Time, want ...announced) {
	t.Helper()
	synctest.Wait()
	got := r.announced()
	for i := range got {
		got[i].at = time.Time{}.Add(got[i].at.Sub(start))
	}
	if len(got) != len(want) {
		t.Fatalf("at %v: announced %v, want %v", time.Since(start), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("at %v: announcement %d is %v, want %v", time.Since(start), i, got[i], want[i])
		}
	}
}

// at is an announcement at offset d from the start with free slots.
func at(d time.Duration, free int) announced { return announced{time.Time{}.Add(d), free} }

// A provider announces at once and again every half TTL, and not between.
func TestAnnouncesAgainAtHalfTheTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		r := &fakeRouting{}
		startProvider(t, r)
		wantAnnounced(t, r, start, at(0, 2))
		time.Sleep(testTTL/2 - time.Nanosecond)
		wantAnnounced(t, r, start, at(0, 2))
		time.Sleep(time.Nanosecond)
		wantAnnounced(t, r, start, at(0, 2), at(testTTL/2, 2))
		time.Sleep(testTTL / 2)
		wantAnnounced(t, r, start, at(0, 2), at(testTTL/2, 2), at(testTTL, 2))
	})
}

// A change of free slots is announced announceGap after the last
// announcement at the soonest; one after the gap at once, and the
// half-TTL wait starts again from it. A second change within the gap
// goes out in the gap's record and, as the loop stands, once more a gap
// later (a redundant record, left as it is).
func TestReannouncesWhenFreeSlotsChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		r := &fakeRouting{}
		s := startProvider(t, r)
		wantAnnounced(t, r, start, at(0, 2))

		time.Sleep(500 * time.Millisecond)
		s.SetFreeSlots(1)
		time.Sleep(500 * time.Millisecond)
		s.SetFreeSlots(0)
		time.Sleep(announceGap - time.Second - time.Nanosecond)
		wantAnnounced(t, r, start, at(0, 2))
		time.Sleep(time.Nanosecond)
		wantAnnounced(t, r, start, at(0, 2), at(announceGap, 0))
		time.Sleep(announceGap)
		before := []announced{at(0, 2), at(announceGap, 0), at(2*announceGap, 0)}
		wantAnnounced(t, r, start, before...)

		time.Sleep(10 * time.Second)
		s.SetFreeSlots(1)
		changed := 2*announceGap + 10*time.Second
		wantAnnounced(t, r, start, append(before, at(changed, 1))...)
		time.Sleep(testTTL/2 - time.Nanosecond)
		wantAnnounced(t, r, start, append(before, at(changed, 1))...)
		time.Sleep(time.Nanosecond)
		wantAnnounced(t, r, start, append(before, at(changed, 1), at(changed+testTTL/2, 1))...)
	})
}

// A failed announcement (an empty routing table right after start) is
// retried after 100 ms, doubling; the first success waits half the TTL
// again.
func TestRetriesFailedAnnouncementsWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		r := &fakeRouting{failPuts: 3}
		startProvider(t, r)
		const ms = time.Millisecond
		time.Sleep(700*ms - time.Nanosecond)
		wantAnnounced(t, r, start)
		time.Sleep(time.Nanosecond)
		wantAnnounced(t, r, start, at(700*ms, 2))
		tries := r.tried()
		var offsets []time.Duration
		for _, tr := range tries {
			offsets = append(offsets, tr.Sub(start))
		}
		want := []time.Duration{0, 100 * ms, 300 * ms, 700 * ms}
		if len(offsets) != len(want) {
			t.Fatalf("tried at %v, want %v", offsets, want)
		}
		for i := range want {
			if offsets[i] != want[i] {
				t.Fatalf("tried at %v, want %v", offsets, want)
			}
		}
		time.Sleep(testTTL / 2)
		wantAnnounced(t, r, start, at(700*ms, 2), at(700*ms+testTTL/2, 2))
	})
}
