package protocol

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/pb"
)

func sampleOffer(requester peer.ID) *pb.MarketMessage {
	return &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: &pb.Offer{
		Requester: []byte(requester), Network: "lab", Nonce: bytes.Repeat([]byte{7}, 16),
		CreatedUnixMs: testNow.UnixMilli(), DeadlineUnixMs: testNow.Add(time.Minute).UnixMilli(),
		Spec: &pb.JobSpec{Executor: "noop", Tier: TierBatch, MaxPrice: 10, MaxDurationMs: 1000},
	}}}
}

func TestOpenMarket(t *testing.T) {
	k, id := newKey(t)
	_, other := newKey(t)
	seal := func(m *pb.MarketMessage, expires time.Time) []byte {
		b, err := SealMarket(k, "lab", expires, m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	later := testNow.Add(time.Minute)
	offer := seal(sampleOffer(id), later)
	flipped := bytes.Clone(offer)
	flipped[len(flipped)-1] ^= 1
	forgedOffer := sampleOffer(other) // names another requester
	forgedBid := &pb.MarketMessage{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{JobId: make([]byte, 32), Provider: []byte(other), Price: 1}}}
	badTier := sampleOffer(id)
	badTier.GetOffer().Spec.Tier = "urgent"
	hugeArgs := sampleOffer(id)
	hugeArgs.GetOffer().Spec.Args = []string{strings.Repeat("a", 4000), strings.Repeat("a", 4000)}
	for range 20 {
		hugeArgs.GetOffer().Spec.Args = append(hugeArgs.GetOffer().Spec.Args, strings.Repeat("b", 4000))
	}
	// An offer's deadline: at most MaxJobLifetime after its creation, and
	// after now by at most MaxJobLifetime + MaxClockSkew.
	lifetime := func(created, deadline time.Time) *pb.MarketMessage {
		m := sampleOffer(id)
		m.GetOffer().CreatedUnixMs, m.GetOffer().DeadlineUnixMs = created.UnixMilli(), deadline.UnixMilli()
		return m
	}
	longest := lifetime(testNow, testNow.Add(MaxJobLifetime))
	tooLong := lifetime(testNow, testNow.Add(MaxJobLifetime+time.Millisecond))
	century := lifetime(testNow, testNow.Add(100*365*24*time.Hour))
	bornLater := lifetime(testNow.Add(2*time.Hour), testNow.Add(2*time.Hour+MaxJobLifetime))
	bornMuchLater := lifetime(testNow.Add(3*time.Hour), testNow.Add(3*time.Hour+MaxJobLifetime))
	skewed := lifetime(testNow.Add(30*time.Minute), testNow.Add(30*time.Minute+MaxJobLifetime))
	backwards := lifetime(testNow, testNow.Add(-time.Minute))
	shortID := &pb.MarketMessage{Body: &pb.MarketMessage_Accept{Accept: &pb.Accept{JobId: []byte{1}}}}
	awardGranted := func(chain [][]byte, grant []byte) *pb.MarketMessage {
		return &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
			JobId: make([]byte, 32), Provider: []byte(other), Price: 1, Attempt: 1, Hold: []byte{1}, Chain: chain,
			Grant: grant,
		}}}
	}
	award := func(chain [][]byte) *pb.MarketMessage { return awardGranted(chain, make([]byte, AwardGrantSize)) }
	entry := bytes.Repeat([]byte{2}, 300)
	sum := sha256.Sum256([]byte("outputs"))
	blob, err := BlobID(sum[:])
	if err != nil {
		t.Fatal(err)
	}
	result := func(outputsID string, outputsSize uint64) *pb.MarketMessage {
		return &pb.MarketMessage{Body: &pb.MarketMessage_Result{Result: &pb.Result{
			JobId: make([]byte, 32), Attempt: 1, OutputsId: outputsID, OutputsSize: outputsSize,
		}}}
	}
	bill := func(mod func(*pb.Bill)) *pb.MarketMessage {
		b := &pb.Bill{JobId: make([]byte, 32), Attempt: 1, HoldSeq: 3, Receipt: make([]byte, ReceiptSize),
			Usage: &pb.Usage{WallMs: 5}, ResultId: blob.String(), Amount: 7, Final: true}
		mod(b)
		return &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: b}}
	}
	accepted := func(sig []byte) *pb.MarketMessage {
		return &pb.MarketMessage{Body: &pb.MarketMessage_Accepted{Accepted: &pb.Accepted{
			JobId: make([]byte, 32), Attempt: 1, Amount: 7, Final: true, Acceptance: sig}}}
	}
	waived := func(waive []byte) *pb.MarketMessage {
		return &pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{
			JobId: make([]byte, 32), Provider: []byte(id), Reason: "r", Waive: waive}}}
	}

	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"valid offer", offer, nil},
		{"bill", seal(bill(func(*pb.Bill) {}), later), nil},
		{"bill with a short receipt", seal(bill(func(b *pb.Bill) { b.Receipt = b.Receipt[1:] }), later), ErrBadMessage},
		{"bill naming no hold", seal(bill(func(b *pb.Bill) { b.HoldSeq = 0 }), later), ErrBadMessage},
		{"bill with negative usage", seal(bill(func(b *pb.Bill) { b.Usage.GpuMs = -1 }), later), ErrBadMessage},
		{"bill with a bad content ID", seal(bill(func(b *pb.Bill) { b.OutputsId = "x" }), later), ErrBadMessage},
		{"accepted", seal(accepted(make([]byte, AcceptanceSize)), later), nil},
		{"accepted without an acceptance", seal(accepted(nil), later), ErrBadMessage},
		{"result ack", seal(&pb.MarketMessage{Body: &pb.MarketMessage_ResultAck{ResultAck: &pb.ResultAck{JobId: make([]byte, 32)}}}, later), nil},
		{"decline with a waive", seal(waived(make([]byte, MaxHoldEntry)), later), nil},
		{"decline with a waive too large", seal(waived(make([]byte, MaxHoldEntry+1)), later), ErrBadMessage},
		{"bad signature", flipped, ErrSignature},
		{"expired", seal(sampleOffer(id), testNow.Add(-time.Millisecond)), ErrExpired},
		{"expiry just past the limit", seal(sampleOffer(id), testNow.Add(MaxMessageTTL+time.Millisecond)), ErrTooFarAhead},
		{"expiry past the limit by the clock skew", seal(sampleOffer(id), testNow.Add(MaxMessageTTL+MaxClockSkew)), ErrTooFarAhead},
		{"expiry past the limit and the skew", seal(sampleOffer(id), testNow.Add(MaxMessageTTL+MaxClockSkew+time.Millisecond)), ErrBadMessage},
		{"forged offer", seal(forgedOffer, later), ErrSigner},
		{"forged bid", seal(forgedBid, later), ErrSigner},
		{"bad tier", seal(badTier, later), ErrBadMessage},
		{"deadline the longest allowed", seal(longest, later), nil},
		{"deadline too long after creation", seal(tooLong, later), ErrBadMessage},
		{"deadline a century away", seal(century, later), ErrBadMessage},
		{"created in the future, deadline too far from now", seal(bornLater, later), ErrTooFarAhead},
		{"created past the skew, deadline too far from now", seal(bornMuchLater, later), ErrBadMessage},
		{"created within the clock skew", seal(skewed, later), nil},
		{"deadline before creation", seal(backwards, later), ErrBadMessage},
		{"short job id", seal(shortID, later), ErrBadMessage},
		{"no body", seal(&pb.MarketMessage{}, later), ErrBadMessage},
		{"award with its chain", seal(award(slices.Repeat([][]byte{entry}, MaxAwardChain)), later), nil},
		{"award chain too long", seal(award(slices.Repeat([][]byte{entry}, MaxAwardChain+1)), later), ErrBadMessage},
		{"award chain entry too large", seal(award([][]byte{make([]byte, MaxHoldEntry+1)}), later), ErrBadMessage},
		{"award without a grant", seal(awardGranted(nil, nil), later), ErrBadMessage},
		{"award grant short", seal(awardGranted(nil, make([]byte, AwardGrantSize-1)), later), ErrBadMessage},
		{"award grant long", seal(awardGranted(nil, make([]byte, AwardGrantSize+1)), later), ErrBadMessage},
		{"result with outputs", seal(result(blob.String(), 7), later), nil},
		{"result outputs not a content ID", seal(result("not-a-cid", 7), later), ErrBadMessage},
		{"result outputs size without an ID", seal(result("", 7), later), ErrBadMessage},
		{"garbage", []byte("garbage"), ErrBadMessage},
		{"oversized", bytes.Repeat([]byte{1}, MaxMarketMessageSize+1), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenMarket(tc.data, "lab", testNow)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			// A matter of clocks is not a malformed message: validators
			// tell them apart to spare the relay.
			if errors.Is(err, ErrTooFarAhead) && errors.Is(err, ErrBadMessage) {
				t.Fatalf("err = %v is both too far ahead and malformed", err)
			}
		})
	}
	if _, err := SealMarket(k, "lab", later, hugeArgs); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("sealing an oversized offer: err = %v", err)
	}
	if _, err := OpenMarket(offer, "other-net", testNow); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("offer of another network: err = %v", err)
	}
}

func TestOfferJobIDIsStableAcrossRounds(t *testing.T) {
	k, id := newKey(t)
	m1, m2 := sampleOffer(id), sampleOffer(id)
	m2.Round = 2
	b1, _ := SealMarket(k, "lab", testNow.Add(time.Minute), m1)
	b2, _ := SealMarket(k, "lab", testNow.Add(time.Minute), m2)
	s1, err1 := OpenMarket(b1, "lab", testNow)
	s2, err2 := OpenMarket(b2, "lab", testNow)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if bytes.Equal(b1, b2) || s1.Job != s2.Job {
		t.Fatalf("rounds must differ as messages but share the job ID")
	}
	other := sampleOffer(id)
	other.GetOffer().Nonce[0] = 8
	b3, _ := SealMarket(k, "lab", testNow.Add(time.Minute), other)
	s3, _ := OpenMarket(b3, "lab", testNow)
	if s3.Job == s1.Job {
		t.Fatal("different offers share a job ID")
	}
}

func FuzzOpenMarket(f *testing.F) {
	k, id := newKey(f)
	b, _ := SealMarket(k, "lab", testNow.Add(time.Minute), sampleOffer(id))
	f.Add(b)
	bid, _ := SealMarket(k, "lab", testNow.Add(time.Minute), &pb.MarketMessage{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{JobId: make([]byte, 32), Provider: []byte(id)}}})
	f.Add(bid)
	award, _ := SealMarket(k, "lab", testNow.Add(time.Minute), &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: make([]byte, 32), Provider: []byte(id), Price: 1, Attempt: 1, Hold: []byte{1}, Grant: make([]byte, AwardGrantSize)}}})
	f.Add(award)
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := OpenMarket(data, "lab", testNow)
		if err == nil && (s.Signer == "" || s.Msg.Body == nil) {
			t.Fatalf("opened an incomplete message")
		}
		// What an award that opens carries is within its bounds: the
		// provider quotes its grant in a ledger entry as it is.
		if err != nil {
			return
		}
		if a := s.Msg.GetAward(); a != nil && (len(a.Grant) != AwardGrantSize || len(a.Hold) > MaxHoldEntry || len(a.Chain) > MaxAwardChain) {
			t.Fatalf("opened an award with a grant of %d bytes, a hold of %d, a chain of %d", len(a.Grant), len(a.Hold), len(a.Chain))
		}
	})
}

func FuzzReadBlobRequest(f *testing.F) {
	id, _ := BlobID(make([]byte, 32))
	f.Add(Frame(BlobRequest{ID: id, Offset: 42}.Encode()))
	f.Add(Frame(BlobHeader{Status: BlobOK, Size: 7, Message: "x"}.Encode()))
	f.Add([]byte{0xff, 0xff, 0x03})
	f.Fuzz(func(t *testing.T, b []byte) {
		if req, err := ReadBlobRequest(bytes.NewReader(b)); err == nil {
			again, err := ReadBlobRequest(bytes.NewReader(Frame(req.Encode())))
			if err != nil || again.ID != req.ID || again.Offset != req.Offset {
				t.Fatalf("request does not round-trip: %v", err)
			}
		}
		if h, err := ReadBlobHeader(bytes.NewReader(b)); err == nil {
			again, err := ReadBlobHeader(bytes.NewReader(Frame(h.Encode())))
			if err != nil || again != h {
				t.Fatalf("header does not round-trip: %v", err)
			}
		}
	})
}

func TestMarketGossipFrames(t *testing.T) {
	msg := func(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }
	for _, tc := range []struct {
		name     string
		msgs     [][]byte
		messages int
	}{
		{"one", [][]byte{msg(10, 1)}, 1},
		{"several", [][]byte{msg(10, 1), msg(300, 2), msg(MaxMarketMessageSize, 3)}, 1},
		{"more than a message holds", slices.Repeat([][]byte{msg(5, 4)}, MaxGossipMarketMessages+1), 2},
		{"more bytes than a message holds", slices.Repeat([][]byte{msg(MaxMarketMessageSize, 5)}, 9), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			joined := JoinMarketGossip(tc.msgs)
			if len(joined) != tc.messages {
				t.Fatalf("%d gossip messages, want %d", len(joined), tc.messages)
			}
			var back [][]byte
			for _, g := range joined {
				part, err := SplitMarketGossip(g)
				if err != nil {
					t.Fatal(err)
				}
				back = append(back, part...)
			}
			if !slices.EqualFunc(back, tc.msgs, bytes.Equal) {
				t.Fatal("messages differ after a round trip")
			}
		})
	}
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrBadMessage},
		{"zero length", []byte{0}, ErrBadMessage},
		{"truncated", []byte{5, 1, 2}, ErrBadMessage},
		{"length not minimal", []byte{0x81, 0x00, 1}, ErrBadMessage},
		{"frame too large", AppendFrame(nil, msg(MaxMarketMessageSize+1, 1)), ErrBadMessage},
		{"too many frames", bytes.Repeat([]byte{1, 7}, MaxGossipMarketMessages+1), ErrTooLarge},
		{"too many bytes", bytes.Repeat(AppendFrame(nil, msg(60000, 1)), 9), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := SplitMarketGossip(tc.data); !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzSplitMarketGossip(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, []byte("offer")), []byte("taken")))
	f.Add([]byte{0x81, 0x00, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := SplitMarketGossip(data)
		if err != nil {
			return
		}
		joined := JoinMarketGossip(msgs)
		if len(joined) != 1 || !bytes.Equal(joined[0], data) {
			t.Fatalf("split then join does not give the message back")
		}
	})
}

// A node's stored offer opens whatever rules it fails today, so that the
// node can end its job; Recheck then names the rule. Only the signature
// and the kind are checked on opening.
func TestOpenStoredOffer(t *testing.T) {
	k, id := newKey(t)
	tooLong := sampleOffer(id)
	tooLong.GetOffer().DeadlineUnixMs = testNow.Add(MaxJobLifetime + time.Minute).UnixMilli()
	raw, err := SealMarket(k, "lab", testNow.Add(time.Minute), tooLong)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenMarket(raw, "lab", testNow); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("OpenMarket: err = %v, want %v", err, ErrBadMessage)
	}
	s, err := OpenStoredOffer(raw)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := OfferJobID(tooLong.GetOffer())
	if s.Signer != id || s.Job != want {
		t.Fatalf("opened as job %x by %s, want %x by %s", s.Job[:4], s.Signer, want[:4], id)
	}
	if err := s.Recheck("lab", testNow); !errors.Is(err, ErrBadMessage) || !strings.Contains(err.Error(), "after creation") {
		t.Fatalf("Recheck: err = %v, want the lifetime named", err)
	}
	flipped := bytes.Clone(raw)
	flipped[len(flipped)-1] ^= 1
	bid, _ := SealMarket(k, "lab", testNow.Add(time.Minute), &pb.MarketMessage{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{JobId: make([]byte, 32), Provider: []byte(id)}}})
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{{"bad signature", flipped, ErrSignature}, {"not an offer", bid, ErrBadMessage}} {
		if _, err := OpenStoredOffer(tc.data); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}
