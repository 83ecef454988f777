// Package ledger holds the ledger's rules apart from any store: the wire
// form of entries and their signatures (one at a time or in batches),
// lease grants, fraud proofs, genesis, the validation rules (Rules.Apply,
// which read and change ledger state through the State interface), the
// buffer of entries that wait for what they need, and a replay of whole
// chains in memory (Rules.Replay). It does no I/O: storage keeps the
// ledger in Badger and implements State over its transactions, and the
// node reads genesis files and moves entries over the network.
package ledger
