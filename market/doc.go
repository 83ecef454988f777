// Package market is the pure logic of mira's compute market: which
// providers fit a job, how they rank, and (as it grows) offers, bids, awards
// and the job state machine. It does no I/O: no goroutines, sockets, disk or
// wall clock. Callers feed it inputs (records that arrived, the time now) and
// act on what it returns, like etcd's raft package.
package market
