package ledger

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Body is the kind-specific part of an entry: one of GrantBody, HoldBody,
// ReleaseBody, PaymentBody, LeaseBody, ReceiptBody, ClaimBody, WaiveBody,
// MajorityClaimBody, MajorityReleaseBody.
type Body interface {
	// Kind is the entry kind this body belongs to.
	Kind() Kind
	// appendBody appends the body as entries of version v encode it.
	appendBody(b []byte, v uint8) []byte
}

// MaxReplicas bounds a job's verification replicas (HoldBody.Replicas).
const MaxReplicas = 5

// GrantBody credits the account with what genesis grants it. Amounts are
// micro-credits.
type GrantBody struct {
	Amount uint64
}

// HoldBody escrows Amount for Job, a job the account posted, awarded to
// Provider, or to whichever provider wins it when Provider is empty (a hold
// written when the job is posted). Version 3 adds Expiry and Replicas: a
// hold naming a provider (version 3) can be closed before Expiry only by
// that provider (a claim or a waive).
type HoldBody struct {
	Job      Hash
	Provider peer.ID
	Amount   uint64
	// Expiry ends the claim window, Unix ns: after the entry's time for a
	// hold naming a provider, 0 for one naming none.
	Expiry int64
	// Replicas is the job's verification k, 1..MaxReplicas (1: none); a
	// hold naming no provider may leave it 0.
	Replicas uint8
}

// ReleaseBody closes the account's open hold for Job without paying: the
// one naming Provider (version 3), or the one of the job naming none (or,
// written by an older version, the job's only hold).
type ReleaseBody struct {
	Job      Hash
	Provider peer.ID
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
// receipt's hash, the result's content ID and the metered usage, and
// (version 3) the content ID of the job's outputs ("" for none). A
// provider's first receipt of a job of version 3 is its vote in a
// verdict among the job's replicas (LeaseRecord.Vote): the result and
// the outputs are what replicas must agree on.
type ReceiptBody struct {
	Job     Hash
	Receipt Hash
	Result  string
	Usage   Usage
	Outputs string
}

// ClaimBody pays, in a provider's chain, out of the requester's open hold
// for Job naming the provider (the hold entry HoldSeq): Amount is what the
// provider has claimed from the hold in all after this claim, which the
// requester accepted by signing Acceptance (an Acceptance of these fields).
// Final closes the hold and returns the rest to the requester.
type ClaimBody struct {
	Job        Hash
	Requester  peer.ID
	HoldSeq    uint64
	Amount     uint64
	Final      bool
	Receipt    Hash
	Acceptance []byte
}

// acceptanceOf is the acceptance a claim by provider quotes.
func (b ClaimBody) acceptanceOf(provider peer.ID) Acceptance {
	return Acceptance{Job: b.Job, Requester: b.Requester, Provider: provider, HoldSeq: b.HoldSeq,
		Amount: b.Amount, Final: b.Final, Receipt: b.Receipt}
}

// WaiveBody gives back, in a provider's chain, the award the requester's
// hold entry HoldSeq backs: the hold closes and what was not claimed of it
// returns to the requester.
type WaiveBody struct {
	Job       Hash
	Requester peer.ID
	HoldSeq   uint64
}

// Kind implements Body.
func (GrantBody) Kind() Kind { return KindGrant }

// Kind implements Body.
func (ClaimBody) Kind() Kind { return KindClaim }

// Kind implements Body.
func (WaiveBody) Kind() Kind { return KindWaive }

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

func (b GrantBody) appendBody(out []byte, _ uint8) []byte {
	return binary.BigEndian.AppendUint64(out, b.Amount)
}

func (b HoldBody) appendBody(out []byte, v uint8) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.Provider))
	out = binary.BigEndian.AppendUint64(out, b.Amount)
	if v < entryVersion {
		return out
	}
	out = binary.BigEndian.AppendUint64(out, uint64(b.Expiry))
	return append(out, b.Replicas)
}

func (b ReleaseBody) appendBody(out []byte, v uint8) []byte {
	out = append(out, b.Job[:]...)
	if v < entryVersion {
		return out
	}
	return appendField(out, []byte(b.Provider))
}

func (b ClaimBody) appendBody(out []byte, _ uint8) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.Requester))
	out = binary.BigEndian.AppendUint64(out, b.HoldSeq)
	out = binary.BigEndian.AppendUint64(out, b.Amount)
	out = append(out, boolByte(b.Final))
	out = append(out, b.Receipt[:]...)
	return append(out, b.Acceptance...)
}

func (b WaiveBody) appendBody(out []byte, _ uint8) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.Requester))
	return binary.BigEndian.AppendUint64(out, b.HoldSeq)
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

func (b PaymentBody) appendBody(out []byte, _ uint8) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.To))
	out = append(out, b.Receipt[:]...)
	return binary.BigEndian.AppendUint64(out, b.Amount)
}

// appendBody appends a lease of version 2 and later: the grant is a
// fixed-size field (a body whose grant is not GrantSize bytes does not
// decode).
func (b LeaseBody) appendBody(out []byte, v uint8) []byte {
	out = b.appendBodyV1(out)
	if v == entryVersion1 {
		return out
	}
	out = binary.BigEndian.AppendUint32(out, b.Attempt)
	return append(out, b.Grant...)
}

// appendBodyV1 appends a lease as version 1 wrote it.
func (b LeaseBody) appendBodyV1(out []byte) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.Requester))
	return binary.BigEndian.AppendUint64(out, b.Price)
}

// appendBody appends a receipt: version 3 adds the outputs' content ID
// after the usage, so older receipts keep their bytes.
func (b ReceiptBody) appendBody(out []byte, v uint8) []byte {
	out = append(out, b.Job[:]...)
	out = append(out, b.Receipt[:]...)
	out = appendField(out, []byte(b.Result))
	out = binary.BigEndian.AppendUint64(out, b.Usage.WallMS)
	out = binary.BigEndian.AppendUint64(out, b.Usage.GPUMS)
	out = binary.BigEndian.AppendUint32(out, uint32(b.Usage.ExitCode))
	if v < entryVersion {
		return out
	}
	return appendField(out, []byte(b.Outputs))
}

// EncodeBody returns a body's wire form (of the current version).
func EncodeBody(b Body) []byte { return b.appendBody(nil, entryVersion) }

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
		body = decodeHold(&r, v)
	case KindRelease:
		rl := ReleaseBody{Job: r.hash()}
		if v >= entryVersion {
			rl.Provider = r.optionalPeer()
		}
		body = rl
	case KindClaim, KindWaive:
		if v < entryVersion {
			return nil, fmt.Errorf("%w: %s in an entry of version %d", ErrMalformed, kind, v)
		}
		body = decodeSettlement(&r, kind)
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
		body = decodeReceipt(&r, v)
	case KindMajorityClaim, KindMajorityRelease:
		if v < entryVersion {
			return nil, fmt.Errorf("%w: %s in an entry of version %d", ErrMalformed, kind, v)
		}
		body = decodeVerdict(&r, kind)
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", ErrMalformed, kind)
	}
	if err := r.end(); err != nil {
		return nil, fmt.Errorf("%s body: %w", kind, err)
	}
	return body, nil
}

// decodeReceipt reads a receipt of version v.
func decodeReceipt(r *reader, v uint8) ReceiptBody {
	rc := ReceiptBody{Job: r.hash(), Receipt: r.hash(), Result: string(r.field(maxResultLen))}
	rc.Usage = Usage{WallMS: r.u64(), GPUMS: r.u64(), ExitCode: int32(r.u32())}
	if v >= entryVersion {
		rc.Outputs = string(r.field(maxResultLen))
	}
	if r.err == nil && (!utf8.ValidString(rc.Result) || !utf8.ValidString(rc.Outputs)) {
		r.fail("result or outputs ID is not UTF-8")
	}
	return rc
}

// decodeHold reads a hold of version v: of version 3, one naming a
// provider has replicas and an expiry (DecodeEntry checks it is after the
// entry's time), one naming none no expiry.
func decodeHold(r *reader, v uint8) HoldBody {
	h := HoldBody{Job: r.hash(), Provider: r.optionalPeer(), Amount: r.u64()}
	if v >= entryVersion {
		h.Expiry, h.Replicas = int64(r.u64()), r.u8()
	}
	switch {
	case r.err != nil:
	case h.Amount == 0:
		r.fail("hold of zero")
	case h.Replicas > MaxReplicas:
		r.fail("hold of %d replicas, limit %d", h.Replicas, MaxReplicas)
	case v < entryVersion:
	case h.Provider == "" && h.Expiry != 0:
		r.fail("hold naming no provider with an expiry")
	case h.Provider != "" && (h.Expiry <= 0 || h.Replicas == 0):
		r.fail("hold naming a provider without an expiry or replicas")
	}
	return h
}

// decodeSettlement reads a claim or a waive.
func decodeSettlement(r *reader, kind Kind) Body {
	job, req, seq := r.hash(), r.peer(), r.u64()
	if kind == KindWaive {
		return WaiveBody{Job: job, Requester: req, HoldSeq: seq}
	}
	c := ClaimBody{Job: job, Requester: req, HoldSeq: seq, Amount: r.u64()}
	switch r.u8() {
	case 0:
	case 1:
		c.Final = true
	default:
		r.fail("claim's final flag not 0 or 1")
	}
	c.Receipt = r.hash()
	c.Acceptance = bytes.Clone(r.take(AcceptanceSize))
	return c
}
