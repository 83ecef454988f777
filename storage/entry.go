package storage

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	voied "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// The wire form of a ledger entry, version 2. Integers are big-endian;
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
// Version 2 added a lease's attempt and grant (LeaseBody). Entries of
// version 1 still decode, and encode back to the same bytes, so a ledger
// stored before keeps its history; but a lease of version 1 has no grant,
// so no node admits one any more.
const (
	entryVersion = 2
	// entryVersion1 is the version before leases carried grants.
	entryVersion1 = 1
	// MaxEntrySize is the largest encoded entry accepted.
	MaxEntrySize = 4096
	// maxResultLen bounds a receipt's result content ID.
	maxResultLen  = 512
	signingDomain = "mira-ledger-entry/1"
)

// ed25519PeerPrefix is how every Ed25519 peer ID starts: an identity
// multihash (0x00, length 36) of the protobuf PublicKey{Type: Ed25519,
// Data: 32 bytes}. The public key is the 32 bytes that follow.
const ed25519PeerPrefix = "\x00\x24\x08\x01\x12\x20"

const ed25519PeerLen = 38

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
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Body is the kind-specific part of an entry: one of GrantBody, HoldBody,
// ReleaseBody, PaymentBody, LeaseBody, ReceiptBody.
type Body interface {
	// Kind is the entry kind this body belongs to.
	Kind() Kind
	appendBody(b []byte) []byte
}

// GrantBody credits the account with what genesis grants it. Amounts are
// micro-credits.
type GrantBody struct {
	Amount uint64
}

// HoldBody escrows Amount for Job, a job the account posted, awarded to
// Provider, or to whichever provider wins it when Provider is empty (a hold
// written when the job is posted).
type HoldBody struct {
	Job      Hash
	Provider peer.ID
	Amount   uint64
}

// ReleaseBody closes the account's open hold for Job without paying.
type ReleaseBody struct {
	Job Hash
}

// PaymentBody pays Amount to To out of the account's open hold for Job and
// closes the hold; what the hold had beyond Amount is released. Receipt is
// the hash of the provider's receipt the payment settles.
type PaymentBody struct {
	Job     Hash
	To      peer.ID
	Receipt Hash
	Amount  uint64
}

// LeaseBody records, in a provider's chain, that it took Job from Requester
// at Price, on the award numbered Attempt. Grant is the requester's
// signature of that award (LeaseGrant, naming this provider): without it a
// lease is not valid, so only a provider the requester awarded the job
// can record a lease (and so a receipt) of it. A lease decoded from an
// entry of version 1 has neither.
type LeaseBody struct {
	Job       Hash
	Requester peer.ID
	Price     uint64
	Attempt   uint32
	Grant     []byte
}

// grantOf is the grant a lease by provider quotes.
func (b LeaseBody) grantOf(provider peer.ID) LeaseGrant {
	return LeaseGrant{Job: b.Job, Requester: b.Requester, Provider: provider, Price: b.Price, Attempt: b.Attempt}
}

// Usage is what a job consumed.
type Usage struct {
	WallMS   uint64
	GPUMS    uint64
	ExitCode int32
}

// ReceiptBody records, in a provider's chain, the outcome of Job: the
// receipt's hash, the result's content ID and the metered usage.
type ReceiptBody struct {
	Job     Hash
	Receipt Hash
	Result  string
	Usage   Usage
}

// Kind implements Body.
func (GrantBody) Kind() Kind { return KindGrant }

// Kind implements Body.
func (HoldBody) Kind() Kind { return KindHold }

// Kind implements Body.
func (ReleaseBody) Kind() Kind { return KindRelease }

// Kind implements Body.
func (PaymentBody) Kind() Kind { return KindPayment }

// Kind implements Body.
func (LeaseBody) Kind() Kind { return KindLease }

// Kind implements Body.
func (ReceiptBody) Kind() Kind { return KindReceipt }

func (b GrantBody) appendBody(out []byte) []byte {
	return binary.BigEndian.AppendUint64(out, b.Amount)
}

func (b HoldBody) appendBody(out []byte) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.Provider))
	return binary.BigEndian.AppendUint64(out, b.Amount)
}

func (b ReleaseBody) appendBody(out []byte) []byte {
	return append(out, b.Job[:]...)
}

func (b PaymentBody) appendBody(out []byte) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.To))
	out = append(out, b.Receipt[:]...)
	return binary.BigEndian.AppendUint64(out, b.Amount)
}

// appendBody appends a lease of version 2: the grant is a fixed-size
// field (a body whose grant is not GrantSize bytes does not decode).
func (b LeaseBody) appendBody(out []byte) []byte {
	out = b.appendBodyV1(out)
	out = binary.BigEndian.AppendUint32(out, b.Attempt)
	return append(out, b.Grant...)
}

// appendBodyV1 appends a lease as version 1 wrote it.
func (b LeaseBody) appendBodyV1(out []byte) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.Requester))
	return binary.BigEndian.AppendUint64(out, b.Price)
}

func (b ReceiptBody) appendBody(out []byte) []byte {
	out = append(out, b.Job[:]...)
	out = append(out, b.Receipt[:]...)
	out = appendField(out, []byte(b.Result))
	out = binary.BigEndian.AppendUint64(out, b.Usage.WallMS)
	out = binary.BigEndian.AppendUint64(out, b.Usage.GPUMS)
	return binary.BigEndian.AppendUint32(out, uint32(b.Usage.ExitCode))
}

// EncodeBody returns a body's wire form (of the current version).
func EncodeBody(b Body) []byte { return b.appendBody(nil) }

// DecodeBody parses a body of the given kind, of the current version,
// strictly: every field in range, no trailing bytes. Errors wrap
// ErrMalformed.
func DecodeBody(kind Kind, data []byte) (Body, error) {
	return decodeBody(entryVersion, kind, data)
}

// decodeBody parses a body of the given kind as entries of version v
// encode it.
func decodeBody(v uint8, kind Kind, data []byte) (Body, error) {
	r := reader{b: data}
	var body Body
	switch kind {
	case KindGrant:
		g := GrantBody{Amount: r.u64()}
		if r.err == nil && g.Amount == 0 {
			r.fail("grant of zero")
		}
		body = g
	case KindHold:
		h := HoldBody{Job: r.hash(), Provider: r.optionalPeer(), Amount: r.u64()}
		if r.err == nil && h.Amount == 0 {
			r.fail("hold of zero")
		}
		body = h
	case KindRelease:
		body = ReleaseBody{Job: r.hash()}
	case KindPayment:
		body = PaymentBody{Job: r.hash(), To: r.peer(), Receipt: r.hash(), Amount: r.u64()}
	case KindLease:
		l := LeaseBody{Job: r.hash(), Requester: r.peer(), Price: r.u64()}
		if v != entryVersion1 {
			l.Attempt = r.u32()
			l.Grant = bytes.Clone(r.take(GrantSize))
		}
		body = l
	case KindReceipt:
		rc := ReceiptBody{Job: r.hash(), Receipt: r.hash(), Result: string(r.field(maxResultLen))}
		rc.Usage = Usage{WallMS: r.u64(), GPUMS: r.u64(), ExitCode: int32(r.u32())}
		if r.err == nil && !utf8.ValidString(rc.Result) {
			r.fail("result is not UTF-8")
		}
		body = rc
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", ErrMalformed, kind)
	}
	if err := r.end(); err != nil {
		return nil, fmt.Errorf("%s body: %w", kind, err)
	}
	return body, nil
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

	// v1 marks an entry decoded from the encoding of version 1, which it
	// encodes back to (its hash and signature are of those bytes). Only
	// history stored before version 2 has it: nothing writes version 1.
	v1 bool
}

// Kind returns the kind of the entry's body (0 without a body).
func (e Entry) Kind() Kind {
	if e.Body == nil {
		return 0
	}
	return e.Body.Kind()
}

// appendUnsigned appends the encoding of everything but the signature.
func (e Entry) appendUnsigned(out []byte) []byte {
	if e.v1 {
		out = append(out, entryVersion1)
	} else {
		out = append(out, entryVersion)
	}
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
	if l, ok := e.Body.(LeaseBody); ok && e.v1 {
		out = l.appendBodyV1(out)
	} else {
		out = e.Body.appendBody(out)
	}
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
	id, err := accountOf(priv)
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

// sigRule is the rule of every check of a ledger entry's signature, alone
// (VerifySignature) or in a batch (verifyBatch): ZIP-215, that is the
// cofactored equation [8][S]B = [8]R + [8][k]A, S below the group order,
// encodings of A and R that are not canonical accepted. Under ZIP-215
// single and batch verification agree on every input, so two nodes that
// check the same entry in different ways (alone, or in a batch of any
// size) can never disagree on it; CometBFT checks its validators'
// signatures the same way. Every signature valid under RFC 8032 as Go's
// crypto/ed25519 checks it (cofactorless, canonical R) is valid under
// ZIP-215; the converse fails only for signatures built from points
// outside the prime-order subgroup or non-canonical encodings, which no
// honest signer produces. Signing is unchanged (libp2p's Ed25519).
var sigRule = &voied.Options{Verify: voied.VerifyOptionsZIP_215}

// VerifySignature checks the signatures an entry carries, for network: the
// account's over the entry and, in a lease, the requester's grant (a lease
// without a valid one is not an entry anyone may write, whatever the
// state of the ledger). The error wraps ErrBadSignature (or ErrBadAccount)
// for the first, ErrBadLeaseGrant for the second.
func (e Entry) VerifySignature(network string) error {
	if err := e.verifyAccountSignature(network); err != nil {
		return err
	}
	return e.verifyGrant(network)
}

// verifyAccountSignature checks the account's signature alone: all that a
// fraud proof needs, since two entries of one seq that the account signed
// prove it equivocated, whatever else they carry.
func (e *Entry) verifyAccountSignature(network string) error {
	pub, err := accountKey(e.Account)
	if err != nil {
		return err
	}
	if len(e.Signature) != ed25519.SignatureSize || !voied.VerifyWithOptions(voied.PublicKey(pub), e.SigningBytes(network), e.Signature, sigRule) {
		return e.badSignature()
	}
	return nil
}

// verifyGrant checks a lease's grant (of any other kind, nothing).
func (e *Entry) verifyGrant(network string) error {
	if l, ok := e.Body.(LeaseBody); ok {
		if err := l.grantOf(e.Account).Verify(network, l.Grant); err != nil {
			return e.badGrant(err)
		}
	}
	return nil
}

func (e *Entry) badSignature() error {
	return fmt.Errorf("%w: %s seq %d", ErrBadSignature, e.Account, e.Seq)
}

func (e *Entry) badGrant(err error) error {
	return fmt.Errorf("seq %d: %w", e.Seq, err)
}

// verifyBatch checks the signatures of the cands in cs without an error
// yet, for network, as one batch (one or two alone), and sets the error of
// each that fails to what VerifySignature returns for it: the verdicts are
// VerifySignature's. A lease's grant goes into the same batch as the
// entries' signatures. A batch of 64 where all are valid costs about 60 %
// of checking each alone; one with a bad signature costs the failed batch
// check more than that (each is then checked alone, to find which).
func verifyBatch(network string, cs []*cand) {
	n := 0
	for _, c := range cs {
		if c.err == nil {
			n++
			if c.e.Kind() == KindLease {
				n++
			}
		}
	}
	if n <= 2 {
		// One or two signatures check faster alone than as a batch.
		for _, c := range cs {
			if c.err == nil {
				c.err = c.e.VerifySignature(network)
			}
		}
		return
	}
	bv := voied.NewBatchVerifierWithCapacity(n)
	// in is what the batch checks of each cand: its signature at index
	// sig, and its grant at index grant (-1: none, or grantErr already
	// refuses it).
	type item struct {
		c          *cand
		sig, grant int
		grantErr   error
	}
	in := make([]item, 0, n)
	added := 0
	// The batch uses each account's public key in expanded form (tables
	// that speed up the multiplication). Entries come sorted by account,
	// so consecutive ones share a key: it is expanded once for them.
	var (
		lastAcct peer.ID
		lastKey  *voied.ExpandedPublicKey
	)
	for _, c := range cs {
		if c.err != nil {
			continue
		}
		pub, err := accountKey(c.e.Account)
		if err != nil {
			c.err = err
			continue
		}
		if len(c.e.Signature) != ed25519.SignatureSize {
			c.err = c.e.badSignature()
			continue
		}
		if lastKey == nil || c.e.Account != lastAcct {
			lastAcct, lastKey = c.e.Account, nil
			if x, err := voied.NewExpandedPublicKey(voied.PublicKey(pub)); err == nil {
				lastKey = x
			}
		}
		if lastKey != nil {
			bv.AddExpandedWithOptions(lastKey, c.e.SigningBytes(network), c.e.Signature, sigRule)
		} else {
			// Not a point: the batch marks it invalid, as
			// VerifySignature finds it.
			bv.AddWithOptions(voied.PublicKey(pub), c.e.SigningBytes(network), c.e.Signature, sigRule)
		}
		it := item{c: c, sig: added, grant: -1}
		added++
		if l, ok := c.e.Body.(LeaseBody); ok {
			g := l.grantOf(c.e.Account)
			if rpub, err := g.check(l.Grant); err != nil {
				it.grantErr = err
			} else {
				bv.AddWithOptions(rpub, g.signingBytes(network), l.Grant, sigRule)
				it.grant = added
				added++
			}
		}
		in = append(in, it)
	}
	if len(in) == 0 {
		return
	}
	// The random scalars only have to be unpredictable to whoever signed
	// the entries.
	_, valid := bv.Verify(rand.Reader)
	for _, it := range in {
		switch {
		case !valid[it.sig]:
			it.c.err = it.c.e.badSignature()
		case it.grantErr != nil:
			it.c.err = it.c.e.badGrant(it.grantErr)
		case it.grant >= 0 && !valid[it.grant]:
			l := it.c.e.Body.(LeaseBody)
			it.c.err = it.c.e.badGrant(l.grantOf(it.c.e.Account).forged())
		}
	}
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
	if r.err == nil && v != entryVersion && v != entryVersion1 {
		return Entry{}, fmt.Errorf("%w: version %d", ErrMalformed, v)
	}
	e := Entry{v1: v == entryVersion1}
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
	e.Body = b
	return e, nil
}

// accountKey returns the Ed25519 public key inside an Ed25519 peer ID.
func accountKey(id peer.ID) (ed25519.PublicKey, error) {
	if !isEd25519Peer([]byte(id)) {
		return nil, fmt.Errorf("%w: %q", ErrBadAccount, id)
	}
	return ed25519.PublicKey(id[len(ed25519PeerPrefix):]), nil
}

func isEd25519Peer(b []byte) bool {
	return len(b) == ed25519PeerLen && string(b[:len(ed25519PeerPrefix)]) == ed25519PeerPrefix
}

// accountOf returns the account (peer ID) of an Ed25519 private key.
func accountOf(priv crypto.PrivKey) (peer.ID, error) {
	if priv == nil || priv.Type() != crypto.Ed25519 {
		return "", fmt.Errorf("%w: ledger keys are Ed25519", ErrBadAccount)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("peer ID of key: %w", err)
	}
	if !isEd25519Peer([]byte(id)) {
		return "", fmt.Errorf("%w: %s", ErrBadAccount, id)
	}
	return id, nil
}

func appendField(out, f []byte) []byte {
	out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
	return append(out, f...)
}

// reader decodes fixed and length-prefixed fields; the first error sticks
// and later reads return zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
	}
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail("truncated")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) hash() (h Hash) {
	copy(h[:], r.take(len(h)))
	return h
}

// field reads a length-prefixed field of at most max bytes; the result is
// a copy.
func (r *reader) field(max int) []byte {
	v := r.take(2)
	if v == nil {
		return nil
	}
	n := int(binary.BigEndian.Uint16(v))
	if n > max {
		r.fail("field of %d bytes, limit %d", n, max)
		return nil
	}
	return bytes.Clone(r.take(n))
}

// peer reads a length-prefixed Ed25519 peer ID.
func (r *reader) peer() peer.ID {
	p := r.optionalPeer()
	if r.err == nil && p == "" {
		r.fail("peer is not an Ed25519 peer ID")
	}
	return p
}

// optionalPeer reads a length-prefixed Ed25519 peer ID or an empty field.
func (r *reader) optionalPeer() peer.ID {
	v := r.field(ed25519PeerLen)
	if r.err == nil && len(v) > 0 && !isEd25519Peer(v) {
		r.fail("peer is not an Ed25519 peer ID")
	}
	return peer.ID(v)
}

func (r *reader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	return r.err
}
