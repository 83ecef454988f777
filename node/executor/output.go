package executor

import (
	"io"
	"sync/atomic"
	"time"
)

// outputClock records when a job first wrote any output. Its writers wrap a
// job's Stdout and Stderr; both may be written from any goroutine.
type outputClock struct {
	start time.Time
	first atomic.Int64 // nanoseconds after start, 0 until the first byte
}

func newOutputClock(start time.Time) *outputClock { return &outputClock{start: start} }

// wrap returns w with first-byte timing.
func (c *outputClock) wrap(w io.Writer) io.Writer {
	if w == nil {
		w = io.Discard
	}
	return &clockedWriter{w: w, c: c}
}

// firstOutput is the time from start to the first byte, zero if none.
func (c *outputClock) firstOutput() time.Duration { return time.Duration(c.first.Load()) }

type clockedWriter struct {
	w io.Writer
	c *outputClock
}

func (w *clockedWriter) Write(p []byte) (int, error) {
	if len(p) > 0 && w.c.first.Load() == 0 {
		w.c.first.CompareAndSwap(0, max(int64(time.Since(w.c.start)), 1))
	}
	return w.w.Write(p)
}
