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

// A Ticker ticks when a time.Ticker started with it does, for a reader
// that keeps up and for one busy past one or several ticks.
func TestTickerKeepsTimeTickersSchedule(t *testing.T) {
	const period = 10 * time.Second
	busy := []time.Duration{0, 3 * time.Second, 15 * time.Second, 0, 25 * time.Second, period, 0, 0}
	read := func(tick func() <-chan time.Time, next func()) []time.Duration {
		start := time.Now()
		var got []time.Duration
		for _, b := range busy {
			<-tick()
			next()
			got = append(got, time.Since(start))
			time.Sleep(b)
		}
		return got
	}
	synctest.Test(t, func(t *testing.T) {
		var got, want []time.Duration
		done := make(chan struct{})
		go func() {
			defer close(done)
			tk := NewTicker(System, period)
			defer tk.Stop()
			got = read(tk.C, tk.Next)
		}()
		tt := time.NewTicker(period)
		defer tt.Stop()
		want = read(func() <-chan time.Time { return tt.C }, func() {})
		<-done
		if len(got) != len(want) {
			t.Fatalf("ticks %v, want %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("ticks %v, want time.Ticker's %v", got, want)
			}
		}
	})
}
