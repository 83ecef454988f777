package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/mira-market/mira/protocol/pb"
)

// Market message limits and names.
const (
	// MarketVersion is the version of market messages this code speaks.
	MarketVersion = 1
	// MaxMarketMessageSize bounds any signed market message.
	MaxMarketMessageSize = 64 << 10
	// MaxResultOutput bounds the output a result carries inline.
	MaxResultOutput = 32 << 10
	// MaxResultLog bounds the log a result carries inline.
	MaxResultLog = 16 << 10
	// MaxJobLifetime bounds a job's life: an offer's deadline is at most
	// this long after its creation, and after the receiver's clock by at
	// most this plus MaxClockSkew. A provider remembers an offer it
	// answered until its deadline (within a memory budget), so this also
	// bounds how long an offer can hold a provider's memory.
	MaxJobLifetime = 24 * time.Hour
	// MaxClockSkew is how far ahead of a receiver's clock a sender's may
	// run (and a relay's: see ErrTooFarAhead).
	MaxClockSkew = time.Hour
	// MaxMessageTTL bounds how far ahead a message may expire.
	MaxMessageTTL = MaxJobLifetime + MaxClockSkew
	// MaxHoldEntry bounds the ledger entry an award carries, and each of
	// the entries of its chain.
	MaxHoldEntry = 4 << 10
	// MaxAwardChain bounds the entries before the hold that an award
	// carries.
	MaxAwardChain = 32
	// AwardGrantSize is the size of an award's grant: the requester's
	// Ed25519 signature of the award (storage.LeaseGrant).
	AwardGrantSize = 64
	// ReceiptSize is the size of a bill's receipt hash (ReceiptHash).
	ReceiptSize = 32
	// AcceptanceSize is the size of an Accepted's acceptance: the
	// requester's Ed25519 signature of ledger.Acceptance.
	AcceptanceSize = 64
	// MaxJobDuration bounds a job's max_duration.
	MaxJobDuration = 24 * time.Hour

	marketDomain = "mira-market"
	maxArgs      = 64
	maxInputs    = 16
	maxArgLen    = 4096
)

var marketCodec = []byte("/mira/market/1")

// ErrTooFarAhead means a market message expires, or an offer's deadline
// falls, further ahead of the receiver's clock than the limit, by at most
// MaxClockSkew. Like ErrExpired it is a matter of clocks, not a fault of
// whoever relayed the message: one whose clock runs a little ahead of the
// receiver's passed it within the limit. Further ahead still is
// ErrBadMessage: no clock within the skew passes that.
var ErrTooFarAhead = errors.New("too far ahead")

// checkAhead checks that what, d ahead of the receiver's clock, is within
// limit; see ErrTooFarAhead.
func checkAhead(what string, d, limit time.Duration) error {
	switch {
	case d > limit+MaxClockSkew:
		return fmt.Errorf("%w: %s %v ahead, limit %v", ErrBadMessage, what, d.Round(time.Second), limit)
	case d > limit:
		return fmt.Errorf("%w: %s %v ahead, limit %v", ErrTooFarAhead, what, d.Round(time.Millisecond), limit)
	}
	return nil
}

// Topic names of the offer gossip, one per network and tier.
func JobsTopic(network, tier string) string { return Prefix(network) + "/jobs/" + tier + "/1" }

// MarketProtocol is the stream protocol ID of direct market messages.
func MarketProtocol(network string) string { return Prefix(network) + "/market/1" }

// JobID names a job: the SHA-256 of its offer's deterministic encoding, so
// the same offer always has the same ID and a replay is recognised.
type JobID [32]byte

// String is the hex form used in the API.
func (id JobID) String() string { return hex.EncodeToString(id[:]) }

// ParseJobID reads the hex form.
func ParseJobID(s string) (JobID, error) {
	var id JobID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("job id %q: want 64 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

func jobIDFrom(b []byte) (JobID, error) {
	var id JobID
	if len(b) != len(id) {
		return id, fmt.Errorf("%w: job id of %d bytes", ErrBadMessage, len(b))
	}
	copy(id[:], b)
	return id, nil
}

// OfferJobID computes an offer's job ID.
func OfferJobID(o *pb.Offer) (JobID, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(o)
	if err != nil {
		return JobID{}, fmt.Errorf("%w: encode offer: %v", ErrBadMessage, err)
	}
	return sha256.Sum256(b), nil
}

// Signed is a verified market message.
type Signed struct {
	// Signer is the author; OpenMarket has checked the signature.
	Signer peer.ID
	Msg    *pb.MarketMessage
	// Raw is the envelope as received.
	Raw []byte
	// Job is the job the message is about.
	Job JobID
}

// SealMarket signs a market message body for network, valid until expires.
func SealMarket(key crypto.PrivKey, network string, expires time.Time, msg *pb.MarketMessage) ([]byte, error) {
	msg.Version = MarketVersion
	msg.Network = network
	msg.ExpiresUnixMs = expires.UnixMilli()
	b, err := seal(key, marketDomain, marketCodec, msg)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMarketMessageSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxMarketMessageSize)
	}
	return b, nil
}

// OpenMarket verifies a signed market message: size, signature, version,
// network, expiry, that the author it names is the signer, and the body's
// fields. What it returns is safe to hand to the market engine.
func OpenMarket(data []byte, network string, now time.Time) (*Signed, error) {
	msg := &pb.MarketMessage{}
	signer, err := open(data, MaxMarketMessageSize, marketDomain, marketCodec, msg)
	if err != nil {
		return nil, fmt.Errorf("market: %w", err)
	}
	s := &Signed{Signer: signer, Msg: msg, Raw: data}
	if err := s.check(network, now); err != nil {
		return nil, fmt.Errorf("market: %w", err)
	}
	return s, nil
}

// OpenStoredOffer verifies the signature on an offer a node signed and
// stored, and decodes it, checking none of its fields: the rules may have
// tightened since it was signed, and the node must still know the job to
// end it. Recheck says whether it passes today's. For a node's own
// database only, never for what a peer sends.
func OpenStoredOffer(data []byte) (*Signed, error) {
	msg := &pb.MarketMessage{}
	signer, err := open(data, MaxMarketMessageSize, marketDomain, marketCodec, msg)
	if err != nil {
		return nil, fmt.Errorf("market: %w", err)
	}
	o := msg.GetOffer()
	if o == nil {
		return nil, fmt.Errorf("market: %w: not an offer", ErrBadMessage)
	}
	id, err := OfferJobID(o)
	if err != nil {
		return nil, fmt.Errorf("market: %w", err)
	}
	return &Signed{Signer: signer, Msg: msg, Raw: data, Job: id}, nil
}

// Recheck checks a message's fields as OpenMarket does, at now.
func (s *Signed) Recheck(network string, now time.Time) error {
	if err := s.check(network, now); err != nil {
		return fmt.Errorf("market: %w", err)
	}
	return nil
}

func (s *Signed) check(network string, now time.Time) error {
	m := s.Msg
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, a...))
	}
	if m.Version != MarketVersion {
		return bad("version %d, want %d", m.Version, MarketVersion)
	}
	if m.Network != network {
		return bad("network %q, want %q", m.Network, network)
	}
	expires := time.UnixMilli(m.ExpiresUnixMs)
	if !expires.After(now) {
		return fmt.Errorf("%w at %v", ErrExpired, expires.UTC())
	}
	if err := checkAhead("expiry", expires.Sub(now), MaxMessageTTL); err != nil {
		return err
	}
	var err error
	switch b := m.Body.(type) {
	case *pb.MarketMessage_Offer:
		if s.Job, err = OfferJobID(b.Offer); err != nil {
			return err
		}
		return checkOffer(b.Offer, s.Signer, network, now)
	case *pb.MarketMessage_Bid:
		s.Job, err = jobIDFrom(b.Bid.JobId)
		if err == nil {
			err = isAuthor(b.Bid.Provider, s.Signer)
		}
	case *pb.MarketMessage_Decline:
		s.Job, err = jobIDFrom(b.Decline.JobId)
		if err == nil {
			err = isAuthor(b.Decline.Provider, s.Signer)
		}
		if err == nil && len(b.Decline.Reason) > 256 {
			err = bad("decline reason of %d bytes", len(b.Decline.Reason))
		}
		if err == nil && len(b.Decline.Waive) > MaxHoldEntry {
			err = bad("decline waive of %d bytes, limit %d", len(b.Decline.Waive), MaxHoldEntry)
		}
	case *pb.MarketMessage_Award:
		s.Job, err = jobIDFrom(b.Award.JobId)
		if err == nil {
			if _, perr := peer.IDFromBytes(b.Award.Provider); perr != nil {
				err = bad("award names no provider")
			}
		}
		if err == nil && len(b.Award.Hold) > MaxHoldEntry {
			err = bad("award hold of %d bytes, limit %d", len(b.Award.Hold), MaxHoldEntry)
		}
		if err == nil && len(b.Award.Grant) != AwardGrantSize {
			err = bad("award grant of %d bytes, want %d", len(b.Award.Grant), AwardGrantSize)
		}
		if err == nil && len(b.Award.Chain) > MaxAwardChain {
			err = bad("award chain of %d entries, limit %d", len(b.Award.Chain), MaxAwardChain)
		}
		for _, e := range b.Award.GetChain() {
			if err == nil && len(e) > MaxHoldEntry {
				err = bad("award chain entry of %d bytes, limit %d", len(e), MaxHoldEntry)
			}
		}
	case *pb.MarketMessage_Accept:
		s.Job, err = jobIDFrom(b.Accept.JobId)
	case *pb.MarketMessage_Taken:
		s.Job, err = jobIDFrom(b.Taken.JobId)
		if err == nil {
			if _, perr := peer.IDFromBytes(b.Taken.Provider); perr != nil {
				err = bad("taken notice names no provider")
			}
		}
	case *pb.MarketMessage_Cancel:
		s.Job, err = jobIDFrom(b.Cancel.JobId)
		if err == nil && len(b.Cancel.Reason) > 256 {
			err = bad("cancel reason of %d bytes", len(b.Cancel.Reason))
		}
	case *pb.MarketMessage_Heartbeat:
		s.Job, err = jobIDFrom(b.Heartbeat.JobId)
	case *pb.MarketMessage_Result:
		s.Job, err = jobIDFrom(b.Result.JobId)
		if err == nil {
			err = checkResult(b.Result)
		}
	case *pb.MarketMessage_Bill:
		s.Job, err = jobIDFrom(b.Bill.JobId)
		if err == nil {
			err = checkBill(b.Bill)
		}
	case *pb.MarketMessage_Accepted:
		s.Job, err = jobIDFrom(b.Accepted.JobId)
		if err == nil && len(b.Accepted.Acceptance) != AcceptanceSize {
			err = bad("acceptance of %d bytes, want %d", len(b.Accepted.Acceptance), AcceptanceSize)
		}
	case *pb.MarketMessage_ResultAck:
		s.Job, err = jobIDFrom(b.ResultAck.JobId)
	default:
		return bad("no body")
	}
	return err
}

// checkResult checks a result's shape; whether its inline output hashes to
// its content ID is the requester's check.
func checkResult(r *pb.Result) error {
	switch {
	case len(r.Output) > MaxResultOutput:
		return fmt.Errorf("%w: result output of %d bytes, limit %d", ErrBadMessage, len(r.Output), MaxResultOutput)
	case len(r.Log) > MaxResultLog:
		return fmt.Errorf("%w: result log of %d bytes, limit %d", ErrBadMessage, len(r.Log), MaxResultLog)
	case len(r.Error) > 1024:
		return fmt.Errorf("%w: result error of %d bytes", ErrBadMessage, len(r.Error))
	case r.ResultId == "" && len(r.Output) > 0:
		return fmt.Errorf("%w: result output without a content ID", ErrBadMessage)
	case r.Usage != nil && (r.Usage.WallMs < 0 || r.Usage.GpuMs < 0 || r.Usage.FirstOutputMs < 0):
		return fmt.Errorf("%w: negative usage", ErrBadMessage)
	}
	if r.ResultId != "" {
		if _, _, err := ParseBlobID(r.ResultId); err != nil {
			return fmt.Errorf("%w: result_id: %w", ErrBadMessage, err)
		}
	}
	if r.OutputsId != "" {
		if _, _, err := ParseBlobID(r.OutputsId); err != nil {
			return fmt.Errorf("%w: outputs_id: %w", ErrBadMessage, err)
		}
	} else if r.OutputsSize != 0 {
		return fmt.Errorf("%w: outputs_size without outputs_id", ErrBadMessage)
	}
	return nil
}

// checkBill checks a bill's shape: a receipt hash, usage that is not
// negative, content IDs that parse. Whether its amount is fair is the
// requester's check (market's bill cap).
func checkBill(b *pb.Bill) error {
	u := b.Usage
	switch {
	case len(b.Receipt) != ReceiptSize:
		return fmt.Errorf("%w: bill receipt of %d bytes, want %d", ErrBadMessage, len(b.Receipt), ReceiptSize)
	case b.HoldSeq == 0:
		return fmt.Errorf("%w: bill names no hold", ErrBadMessage)
	case u != nil && (u.WallMs < 0 || u.GpuMs < 0 || u.FirstOutputMs < 0):
		return fmt.Errorf("%w: negative usage", ErrBadMessage)
	}
	for _, id := range []string{b.ResultId, b.OutputsId} {
		if id == "" {
			continue
		}
		if _, _, err := ParseBlobID(id); err != nil {
			return fmt.Errorf("%w: bill content ID: %w", ErrBadMessage, err)
		}
	}
	return nil
}

// ReceiptHash is what a provider's receipt names a result by: the SHA-256
// of the result body's deterministic encoding. Unlike the signed message,
// whose expiry changes with each send, it stays the same however often
// the result is re-sent, so the bill, the receipt entry, the claim and
// the result the requester finally gets all name one thing.
func ReceiptHash(r *pb.Result) ([32]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: encode result: %v", ErrBadMessage, err)
	}
	return sha256.Sum256(b), nil
}

// isAuthor checks that the peer a message names as its author signed it.
func isAuthor(named []byte, signer peer.ID) error {
	p, err := peer.IDFromBytes(named)
	if err != nil {
		return fmt.Errorf("%w: author: %v", ErrBadMessage, err)
	}
	if p != signer {
		return fmt.Errorf("%w: names %s, signed by %s", ErrSigner, p, signer)
	}
	return nil
}

func checkOffer(o *pb.Offer, signer peer.ID, network string, now time.Time) error {
	if err := isAuthor(o.Requester, signer); err != nil {
		return err
	}
	if o.Network != network {
		return fmt.Errorf("%w: offer for network %q", ErrBadMessage, o.Network)
	}
	if len(o.Nonce) != 16 {
		return fmt.Errorf("%w: nonce of %d bytes, want 16", ErrBadMessage, len(o.Nonce))
	}
	if o.Spec == nil {
		return fmt.Errorf("%w: offer without a spec", ErrBadMessage)
	}
	if err := CheckSpec(o.Spec); err != nil {
		return fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	created, deadline := time.UnixMilli(o.CreatedUnixMs), time.UnixMilli(o.DeadlineUnixMs)
	switch {
	case !deadline.After(created):
		return fmt.Errorf("%w: deadline before creation", ErrBadMessage)
	case deadline.Sub(created) > MaxJobLifetime:
		return fmt.Errorf("%w: deadline %v after creation, limit %v", ErrBadMessage, deadline.Sub(created), MaxJobLifetime)
	}
	return checkAhead("deadline", deadline.Sub(now), MaxJobLifetime+MaxClockSkew)
}

// GPUSourceDetected in a JobSpec's gpu_source asks for GPUs the provider's
// node detected, not ones its operator only declared.
const GPUSourceDetected = "detected"

// CheckSpec validates a job spec; its errors name the field, for API users.
func CheckSpec(s *pb.JobSpec) error {
	switch {
	case s.Executor == "" || len(s.Executor) > 32:
		return fmt.Errorf("executor: required, at most 32 characters")
	case s.Tier != TierInteractive && s.Tier != TierBatch:
		return fmt.Errorf("tier: %q is not %q or %q", s.Tier, TierInteractive, TierBatch)
	case s.MaxDurationMs <= 0 || time.Duration(s.MaxDurationMs)*time.Millisecond > MaxJobDuration:
		return fmt.Errorf("max_duration: must be positive and at most %v", MaxJobDuration)
	case len(s.Image) > 512 || len(s.Module) > 512:
		return fmt.Errorf("image/module: at most 512 characters")
	case len(s.Command)+len(s.Args) > maxArgs || len(s.Env) > maxArgs:
		return fmt.Errorf("args: at most %d command, args and env entries", maxArgs)
	}
	for _, a := range append(append([]string{}, s.Command...), s.Args...) {
		if len(a) > maxArgLen {
			return fmt.Errorf("args: an argument over %d bytes", maxArgLen)
		}
	}
	for _, e := range s.Env {
		if e.Name == "" || len(e.Name)+len(e.Value) > maxArgLen {
			return fmt.Errorf("env: empty name or entry over %d bytes", maxArgLen)
		}
	}
	if len(s.Inputs) > maxInputs {
		return fmt.Errorf("inputs: at most %d", maxInputs)
	}
	for _, in := range s.Inputs {
		if _, _, err := ParseBlobID(in); err != nil {
			return fmt.Errorf("inputs: %w", err)
		}
	}
	if r := s.Resources; r != nil {
		if r.Gpus > 64 || len(r.GpuModel) > 64 {
			return fmt.Errorf("resources.gpus: at most 64, gpu_model at most 64 characters")
		}
	}
	switch {
	case s.GpuSource != "" && s.GpuSource != GPUSourceDetected:
		return fmt.Errorf("gpu_source: %q is not %q (or empty, for any)", s.GpuSource, GPUSourceDetected)
	case s.GpuSource != "" && s.GetResources().GetGpus() == 0:
		return fmt.Errorf("gpu_source: %q needs resources.gpus of at least 1", s.GpuSource)
	case s.GetVerify().GetReplicas() > MaxReplicas:
		return fmt.Errorf("verify.replicas: %d, at most %d", s.GetVerify().GetReplicas(), MaxReplicas)
	}
	return nil
}

// MaxReplicas bounds a job's verify.replicas: the ledger counts the votes
// of at most this many providers (ledger.MaxReplicas).
const MaxReplicas = 5

// Replicas is how many providers run a job of spec s: its
// verify.replicas, at least 1.
func Replicas(s *pb.JobSpec) int { return max(1, int(s.GetVerify().GetReplicas())) }
