package ledger

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The wire form of a ledger entry, version 3. Integers are big-endian;
// variable-size fields carry a 2-byte length prefix, which makes the encoding
// canonical: one entry has exactly one encoding, so its hash is well defined.
//
//	version   1 byte, entryVersion (or 1, see below)
//	account   u16 length, peer ID bytes (an Ed25519 peer ID, 38 bytes)
//	seq       8 bytes, ≥ 1
//	prev      32 bytes, the hash of entry seq-1 (zeros for seq 1)
//	kind      1 byte
//	time      8 bytes, Unix nanoseconds, < 2^63
//	body      u16 length, the kind's body (see the *Body types)
//	signature u16 length, 64 bytes of Ed25519 signature
//
// The signature covers signingDomain, the network name (u16 length prefixed)
// and every byte of the encoding before the signature field, so an entry is
// bound to one network.
//
// Version 2 added a lease's attempt and grant (LeaseBody). Version 3 added
// a hold's expiry and replicas, a release's provider, and the claim and
// waive kinds (settlement by the provider, docs/TRUST.md). Entries of older
// versions still decode, and encode back to the same bytes, so a ledger
// stored before keeps its history, and keep their version's rules; but a
// lease of version 1 has no grant, so no node admits one any more.
const (
	entryVersion = 3
	// entryVersion1 is the version before leases carried grants.
	entryVersion1 = 1
	// entryVersion2 is the version before claims.
	entryVersion2 = 2
	// MaxEntrySize is the largest encoded entry accepted.
	MaxEntrySize = 4096
	// maxResultLen bounds a receipt's result content ID.
	maxResultLen  = 512
	signingDomain = "mira-ledger-entry/1"
)

// Errors of decoding and signatures.
var (
	// ErrMalformed marks bytes that are not a well-formed entry (or body, or
	// fraud proof): truncated, oversized, trailing bytes, unknown kind or
	// version, a field out of range.
	ErrMalformed = errors.New("malformed ledger entry")
	// ErrBadSignature marks an entry whose signature does not verify under
	// its account's key for this network. An entry signed for another
	// network fails here too: the network is part of what is signed.
	ErrBadSignature = errors.New("bad ledger entry signature")
	// ErrBadAccount marks an account that is not an Ed25519 peer ID.
	ErrBadAccount = errors.New("ledger account is not an Ed25519 peer ID")
)

// Hash is a SHA-256 digest: an entry's hash, a job ID, a receipt hash.
type Hash [32]byte

// String returns the hash in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText encodes the hash as hex (for JSON).
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText parses a hash written by MarshalText.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 2*len(h) {
		return fmt.Errorf("hash: want %d hex digits, got %d", 2*len(h), len(b))
	}
	_, err := hex.Decode(h[:], b)
	if err != nil {
		return fmt.Errorf("hash: %w", err)
	}
	return nil
}

// IsZero reports whether h is all zeros.
func (h Hash) IsZero() bool { return h == Hash{} }

// Kind is the type of a ledger entry.
type Kind uint8

// The kinds of ledger entries.
const (
	// KindGrant credits an account with what genesis grants it (its own
	// first entry).
	KindGrant Kind = 1
	// KindHold escrows credits for a job the account posted.
	KindHold Kind = 2
	// KindRelease closes a hold without paying.
	KindRelease Kind = 3
	// KindPayment pays a provider out of a hold and closes the hold.
	KindPayment Kind = 4
	// KindLease records, in the provider's chain, that it took a job.
	KindLease Kind = 5
	// KindReceipt records, in the provider's chain, a job's result and usage.
	KindReceipt Kind = 6
	// KindClaim pays, in the provider's chain, what the requester accepted
	// out of the requester's hold naming the provider (version 3).
	KindClaim Kind = 7
	// KindWaive gives back, in the provider's chain, an award: it closes
	// the requester's hold naming the provider (version 3).
	KindWaive Kind = 8
	// KindMajorityClaim pays, in the provider's chain, out of the
	// requester's hold naming it, on the word of a majority of the job's
	// replicas (their receipts) instead of the requester's (version 3).
	KindMajorityClaim Kind = 9
	// KindMajorityRelease closes, in the requester's chain, the hold of a
	// replica whose receipt a majority of the job's replicas contradicts
	// (version 3).
	KindMajorityRelease Kind = 10
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindGrant:
		return "grant"
	case KindHold:
		return "hold"
	case KindRelease:
		return "release"
	case KindPayment:
		return "payment"
	case KindLease:
		return "lease"
	case KindReceipt:
		return "receipt"
	case KindClaim:
		return "claim"
	case KindWaive:
		return "waive"
	case KindMajorityClaim:
		return "majority-claim"
	case KindMajorityRelease:
		return "majority-release"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Entry is one link of an account's hash chain.
type Entry struct {
	// Account is the peer ID of the Ed25519 key that signs the chain.
	Account peer.ID
	// Seq numbers the account's entries from 1, without gaps.
	Seq uint64
	// Prev is the hash of entry Seq-1; zero for Seq 1.
	Prev Hash
	// Time is when the account wrote the entry (nanosecond precision).
	Time time.Time
	// Body is the kind-specific content; its type gives the entry's kind.
	Body Body
	// Signature is the account's Ed25519 signature (see SigningBytes).
	Signature []byte

	// version is the encoding an entry decoded from an older version
	// encodes back to (its hash and signature are of those bytes); 0 is
	// the current one. Only history stored before version 3 has another:
	// nothing writes an older version.
	version uint8
}

// Version returns the entry's encoding version (and so which rules
// apply to it).
func (e Entry) Version() uint8 {
	if e.version == 0 {
		return entryVersion
	}
	return e.version
}

// Kind returns the kind of the entry's body (0 without a body).
func (e Entry) Kind() Kind {
	if e.Body == nil {
		return 0
	}
	return e.Body.Kind()
}

// AsVersion1 returns e to be encoded as version 1 encoded it (a lease
// without its attempt and grant), to be signed again. Nothing writes
// version 1 any more: it is for building the history of a store older
// than version 2, in tests of what reads one.
func (e Entry) AsVersion1() Entry {
	e.version = entryVersion1
	return e
}

// AsVersion2 returns e to be encoded as version 2 encoded it (a hold
// without expiry and replicas, a release without provider), to be signed
// again, and to be judged by version 2's rules: for building the history
// of a ledger older than version 3, in tests.
func (e Entry) AsVersion2() Entry {
	e.version = entryVersion2
	return e
}

// appendUnsigned appends the encoding of everything but the signature.
func (e Entry) appendUnsigned(out []byte) []byte {
	v := e.Version()
	out = append(out, v)
	out = appendField(out, []byte(e.Account))
	out = binary.BigEndian.AppendUint64(out, e.Seq)
	out = append(out, e.Prev[:]...)
	out = append(out, byte(e.Kind()))
	out = binary.BigEndian.AppendUint64(out, uint64(e.Time.UnixNano()))
	if e.Body == nil {
		return appendField(out, nil)
	}
	// The body's length prefix is filled in once the body is written.
	at := len(out)
	out = append(out, 0, 0)
	out = e.Body.appendBody(out, v)
	binary.BigEndian.PutUint16(out[at:], uint16(len(out)-at-2))
	return out
}

// Encode returns the entry's wire form. Decoding it gives the entry back.
func (e Entry) Encode() []byte {
	out := e.appendUnsigned(make([]byte, 0, 256))
	return appendField(out, e.Signature)
}

// Hash returns the SHA-256 of the entry's encoding.
func (e Entry) Hash() Hash { return sha256.Sum256(e.Encode()) }

// SigningBytes returns what the account signs: a domain tag, the network
// name and the entry's encoding without the signature.
func (e Entry) SigningBytes(network string) []byte {
	return e.appendUnsigned(signingPrefix(make([]byte, 0, 256), network))
}

func signingPrefix(out []byte, network string) []byte {
	out = append(out, signingDomain...)
	out = append(out, 0)
	return appendField(out, []byte(network))
}

// Sign sets the entry's Account (when empty) and Signature with priv, an
// Ed25519 key, for network.
func (e *Entry) Sign(network string, priv crypto.PrivKey) error {
	id, err := AccountOf(priv)
	if err != nil {
		return err
	}
	if e.Account == "" {
		e.Account = id
	}
	if e.Account != id {
		return fmt.Errorf("sign entry of %s with the key of %s", e.Account, id)
	}
	sig, err := priv.Sign(e.SigningBytes(network))
	if err != nil {
		return fmt.Errorf("sign entry: %w", err)
	}
	e.Signature = sig
	return nil
}

// DecodeEntry parses an entry's wire form strictly: known version and kind,
// every field in range, the body well formed, no trailing bytes, at most
// MaxEntrySize bytes. It does not check the signature. Errors wrap
// ErrMalformed.
func DecodeEntry(data []byte) (Entry, error) {
	if len(data) > MaxEntrySize {
		return Entry{}, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(data), MaxEntrySize)
	}
	r := reader{b: data}
	v := r.u8()
	if r.err == nil && (v < entryVersion1 || v > entryVersion) {
		return Entry{}, fmt.Errorf("%w: version %d", ErrMalformed, v)
	}
	e := Entry{}
	if v != entryVersion {
		e.version = v
	}
	e.Account = r.peer()
	e.Seq = r.u64()
	e.Prev = r.hash()
	kind := Kind(r.u8())
	nanos := r.u64()
	body := r.field(MaxEntrySize)
	e.Signature = r.field(ed25519.SignatureSize)
	if err := r.end(); err != nil {
		return Entry{}, err
	}
	switch {
	case e.Seq == 0:
		return Entry{}, fmt.Errorf("%w: seq 0", ErrMalformed)
	case e.Seq == 1 && !e.Prev.IsZero():
		return Entry{}, fmt.Errorf("%w: seq 1 with a previous hash", ErrMalformed)
	case nanos >= 1<<63:
		return Entry{}, fmt.Errorf("%w: timestamp out of range", ErrMalformed)
	case len(e.Signature) != ed25519.SignatureSize:
		return Entry{}, fmt.Errorf("%w: signature of %d bytes", ErrMalformed, len(e.Signature))
	}
	e.Time = time.Unix(0, int64(nanos)).UTC()
	b, err := decodeBody(v, kind, body)
	if err != nil {
		return Entry{}, err
	}
	if h, ok := b.(HoldBody); ok && h.Expiry != 0 && h.Expiry <= int64(nanos) {
		// A claim window that closed before it opened.
		return Entry{}, fmt.Errorf("%w: hold expires before it is written", ErrMalformed)
	}
	e.Body = b
	return e, nil
}
