// Package parallel spreads independent work over goroutines.
package parallel

import (
	"sync"
	"sync/atomic"
)

// For calls f(0) … f(n-1) on up to workers goroutines, each taking the
// next index as it is free, and returns when all calls have returned.
// With one worker (or one call) it calls f in order on the caller's
// goroutine.
func For(workers, n int, f func(i int)) {
	workers = min(workers, n)
	if workers <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}
