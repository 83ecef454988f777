package node

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/disk"
)

// Bootstrap peers are re-dialed when one drops and every interval on the
// schedule set at the start; a tick that comes due during a slow dial is
// taken when the dial returns, the ones after it dropped.
func TestRedialLoopDialsOnDropsAndOnSchedule(t *testing.T) {
	const interval = 10 * time.Second
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		dropped := make(chan peer.ID, 1)
		start := time.Now()
		var dials []time.Duration
		done := make(chan struct{})
		go func() {
			defer close(done)
			redialLoop(ctx, clock.System, interval, dropped, func(context.Context) {
				dials = append(dials, time.Since(start))
				if len(dials) == 2 {
					time.Sleep(15 * time.Second) // past the tick at 20 s
				}
			})
		}()
		time.Sleep(3 * time.Second)
		dropped <- "bootstrap"
		time.Sleep(42 * time.Second)
		cancel()
		<-done
		want := []time.Duration{3 * time.Second, 10 * time.Second, 25 * time.Second, 30 * time.Second, 40 * time.Second}
		if !slices.Equal(dials, want) {
			t.Errorf("dials at %v, want %v", dials, want)
		}
	})
}

// The node measures its disk every disk.check_interval on its clock.
func TestWatchDiskChecksEveryInterval(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		var checks atomic.Int32
		n := &Node{clock: clock.System, disk: disk.New(dir, disk.Options{Free: func(string) (uint64, error) {
			checks.Add(1)
			return 1 << 40, nil
		}})}
		n.cfg.Disk.CheckInterval = Duration(500 * time.Millisecond)
		ctx, cancel := context.WithCancel(t.Context())
		n.wg.Add(1)
		go n.watchDisk(ctx)
		time.Sleep(1500*time.Millisecond - time.Nanosecond)
		synctest.Wait()
		if got := checks.Load(); got != 2 {
			t.Errorf("%d checks before 1.5 s, want 2", got)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if got := checks.Load(); got != 3 {
			t.Errorf("%d checks at 1.5 s, want 3", got)
		}
		cancel()
		n.wg.Wait()
	})
}
