package ledger

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
)

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
