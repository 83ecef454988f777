package disk

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// fakeDisk is a filesystem of a fixed size whose other users hold used
// bytes; the reserve file counts against it as on a real one.
type fakeDisk struct {
	dir  string
	size uint64
	used uint64
}

func (d *fakeDisk) free(string) (uint64, error) {
	used := d.used
	if st, err := os.Stat(filepath.Join(d.dir, ReserveFile)); err == nil {
		used += uint64(st.Size())
	}
	if used > d.size {
		return 0, nil
	}
	return d.size - used, nil
}

func TestGuardReservesAndReleases(t *testing.T) {
	const (
		minFree = 100
		reserve = 40
	)
	steps := []struct {
		name         string
		used         uint64 // by others, before the check
		need         uint64 // a write's, 0 for a plain check
		wantLow      bool
		wantReserved uint64
	}{
		{"plenty: the reserve is taken", 0, 0, false, reserve},
		{"above min_free with the reserve held", 850, 0, false, reserve},
		{"below min_free: low, the reserve kept", 900, 0, true, reserve},
		{"full: a write that fits in the reserve gets it", 960, 30, true, 0},
		{"some space back, not enough for min_free and the reserve", 870, 0, true, 0},
		{"room for both: the reserve comes back, work resumes", 850, 0, false, reserve},
		{"the held reserve counts: 90 left is low again", 870, 0, true, reserve},
	}
	d := &fakeDisk{dir: t.TempDir(), size: 1000}
	g := New(d.dir, Options{MinFree: minFree, Reserve: reserve, Free: d.free})
	changes := 0
	for _, s := range steps {
		d.used = s.used
		st := g.Check()
		select {
		case <-g.Changed():
			changes++
		default:
		}
		if s.need > 0 {
			if err := g.Room(s.need); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			st = g.Status()
			select {
			case <-g.Changed():
				changes++
			default:
			}
		}
		if st.Low != s.wantLow || st.Reserved != s.wantReserved {
			t.Fatalf("%s: low %v reserved %d, want low %v reserved %d (free %d)", s.name, st.Low, st.Reserved, s.wantLow, s.wantReserved, st.Free)
		}
		fi, err := os.Stat(filepath.Join(d.dir, ReserveFile))
		if held := err == nil; held != (s.wantReserved > 0) || held && uint64(fi.Size()) != reserve {
			t.Fatalf("%s: reserve file present %v (err %v), want %v of %d bytes", s.name, held, err, s.wantReserved > 0, reserve)
		}
		if err := g.Low(); (err != nil) != s.wantLow || err != nil && !errors.Is(err, ErrLow) {
			t.Fatalf("%s: Low() = %v", s.name, err)
		}
	}
	if changes != 3 {
		t.Fatalf("OnChange called %d times, want 3 (low, back, low)", changes)
	}
}

func TestRoomGivesTheReserveToTheDatabase(t *testing.T) {
	d := &fakeDisk{dir: t.TempDir(), size: 1000}
	g := New(d.dir, Options{MinFree: 10, Reserve: 300, Free: d.free})
	g.Check()
	d.used = 650 // 50 free besides the reserve
	if err := g.Room(40); err != nil || g.Status().Reserved != 300 {
		t.Fatalf("40 bytes fit beside the reserve: %v, %+v", err, g.Status())
	}
	if err := g.Room(200); err != nil || g.Status().Reserved != 0 || g.Status().Free != 350 {
		t.Fatalf("200 bytes need the reserve: %v, %+v", err, g.Status())
	}
	if err := g.Room(400); !errors.Is(err, ErrFull) {
		t.Fatalf("400 bytes do not fit even without the reserve: %v", err)
	}
}

func TestANewGuardKnowsItsReserve(t *testing.T) {
	dir := t.TempDir()
	if err := allocate(filepath.Join(dir, ReserveFile), 4096); err != nil {
		t.Fatal(err)
	}
	if got := New(dir, Options{}).Status().Reserved; got != 4096 {
		t.Fatalf("reserve after restart: %d bytes, want 4096", got)
	}
}

func TestAllocateUsesRealBlocks(t *testing.T) {
	p := filepath.Join(t.TempDir(), ReserveFile)
	if err := allocate(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	free, err := statfsFree(filepath.Dir(p))
	if err != nil || free == 0 {
		t.Fatalf("statfs: %d, %v", free, err)
	}
	if got := allocatedBytes(t, p); got < 1<<20 {
		t.Fatalf("reserve holds %d allocated bytes, want at least 1 MiB (not a sparse file)", got)
	}
}

func allocatedBytes(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Blocks) * 512
}

// Room runs inside database writes, on whatever goroutine writes: however
// often the disk turns low and back, it never waits for the one that
// watches Changed, and the changes it saw are one pending signal.
func TestRoomNeverWaitsForTheWatcher(t *testing.T) {
	d := &fakeDisk{dir: t.TempDir(), size: 1000}
	g := New(d.dir, Options{MinFree: 100, Reserve: 0, Free: d.free})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 {
			d.used = uint64(850 + 100*(i%2)) // low, then not, ...
			g.Room(1)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Room waited for a reader of Changed")
	}
	select {
	case <-g.Changed():
	default:
		t.Fatal("no change signalled")
	}
	select {
	case <-g.Changed():
		t.Fatal("ten changes left more than one signal")
	default:
	}
}
