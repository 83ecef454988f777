package clock

import (
	"testing"
	"testing/synctest"
	"time"
)

// After fires once d has passed on the clock, not before.
func TestAfterFiresOnceTheDurationPassed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := System.Now()
		c := After(System, time.Second)
		time.Sleep(time.Second - time.Nanosecond)
		synctest.Wait()
		select {
		case <-c:
			t.Fatal("fired before the second passed")
		default:
		}
		if got := (<-c).Sub(start); got != time.Second {
			t.Errorf("fired after %v, want 1s", got)
		}
	})
}
