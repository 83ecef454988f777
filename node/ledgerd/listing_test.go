package ledgerd

import (
	"bufio"
	"bytes"
	"slices"
	"testing"

	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
)

// TestOldestKeepsTheOldest checks the choice a node catching up from a
// listing makes: the limit oldest entries it lacks, by (time, hash),
// oldest first, whatever order the listing came in (hash order).
func TestOldestKeepsTheOldest(t *testing.T) {
	item := func(time int64, h byte) storage.LedgerItem {
		return storage.LedgerItem{Time: time, Hash: ledger.Hash{h}}
	}
	for _, tt := range []struct {
		name  string
		limit int
		in    []storage.LedgerItem
		want  []storage.LedgerItem
	}{
		{"fewer than the limit", 5, []storage.LedgerItem{item(3, 1), item(1, 2)}, []storage.LedgerItem{item(1, 2), item(3, 1)}},
		{"newer ones dropped", 2, []storage.LedgerItem{item(9, 1), item(2, 2), item(7, 3), item(1, 4), item(8, 5)},
			[]storage.LedgerItem{item(1, 4), item(2, 2)}},
		{"ties by hash", 2, []storage.LedgerItem{item(5, 9), item(5, 3), item(5, 7)}, []storage.LedgerItem{item(5, 3), item(5, 7)}},
		{"limit 0", 0, []storage.LedgerItem{item(1, 1)}, nil},
		{"a repeated hash once", 3, []storage.LedgerItem{item(4, 1), item(2, 1), item(3, 2)}, []storage.LedgerItem{item(2, 1), item(3, 2)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := oldest{limit: tt.limit}
			for _, it := range tt.in {
				o.add(it)
			}
			if got := o.sorted(); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzReadRecords feeds arbitrary bytes to the listing's record reader:
// it never panics, hands out only whole records, and what it accepts is
// what a recordWriter writes for those records.
func FuzzReadRecords(f *testing.F) {
	f.Add([]byte{40}, uint8(40))
	f.Add(append([]byte{32}, make([]byte, 33)...), uint8(32))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, uint8(40))
	f.Fuzz(func(t *testing.T, in []byte, size uint8) {
		if size == 0 {
			return
		}
		var recs [][]byte
		err := readRecords(bufio.NewReader(bytes.NewReader(in)), int(size), func(rec []byte) error {
			if len(rec) != int(size) {
				t.Fatalf("record of %d bytes, want %d", len(rec), size)
			}
			recs = append(recs, bytes.Clone(rec))
			return nil
		})
		if err != nil {
			return
		}
		var out bytes.Buffer
		w := recordWriter{bw: bufio.NewWriter(&out)}
		for _, r := range recs {
			if err := w.add(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.end(); err != nil {
			t.Fatal(err)
		}
		var again [][]byte
		if err := readRecords(bufio.NewReader(&out), int(size), func(rec []byte) error {
			again = append(again, bytes.Clone(rec))
			return nil
		}); err != nil || !slices.EqualFunc(again, recs, bytes.Equal) {
			t.Fatalf("records do not survive a write and a read: %v", err)
		}
	})
}
