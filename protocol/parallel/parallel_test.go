package parallel

import (
	"sync/atomic"
	"testing"
)

func TestForCallsEachIndexOnce(t *testing.T) {
	for _, tc := range []struct{ workers, n int }{{1, 0}, {1, 5}, {4, 0}, {4, 1}, {4, 1000}, {0, 3}, {16, 7}} {
		calls := make([]atomic.Int32, tc.n)
		For(tc.workers, tc.n, func(i int) { calls[i].Add(1) })
		for i := range calls {
			if got := calls[i].Load(); got != 1 {
				t.Errorf("workers %d, n %d: f(%d) called %d times", tc.workers, tc.n, i, got)
			}
		}
	}
}
