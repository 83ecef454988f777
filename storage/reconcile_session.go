package storage

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
)

// A reconciliation session runs over one stream between two peers. The
// initiator (the side that opens the stream) streams the coded symbols of its
// set; the responder subtracts its own, peels, and asks for more until it has
// decoded the difference, which it then sends back as two hash lists:
//
//	initiator                              responder
//	Start()      symbols [0, 64)      →
//	                                  ←    request [64, m)     (not decoded yet)
//	Step         symbols [64, m)      →    (one or more frames)
//	                                  ←    diff … diff(last)   (decoded)
//	Step … done                            done
//
// The responder sizes each request from an estimate of the difference (see
// rcPeeler.estimate): a difference of up to ~20 takes one round trip, larger
// ones two (~97%) or three. Both sides end knowing the same difference:
// Missing (hashes to fetch from the peer) and Extra (hashes to send to it).
// If the difference is too large for the symbols allowed, the side that
// finds out sends an abort frame and both get ErrDifferenceTooLarge, most
// often after the first frame.
//
// # Usage
//
// Each frame is one message on the stream, at most ReconcileMaxFrame bytes
// (e.g. varint-delimited with go-msgio, reading with that limit). Both sides
// run the same loop; only the first frame differs:
//
//	set := ledgerSet.Snapshot() // under the lock that guards Add
//	ini := storage.NewReconcileInitiator(set, storage.ReconcileConfig{})
//	write(ini.Start())
//	for {
//		out, done, err := ini.Step(read())
//		for _, f := range out {
//			write(f) // on error: the abort frame, best effort
//		}
//		if err != nil || done {
//			break
//		}
//	}
//
// and the responder the same with NewReconcileResponder and no Start. Then
// each side sends the entries of Extra() and accepts those of Missing()
// (entries are verified on arrival: the lists are only what the peer
// claims). Step returns no frames while the peer is still sending a batch,
// and a side only writes once it has read all the peer wrote, so the stream
// never has both sides writing at once. Bound the session with a deadline
// on the stream: the state machines have no clock.

// Errors of a reconciliation session. Each error a Step returns wraps one of
// them.
var (
	// ErrReconcileFrame means a frame did not decode, or would not fit in
	// ReconcileMaxFrame.
	ErrReconcileFrame = errors.New("reconcile: malformed frame")
	// ErrReconcileProtocol means a well-formed frame came out of turn or
	// contradicted what came before.
	ErrReconcileProtocol = errors.New("reconcile: protocol violation")
	// ErrDifferenceTooLarge means the difference needs more coded symbols or
	// rounds than the session allows; the caller falls back to a listing.
	ErrDifferenceTooLarge = errors.New("reconcile: difference too large")
	// ErrReconcileLimit means the peer made the session exceed a work bound.
	ErrReconcileLimit = errors.New("reconcile: session limit exceeded")
	// ErrReconcileAborted means the peer ended the session with an abort
	// frame; the error also wraps the peer's reason (ErrDifferenceTooLarge,
	// ErrReconcileLimit or ErrReconcileProtocol).
	ErrReconcileAborted = errors.New("reconcile: peer aborted")
)

const (
	// DefaultReconcileInitialSymbols is how many symbols the initiator sends
	// unasked: ~2.7 KB, which decodes a difference of up to ~20 at once and
	// estimates a larger one to within ~20% (32 symbols: ~30%, and d ≤ 10).
	DefaultReconcileInitialSymbols = 64
	// DefaultReconcileMaxRounds bounds the responder's requests.
	DefaultReconcileMaxRounds = 16

	// rcMaxInitialSymbols keeps the initiator's first batch to one frame
	// (1024 symbols of at most 50 bytes).
	rcMaxInitialSymbols = 1024
	// rcWorkPerSymbol bounds peeling work per symbol: an honest session
	// walks ~2·ln(m) ≤ 30 indices per recovered item.
	rcWorkPerSymbol = 64
)

// ReconcileConfig tunes a session; the zero value gives the defaults. Both
// peers may use different values.
type ReconcileConfig struct {
	// MaxSymbols caps the coded symbols a session exchanges, on either side;
	// 0 or more than the set's capacity means the capacity.
	MaxSymbols int
	// InitialSymbols is how many symbols the initiator sends in its first
	// frame; 0 means DefaultReconcileInitialSymbols, at most 1024.
	InitialSymbols int
	// MaxRounds caps the requests a responder makes and an initiator
	// answers; 0 means DefaultReconcileMaxRounds.
	MaxRounds int
}

// rcLimits is a ReconcileConfig resolved against a set.
type rcLimits struct {
	maxSymbols, initial, maxRounds int
}

func (c ReconcileConfig) limits(set *ReconcileSet) rcLimits {
	l := rcLimits{maxSymbols: set.Capacity(), initial: c.InitialSymbols, maxRounds: c.MaxRounds}
	if c.MaxSymbols > 0 {
		l.maxSymbols = min(l.maxSymbols, c.MaxSymbols)
	}
	if l.initial <= 0 {
		l.initial = DefaultReconcileInitialSymbols
	}
	l.initial = min(l.initial, rcMaxInitialSymbols, l.maxSymbols)
	if l.maxRounds <= 0 {
		l.maxRounds = DefaultReconcileMaxRounds
	}
	return l
}

// ReconcileStats counts a session's traffic (frame bytes, not counting the
// stream's own framing).
type ReconcileStats struct {
	Rounds          int // requests made (responder) or answered (initiator)
	FramesSent      int // frames returned by Start and Step
	FramesReceived  int // frames given to Step
	BytesSent       int // bytes of the frames sent
	BytesReceived   int // bytes of the frames received
	SymbolsSent     int // coded symbols sent (initiator)
	SymbolsReceived int // coded symbols received (responder)
}

func (s *ReconcileStats) sent(frames [][]byte) {
	for _, f := range frames {
		s.FramesSent++
		s.BytesSent += len(f)
	}
}

func (s *ReconcileStats) received(frame []byte) {
	s.FramesReceived++
	s.BytesReceived += len(frame)
}

// rcSession is the state both roles share: the sticky error and the result.
type rcSession struct {
	set     *ReconcileSet
	lim     rcLimits
	stats   ReconcileStats
	missing [][32]byte
	extra   [][32]byte
	done    bool
	err     error
}

// fail ends the session with err and, unless the peer itself aborted, an
// abort frame telling the peer why.
func (s *rcSession) fail(err error) ([][]byte, bool, error) {
	s.err = err
	if errors.Is(err, ErrReconcileAborted) {
		return nil, false, err
	}
	frame, _ := rcEncode(&rcMessage{kind: rcMsgAbort, reason: rcReasonFor(err)})
	out := [][]byte{frame}
	s.stats.sent(out)
	return out, false, err
}

// receive checks that the session can take a frame and decodes it.
func (s *rcSession) receive(frame []byte) (rcMessage, error) {
	if s.err != nil {
		return rcMessage{}, s.err
	}
	if s.done {
		return rcMessage{}, fmt.Errorf("%w: frame after the session ended", ErrReconcileProtocol)
	}
	s.stats.received(frame)
	m, err := rcDecode(frame)
	if err == nil && m.kind == rcMsgAbort {
		err = fmt.Errorf("%w: %w", ErrReconcileAborted, rcReasonErr(m.reason))
	}
	return m, err
}

func rcReasonFor(err error) byte {
	switch {
	case errors.Is(err, ErrDifferenceTooLarge):
		return rcReasonTooLarge
	case errors.Is(err, ErrReconcileLimit):
		return rcReasonLimit
	default:
		return rcReasonProtocol
	}
}

func rcReasonErr(reason byte) error {
	switch reason {
	case rcReasonTooLarge:
		return ErrDifferenceTooLarge
	case rcReasonLimit:
		return ErrReconcileLimit
	default:
		return ErrReconcileProtocol
	}
}

// ReconcileInitiator is the side of a session that opens the stream and
// streams its set's coded symbols.
type ReconcileInitiator struct {
	rcSession
	started bool
	diffing bool // the responder's diff has begun
	sent    int  // symbols [0, sent) sent
}

// NewReconcileInitiator starts a session over set, which must not change
// until the session ends: pass a Snapshot.
func NewReconcileInitiator(set *ReconcileSet, cfg ReconcileConfig) *ReconcileInitiator {
	return &ReconcileInitiator{rcSession: rcSession{set: set, lim: cfg.limits(set)}}
}

// Start returns the session's first frame, to be sent before anything is
// read. It is to be called once; later calls return nil.
func (x *ReconcileInitiator) Start() []byte {
	if x.started {
		return nil
	}
	x.started = true
	frames := x.symbolFrames(x.lim.initial)
	x.stats.sent(frames)
	return frames[0]
}

// Step handles one frame from the responder. It returns the frames to send
// back, in order (none while the responder is still sending), and done once
// the difference is known: then Missing and Extra hold it and the session is
// over. On error the session is over; out may then hold one abort frame, to
// be sent (best effort) before closing the stream.
func (x *ReconcileInitiator) Step(frame []byte) (out [][]byte, done bool, err error) {
	if !x.started && x.err == nil {
		return nil, false, fmt.Errorf("%w: Step before Start", ErrReconcileProtocol)
	}
	m, err := x.receive(frame)
	if err != nil {
		if x.err != nil || x.done {
			return nil, false, err
		}
		return x.fail(err)
	}
	switch m.kind {
	case rcMsgRequest:
		out, err = x.request(&m)
	case rcMsgDiff:
		err = x.diff(&m)
	default:
		err = fmt.Errorf("%w: initiator got message type %d", ErrReconcileProtocol, m.kind)
	}
	if err != nil {
		return x.fail(err)
	}
	x.stats.sent(out)
	return out, x.done, nil
}

// request answers a request for symbols [from, to) with as many frames as
// they take.
func (x *ReconcileInitiator) request(m *rcMessage) ([][]byte, error) {
	switch {
	case x.diffing:
		return nil, fmt.Errorf("%w: request during the diff", ErrReconcileProtocol)
	case m.from != uint64(x.sent):
		return nil, fmt.Errorf("%w: request from %d, sent %d", ErrReconcileProtocol, m.from, x.sent)
	case x.stats.Rounds >= x.lim.maxRounds:
		return nil, fmt.Errorf("%w: more than %d rounds", ErrDifferenceTooLarge, x.lim.maxRounds)
	case m.to > uint64(x.lim.maxSymbols):
		return nil, fmt.Errorf("%w: %d symbols asked, %d allowed", ErrDifferenceTooLarge, m.to, x.lim.maxSymbols)
	}
	x.stats.Rounds++
	return x.symbolFrames(int(m.to)), nil
}

// symbolFrames encodes symbols [sent, to) into frames packed up to the limit.
func (x *ReconcileInitiator) symbolFrames(to int) [][]byte {
	var frames [][]byte
	for x.sent < to {
		msg := rcMessage{kind: rcMsgSymbols, from: uint64(x.sent)}
		size := rcFrameOverhead
		for x.sent < to && size+rcSymbolMaxSize <= ReconcileMaxFrame {
			s := x.set.symbol(x.sent)
			size += rcSymbolSize(&s)
			msg.syms = append(msg.syms, s)
			x.sent++
		}
		frame, err := rcEncode(&msg)
		if err != nil {
			panic(err) // unreachable: packed within the limit
		}
		frames = append(frames, frame)
		x.stats.SymbolsSent += len(msg.syms)
	}
	return frames
}

// diff takes one frame of the responder's result. The lists must keep
// ascending across frames, hold no more items than symbols were sent (one
// symbol cannot yield two items), and not overlap.
func (x *ReconcileInitiator) diff(m *rcMessage) error {
	x.diffing = true
	if !m.last && len(m.have)+len(m.want) == 0 {
		return fmt.Errorf("%w: empty diff frame", ErrReconcileProtocol)
	}
	if len(x.missing)+len(x.extra)+len(m.have)+len(m.want) > x.sent {
		return fmt.Errorf("%w: diff larger than the %d symbols sent", ErrReconcileProtocol, x.sent)
	}
	var err error
	if x.missing, err = rcAppendAscending(x.missing, m.have); err != nil {
		return err
	}
	if x.extra, err = rcAppendAscending(x.extra, m.want); err != nil {
		return err
	}
	if m.last {
		if rcIntersect(x.missing, x.extra) {
			return fmt.Errorf("%w: a hash on both sides of the diff", ErrReconcileProtocol)
		}
		x.done = true
	}
	return nil
}

func rcAppendAscending(dst, more [][32]byte) ([][32]byte, error) {
	if len(dst) > 0 && len(more) > 0 && bytes.Compare(dst[len(dst)-1][:], more[0][:]) >= 0 {
		return dst, fmt.Errorf("%w: diff hashes not ascending across frames", ErrReconcileProtocol)
	}
	return append(dst, more...), nil
}

// rcIntersect reports whether two ascending lists share a hash.
func rcIntersect(a, b [][32]byte) bool {
	for len(a) > 0 && len(b) > 0 {
		switch c := bytes.Compare(a[0][:], b[0][:]); {
		case c == 0:
			return true
		case c < 0:
			a = a[1:]
		default:
			b = b[1:]
		}
	}
	return false
}

// Missing returns the hashes the peer has and this side lacks (to fetch),
// ascending; complete once Step has reported done.
func (x *ReconcileInitiator) Missing() [][32]byte { return x.missing }

// Extra returns the hashes this side has and the peer lacks (to send),
// ascending; complete once Step has reported done.
func (x *ReconcileInitiator) Extra() [][32]byte { return x.extra }

// Stats returns the session's traffic so far.
func (x *ReconcileInitiator) Stats() ReconcileStats { return x.stats }

// ReconcileResponder is the side of a session that accepts the stream and
// decodes the difference from the initiator's symbols.
type ReconcileResponder struct {
	rcSession
	peel *rcPeeler
	want int // end of the batch being received
}

// NewReconcileResponder prepares to answer a session over set, which must
// not change until the session ends: pass a Snapshot.
func NewReconcileResponder(set *ReconcileSet, cfg ReconcileConfig) *ReconcileResponder {
	lim := cfg.limits(set)
	return &ReconcileResponder{
		rcSession: rcSession{set: set, lim: lim},
		peel:      newRcPeeler(set, rcWorkPerSymbol*lim.maxSymbols+1024),
	}
}

// Step handles one frame from the initiator, the first being the initiator's
// Start. It returns the frames to send back, in order (none while the
// initiator is still sending a batch), and done once the difference is known
// and out holds the last frames for the peer: send them, then Missing and
// Extra hold the difference. On error the session is over; out may then hold
// one abort frame, to be sent (best effort) before closing the stream.
func (r *ReconcileResponder) Step(frame []byte) (out [][]byte, done bool, err error) {
	m, err := r.receive(frame)
	if err != nil {
		if r.err != nil || r.done {
			return nil, false, err
		}
		return r.fail(err)
	}
	if m.kind != rcMsgSymbols {
		return r.fail(fmt.Errorf("%w: responder got message type %d", ErrReconcileProtocol, m.kind))
	}
	if err := r.symbols(&m); err != nil {
		return r.fail(err)
	}
	if len(r.peel.syms) < r.want {
		return nil, false, nil // more frames of this batch to come
	}
	if out, err = r.endBatch(); err != nil {
		return r.fail(err)
	}
	r.stats.sent(out)
	return out, r.done, nil
}

// symbols checks that a symbols frame continues the batch asked for, and
// peels with it.
func (r *ReconcileResponder) symbols(m *rcMessage) error {
	got, n := len(r.peel.syms), len(m.syms)
	switch {
	case m.from != uint64(got):
		return fmt.Errorf("%w: symbols from %d, expected %d", ErrReconcileProtocol, m.from, got)
	case got == 0 && n > min(rcMaxInitialSymbols, r.lim.maxSymbols):
		return fmt.Errorf("%w: first frame of %d symbols", ErrReconcileLimit, n)
	case got == 0:
		r.want = n // the unasked first batch is one frame
	case got+n > r.want:
		return fmt.Errorf("%w: %d symbols beyond the %d asked", ErrReconcileProtocol, got+n-r.want, r.want)
	}
	r.stats.SymbolsReceived += n
	return r.peel.add(m.syms)
}

// endBatch answers a complete batch: the result if it decoded, else a
// request for more.
func (r *ReconcileResponder) endBatch() ([][]byte, error) {
	if r.peel.done() {
		return r.finish(), nil
	}
	got := len(r.peel.syms)
	switch {
	case r.stats.Rounds >= r.lim.maxRounds:
		return nil, fmt.Errorf("%w: not decoded after %d rounds", ErrDifferenceTooLarge, r.stats.Rounds)
	case got >= r.lim.maxSymbols:
		return nil, fmt.Errorf("%w: not decoded with %d symbols", ErrDifferenceTooLarge, got)
	case rcSymbolsFor(math.Abs(float64(r.peel.delta))) > float64(r.lim.maxSymbols):
		// Set sizes alone differ by more than the symbols allowed can decode.
		return nil, fmt.Errorf("%w: set sizes differ by %d", ErrDifferenceTooLarge, r.peel.delta)
	case r.peel.estN >= rcMinEstimateSymbols &&
		rcSymbolsFor(r.peel.estimate()/(rcEstimateMargin*rcEstimateMargin)) > float64(r.lim.maxSymbols):
		// Even a low reading of the estimate cannot decode: do not have the
		// peer send every symbol allowed for nothing.
		return nil, fmt.Errorf("%w: about %.0f differences", ErrDifferenceTooLarge, r.peel.estimate())
	}
	r.want = r.nextWant()
	r.stats.Rounds++
	frame, err := rcEncode(&rcMessage{kind: rcMsgRequest, from: uint64(got), to: uint64(r.want)})
	return [][]byte{frame}, err
}

// nextWant sizes the next batch: enough symbols to decode the estimated
// difference with margin for the estimate's error, and at least a quarter
// more than received, so that a low estimate still converges quickly.
func (r *ReconcileResponder) nextWant() int {
	got := len(r.peel.syms)
	target := rcSymbolsFor(rcEstimateMargin * r.peel.estimate())
	want := max(got+got/4+8, int(min(target, float64(r.lim.maxSymbols))))
	return min(want, r.lim.maxSymbols)
}

const (
	// rcEstimateMargin inflates the estimated difference so that, for the
	// estimate's spread from 64 symbols, ~97% of sessions decode with one
	// request (measured for d from 50 to 5000).
	rcEstimateMargin = 1.4
	// rcMinEstimateSymbols is how many symbols the estimate needs before it
	// is trusted to abort a session.
	rcMinEstimateSymbols = 16
)

// rcSymbolsFor is about how many symbols decode a difference of d: ~1.35·d
// for large d, relatively more for small d.
func rcSymbolsFor(d float64) float64 {
	return 1.35*d + 3*math.Sqrt(d) + 4
}

// finish sorts the difference and encodes it for the initiator.
func (r *ReconcileResponder) finish() [][]byte {
	r.missing, r.extra = r.peel.result()
	slices.SortFunc(r.missing, rcCompare)
	slices.SortFunc(r.extra, rcCompare)
	r.done = true
	// The initiator lacks what we have (extra) and has what we lack.
	have, want := r.extra, r.missing
	var frames [][]byte
	for {
		msg := rcMessage{kind: rcMsgDiff}
		room := rcHashesPerFrame
		n := min(room, len(have))
		msg.have, have, room = have[:n], have[n:], room-n
		n = min(room, len(want))
		msg.want, want = want[:n], want[n:]
		msg.last = len(have)+len(want) == 0
		frame, err := rcEncode(&msg)
		if err != nil {
			panic(err) // unreachable: packed within the limit
		}
		frames = append(frames, frame)
		if msg.last {
			return frames
		}
	}
}

func rcCompare(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) }

// Missing returns the hashes the peer has and this side lacks (to fetch),
// ascending; complete once Step has reported done.
func (r *ReconcileResponder) Missing() [][32]byte { return r.missing }

// Extra returns the hashes this side has and the peer lacks (to send),
// ascending; complete once Step has reported done.
func (r *ReconcileResponder) Extra() [][32]byte { return r.extra }

// Stats returns the session's traffic so far.
func (r *ReconcileResponder) Stats() ReconcileStats { return r.stats }
