// Package marketd drives the pure market engine (package market) for a
// node: one goroutine, the loop, owns the engine and carries out what it
// asks (persist job records, queue ledger writes, sign, send, publish,
// start and stop runs); the market stream handler, the tier topics'
// readers and validators, the runs, the ledger writer and the node's API
// calls feed it closures on its input queue. It owns its goroutines (the
// loop, the topic readers and publishers, the runs, one outbox goroutine
// per peer with messages in flight) and ends them on Close.
//
// Files: driver.go (New, Start, Close), deps.go (what it is given: the
// interfaces it calls), loop.go (the loop and a Ready carried out),
// run.go (runs, restore), inbound.go (gossip validation, the stream
// handler, verification), outbox.go (per-peer outbound streams),
// gossip.go (a tier's publisher), api.go (the node's calls).
//
// # Queues
//
// One rule decides whether a queue blocks or drops: who is slow when it
// fills. A queue whose consumer is this node's own work never drops: it
// blocks its producer, or is bounded by the work the engine holds. A
// queue whose consumer is a remote peer (or an API client) is bounded and
// drops, counted.
//
//   - The engine's input queue (256 closures; consumer: the loop) blocks.
//     A stream handler or topic reader that waits stops reading, which
//     pushes back on the sending peer's stream (its write waits); the
//     runs' outcomes, the written holds and API calls wait likewise. What
//     an honest peer sent is never lost to this node's load, to turn into
//     a timeout that blames the peer. A peer's messages past its rate
//     ([limits], Limits) are dropped before the queue, counted in
//     mira_peer_limited_total: that peer, not this node, is the excess.
//   - A tier's gossip publisher queue (4,096 signed messages; consumer:
//     the publisher goroutine and gossipsub) blocks the loop.
//   - The ledger writes (consumer: the ledger writer and the disk) never
//     block and never drop: the queue is bounded by the jobs and leases
//     the engine holds, a write or two per change of each.
//   - The outbox (consumer: the peer reading its stream) drops. A peer's
//     queue holds at most 4,096 messages; past that, or when the peer's
//     stream cannot be opened or written (10 s), what waits for it is
//     dropped, counted in mira_market_outbox_dropped_total{why="queue"}
//     and {why="unreachable"}. At most 1,024 peers have a queue, and past
//     them a bid or decline (which anyone can draw) to a new peer is
//     dropped ({why="peers"}), while business (award, accept, heartbeat,
//     result, cancel) opens one, up to 1,024 more. The loop never waits
//     for a peer, so no peer can stall the market for the others.
//   - A watcher's channel (16 states; consumer: an API client) drops
//     intermediate states for a slow client, never the last.
//
// The two sides of a market stream agree: the receiver blocks, so a
// message is never lost to its load, and the sender drops, so a receiver
// that does not read (its stream write waits out the deadline) loses only
// its own messages, and the market's timeouts then fall on it. Gossip is
// the one path where a local consumer's queue is not this package's:
// gossipsub drops gossip for a topic reader that falls behind, which is
// harmless, as gossip carries only offers and taken notices, whose loss
// no timeout blames on anyone (an offer unanswered is offered again).
//
// # Time
//
// The loop's timer, the engine's time, message expiry, the gossip
// publisher's linger and the outbox's idle close read the injected clock
// (node/clock), so tests run them in a testing/synctest bubble.
package marketd
