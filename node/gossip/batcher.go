// Package gossip publishes a node's gossip in batches, and scores the
// peers it gossips with.
package gossip

import (
	"context"
	"sync"
	"time"

	"github.com/mira-market/mira/node/clock"
)

// Batcher packs the messages queued together (and those that follow
// within a delay) into as few gossip messages as the topic's limits
// allow: every node validates, forwards and delivers a gossip message at
// a cost of its own, whatever it carries. The market's offers and taken
// notices and the ledger's own new entries go out through one each.
type Batcher struct {
	cfg  Config
	wake chan struct{} // something was queued
	room chan struct{} // something was taken from a full queue

	mu    sync.Mutex
	queue [][]byte
}

// Config is what a Batcher batches, and how.
type Config struct {
	// Delay is how long the first message of a batch waits for others
	// (none: the batch is what is queued when the publisher gets to it).
	Delay time.Duration
	// FlushAt ends the wait once this many messages are queued (0: the
	// batch waits the whole Delay).
	FlushAt int
	// Limit bounds the messages queued: Add blocks while as many wait
	// (0: no bound, and Add never blocks).
	Limit int
	// Pack turns a batch into gossip messages.
	Pack func(batch [][]byte) [][]byte
	// Publish publishes one gossip message (and logs what fails).
	Publish func(ctx context.Context, msg []byte)
	// Clock times the Delay; nil is the system clock.
	Clock clock.Clock
}

// NewBatcher returns a batcher; Run publishes what it queues.
func NewBatcher(cfg Config) *Batcher {
	if cfg.Clock == nil {
		cfg.Clock = clock.System
	}
	return &Batcher{cfg: cfg, wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// Add queues messages for the next batch. With a Limit, a full queue
// blocks the caller until the publisher catches up (or ctx ends, and the
// messages are dropped), as publishing itself would: nothing is dropped
// otherwise.
func (b *Batcher) Add(ctx context.Context, msgs ...[]byte) {
	for {
		b.mu.Lock()
		if b.cfg.Limit == 0 || len(b.queue) < b.cfg.Limit {
			b.queue = append(b.queue, msgs...)
			more := b.cfg.Limit > 0 && len(b.queue) < b.cfg.Limit
			b.mu.Unlock()
			signal(b.wake)
			if more {
				signal(b.room) // pass the room on to another waiting caller
			}
			return
		}
		b.mu.Unlock()
		select {
		case <-b.room:
		case <-ctx.Done():
			return
		}
	}
}

// Run publishes the queued messages in batches until ctx ends; what is
// queued then is dropped.
func (b *Batcher) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		}
		if b.cfg.Delay > 0 && !b.linger(ctx) {
			return
		}
		for _, msg := range b.cfg.Pack(b.take()) {
			b.cfg.Publish(ctx, msg)
		}
	}
}

// linger waits Delay for company, or until FlushAt messages are queued.
// It reports false if ctx ended first.
func (b *Batcher) linger(ctx context.Context) bool {
	t := b.cfg.Clock.NewTimer(b.cfg.Delay)
	defer t.Stop()
	for !b.full() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C():
			return true
		case <-b.wake:
		}
	}
	return true
}

func (b *Batcher) full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cfg.FlushAt > 0 && len(b.queue) >= b.cfg.FlushAt
}

// take empties the queue.
func (b *Batcher) take() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	batch := b.queue
	b.queue = nil
	if len(batch) > 0 {
		signal(b.room)
	}
	return batch
}

// signal wakes the receiver of ch, or leaves it a wake-up it has not
// taken yet.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
