// Package market is the pure logic of mira's compute market: which
// providers fit a job and how they rank, offers, bids, awards and the job
// state machine (Engine), and the money rules (money.go: what a job can
// cost, which hold backs an award, what a finished job settles to). It
// does no I/O: no goroutines, sockets, disk or wall clock. Callers feed it
// inputs (messages, the time now, written holds) and carry out what it
// returns in a Ready, then Advance it, like etcd's raft package.
//
// Files, one concern each: engine.go (the Engine, its inputs and
// accessors), job.go (the records), ready.go (Ready and Advance),
// requester.go and award.go (a requester's jobs), provider.go (a
// provider's answers and leases), tick.go (timers), offers.go (the offers
// a provider remembers), providers.go (capacity records and ranking),
// money.go, images.go.
package market
