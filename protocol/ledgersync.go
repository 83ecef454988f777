package protocol

// The ledger's wire vocabulary: its gossip topic and messages, and the
// ledger sync stream protocol (chain fetches, set reconciliation, the
// listing fallback and fraud-proof pushes).

// LedgerTopic is the name of network's ledger gossip topic, which carries
// new ledger entries and fraud proofs.
func LedgerTopic(network string) string { return Prefix(network) + "/ledger/2" }

// Ledger gossip messages: a type byte, then entries (each a frame: its
// uvarint length, then its bytes) or a fraud proof.
const (
	LedgerGossipEntries = 1
	LedgerGossipFraud   = 2
	// MaxGossipEntries bounds the entries of one ledger gossip message, so
	// one stays under pubsub's 1 MiB message limit (entries are at most
	// 4 KiB).
	MaxGossipEntries = 128
)

// ReconcileProtocol is the stream protocol ID of ledger sync on network.
// It carries one request per stream: a kind byte (Sync*), then the
// request's frames (see ReadFrame). Every frame is at most MaxSyncFrame
// bytes; an empty frame ends a list.
func ReconcileProtocol(network string) string { return Prefix(network) + "/reconcile/1" }

// Ledger sync request kinds.
const (
	// SyncChain: one frame, a seq (8 bytes, big-endian) and then an
	// account's ID → that account's entries after the seq, at most
	// MaxChainBatch, and an empty frame.
	SyncChain = 1
	// SyncReconcile: a set reconciliation session, then the entries each
	// side lacks.
	SyncReconcile = 2
	// SyncList: every entry's hash and time (ListingRecord each); then
	// hashes asked for → their entries. (Kind 3 was the same list without
	// times.)
	SyncList = 4
	// SyncFraud: fraud proofs the peer lacks (it offered entries of
	// accounts this node has frozen), then an empty frame → a byte for
	// each proof the peer then holds.
	SyncFraud = 5
)

// Limits of the ledger sync protocol.
const (
	// MaxSyncFrame bounds a sync frame other than an entry.
	MaxSyncFrame = 64 << 10
	// MaxChainBatch bounds the entries of one chain answer.
	MaxChainBatch = 1024
	// MaxSyncEntries bounds the entries moved in one session, each way.
	MaxSyncEntries = 1 << 16
	// ListingRecord is the size of a listing's record: an entry's hash,
	// then its time (Unix nanoseconds, big-endian).
	ListingRecord = 32 + 8
)
