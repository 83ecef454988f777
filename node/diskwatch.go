package node

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/disk"
	"github.com/mira-market/mira/storage"
)

// openDiskGuard measures the data dir's free space before the database
// opens, giving the disk reserve back if the database needs its room to
// replay its log. Too little room even then is an error that says so:
// opening Badger on a full disk dies of SIGBUS, not of an error.
func openDiskGuard(cfg Config, log *slog.Logger) (*disk.Guard, error) {
	g := disk.New(cfg.DataDir, disk.Options{MinFree: cfg.Disk.MinFreeMiB << 20, Reserve: cfg.Disk.ReserveMiB << 20, Log: log})
	need := max(disk.OpenNeed(filepath.Join(cfg.DataDir, dbDir)), storage.MinWriteRoom)
	if err := g.Room(need); err != nil {
		return nil, fmt.Errorf("the database cannot open: %w; free some space and start again", err)
	}
	if st := g.Status(); st.Low {
		log.Warn("starting with the data dir low on disk space: no new work until there is room",
			"free_mib", st.Free>>20, "min_free_mib", cfg.Disk.MinFreeMiB)
	}
	return g, nil
}

// watchDisk measures free space every disk.check_interval, and tells the
// market when the disk turns low or recovers, whoever noticed it: a
// database write that found the disk full must not wait for the market
// loop, which may be the one writing.
func (n *Node) watchDisk(ctx context.Context) {
	defer n.wg.Done()
	t := n.clock.NewTicker(time.Duration(n.cfg.Disk.CheckInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			n.disk.Check()
		case <-n.disk.Changed():
			n.onDiskChange(n.disk.Status())
		}
	}
}

// onDiskChange pauses the provider side of the market while the disk is
// low: offers and awards are declined with the reason. When space comes
// back, jobs whose settlement found no room are settled.
func (n *Node) onDiskChange(s disk.Status) {
	reason := ""
	if s.Low {
		reason = market.ReasonLowDisk
	}
	n.market.Pause(n.runCtx, reason)
}

// closeDB closes the database, which flushes its memtable into a table:
// on a disk with no room for that, Badger would die of SIGBUS, so the
// database is left unclosed instead, as after a crash: its log is replayed
// on the next start and nothing written is lost.
func (n *Node) closeDB() error {
	if err := n.disk.Room(storage.MinWriteRoom); err != nil {
		n.log.Error("database left open: no room on disk to close it cleanly; it recovers on the next start", "err", err)
		return nil
	}
	return n.db.Close()
}

// dbRoom is the database's check before each write.
func (n *Node) dbRoom() error { return n.disk.Room(storage.MinWriteRoom) }

// diskLow is the API's error for new work while the disk is low.
func (n *Node) diskLow() error {
	if err := n.disk.Low(); err != nil {
		return fmt.Errorf("%w: %w", api.ErrInsufficientStorage, err)
	}
	return nil
}

func (n *Node) diskInfo() api.DiskInfo {
	s := n.disk.Status()
	return api.DiskInfo{FreeBytes: s.Free, MinFreeBytes: s.MinFree, ReservedBytes: s.Reserved, Low: s.Low}
}
