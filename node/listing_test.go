package node

import (
	"slices"
	"testing"

	"github.com/mira-market/mira/storage"
)

// TestOldestKeepsTheOldest checks the choice a node catching up from a
// listing makes: the limit oldest entries it lacks, by (time, hash),
// oldest first, whatever order the listing came in (hash order).
func TestOldestKeepsTheOldest(t *testing.T) {
	item := func(time int64, h byte) storage.LedgerItem {
		return storage.LedgerItem{Time: time, Hash: storage.Hash{h}}
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
