// Package clock is the time a node's loops read and sleep on, passed in
// so that a test can run them on a fake clock (or in a testing/synctest
// bubble, where the real one is fake already).
package clock

import "time"

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a time.Timer behind an interface.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// System is the machine's clock.
var System Clock = system{}

type system struct{}

func (system) Now() time.Time { return time.Now() }

func (system) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.Timer.C }

// After is time.After on c: the channel receives the time once d has
// passed. Nothing needs to stop the timer behind it: an unstopped timer
// is collected once unreferenced, as time.After's is since Go 1.23.
func After(c Clock, d time.Duration) <-chan time.Time { return c.NewTimer(d).C() }

// Ticker is a time.Ticker on a Clock: it ticks every period from its
// start, and when the reader is busy past a tick, that tick waits for it
// and the ones after it are dropped. Built on one Timer and no goroutine,
// it must be told when a tick was taken: call Next right after each
// receive from C.
type Ticker struct {
	clock  Clock
	period time.Duration
	due    time.Time // when the timer fires
	timer  Timer
}

// NewTicker starts a Ticker; its first tick is period from now.
func NewTicker(c Clock, period time.Duration) *Ticker {
	return &Ticker{clock: c, period: period, due: c.Now().Add(period), timer: c.NewTimer(period)}
}

// C receives the ticks.
func (t *Ticker) C() <-chan time.Time { return t.timer.C() }

// Next arms the tick after the one just received: the next one due on
// the schedule that is still ahead, skipping those a busy reader missed.
func (t *Ticker) Next() {
	now := t.clock.Now()
	t.due = t.due.Add(t.period)
	if late := now.Sub(t.due); late >= 0 {
		t.due = t.due.Add((late/t.period + 1) * t.period)
	}
	t.timer.Reset(t.due.Sub(now))
}

// Stop stops the ticks.
func (t *Ticker) Stop() { t.timer.Stop() }
