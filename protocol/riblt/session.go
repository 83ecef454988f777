package riblt

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
// peeler.estimate): a difference of up to ~20 takes one round trip, larger
// ones two (~97%) or three. Both sides end knowing the same difference:
// Missing (hashes to fetch from the peer) and Extra (hashes to send to it).
// If the difference is too large for the symbols allowed, the side that
// finds out sends an abort frame and both get ErrDifferenceTooLarge, most
// often after the first frame.
//
// # Usage
//
// Each frame is one message on the stream, at most MaxFrame bytes
// (e.g. varint-delimited with go-msgio, reading with that limit). Both sides
// run the same loop; only the first frame differs:
//
//	set := ledgerSet.Snapshot() // under the lock that guards Add
//	ini := riblt.NewInitiator(set, riblt.Config{})
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
// and the responder the same with NewResponder and no Start. Then
// each side sends the entries of Extra() and accepts those of Missing()
// (entries are verified on arrival: the lists are only what the peer
// claims). Step returns no frames while the peer is still sending a batch,
// and a side only writes once it has read all the peer wrote, so the stream
// never has both sides writing at once. Bound the session with a deadline
// on the stream: the state machines have no clock.

// Errors of a reconciliation session. Each error a Step returns wraps one of
// them.
var (
	// ErrFrame means a frame did not decode, or would not fit in
	// MaxFrame.
	ErrFrame = errors.New("reconcile: malformed frame")
	// ErrProtocol means a well-formed frame came out of turn or
	// contradicted what came before.
	ErrProtocol = errors.New("reconcile: protocol violation")
	// ErrDifferenceTooLarge means the difference needs more coded symbols or
	// rounds than the session allows; the caller falls back to a listing.
	ErrDifferenceTooLarge = errors.New("reconcile: difference too large")
	// ErrLimit means the peer made the session exceed a work bound.
	ErrLimit = errors.New("reconcile: session limit exceeded")
	// ErrAborted means the peer ended the session with an abort
	// frame; the error also wraps the peer's reason (ErrDifferenceTooLarge,
	// ErrLimit or ErrProtocol).
	ErrAborted = errors.New("reconcile: peer aborted")
)

const (
	// DefaultInitialSymbols is how many symbols the initiator sends
	// unasked: ~2.7 KB, which decodes a difference of up to ~20 at once and
	// estimates a larger one to within ~20% (32 symbols: ~30%, and d ≤ 10).
	DefaultInitialSymbols = 64
	// DefaultMaxRounds bounds the responder's requests.
	DefaultMaxRounds = 16

	// maxInitialSymbols keeps the initiator's first batch to one frame
	// (1024 symbols of at most 50 bytes).
	maxInitialSymbols = 1024
	// workPerSymbol bounds peeling work per symbol: an honest session
	// walks ~2·ln(m) ≤ 30 indices per recovered item.
	workPerSymbol = 64
)

// Config tunes a session; the zero value gives the defaults. Both
// peers may use different values.
type Config struct {
	// MaxSymbols caps the coded symbols a session exchanges, on either side;
	// 0 or more than the set's capacity means the capacity.
	MaxSymbols int
	// InitialSymbols is how many symbols the initiator sends in its first
	// frame; 0 means DefaultInitialSymbols, at most 1024.
	InitialSymbols int
	// MaxRounds caps the requests a responder makes and an initiator
	// answers; 0 means DefaultMaxRounds.
	MaxRounds int
}

// bounds is a Config resolved against a set.
type bounds struct {
	maxSymbols, initial, maxRounds int
}

func (c Config) limits(set *Set) bounds {
	l := bounds{maxSymbols: set.Capacity(), initial: c.InitialSymbols, maxRounds: c.MaxRounds}
	if c.MaxSymbols > 0 {
		l.maxSymbols = min(l.maxSymbols, c.MaxSymbols)
	}
	if l.initial <= 0 {
		l.initial = DefaultInitialSymbols
	}
	l.initial = min(l.initial, maxInitialSymbols, l.maxSymbols)
	if l.maxRounds <= 0 {
		l.maxRounds = DefaultMaxRounds
	}
	return l
}

// Stats counts a session's traffic (frame bytes, not counting the
// stream's own framing).
type Stats struct {
	Rounds          int // requests made (responder) or answered (initiator)
	FramesSent      int // frames returned by Start and Step
	FramesReceived  int // frames given to Step
	BytesSent       int // bytes of the frames sent
	BytesReceived   int // bytes of the frames received
	SymbolsSent     int // coded symbols sent (initiator)
	SymbolsReceived int // coded symbols received (responder)
}

func (s *Stats) sent(frames [][]byte) {
	for _, f := range frames {
		s.FramesSent++
		s.BytesSent += len(f)
	}
}

func (s *Stats) received(frame []byte) {
	s.FramesReceived++
	s.BytesReceived += len(frame)
}

// session is the state both roles share: the sticky error and the result.
type session struct {
	set     *Set
	lim     bounds
	stats   Stats
	missing [][32]byte
	extra   [][32]byte
	done    bool
	err     error
}

// fail ends the session with err and, unless the peer itself aborted, an
// abort frame telling the peer why.
func (s *session) fail(err error) ([][]byte, bool, error) {
	s.err = err
	if errors.Is(err, ErrAborted) {
		return nil, false, err
	}
	frame, _ := encodeFrame(&message{kind: msgAbort, reason: reasonFor(err)})
	out := [][]byte{frame}
	s.stats.sent(out)
	return out, false, err
}

// receive checks that the session can take a frame and decodes it.
func (s *session) receive(frame []byte) (message, error) {
	if s.err != nil {
		return message{}, s.err
	}
	if s.done {
		return message{}, fmt.Errorf("%w: frame after the session ended", ErrProtocol)
	}
	s.stats.received(frame)
	m, err := decodeFrame(frame)
	if err == nil && m.kind == msgAbort {
		err = fmt.Errorf("%w: %w", ErrAborted, reasonErr(m.reason))
	}
	return m, err
}

func reasonFor(err error) byte {
	switch {
	case errors.Is(err, ErrDifferenceTooLarge):
		return reasonTooLarge
	case errors.Is(err, ErrLimit):
		return reasonLimit
	default:
		return reasonProtocol
	}
}

func reasonErr(reason byte) error {
	switch reason {
	case reasonTooLarge:
		return ErrDifferenceTooLarge
	case reasonLimit:
		return ErrLimit
	default:
		return ErrProtocol
	}
}

// Initiator is the side of a session that opens the stream and
// streams its set's coded symbols.
type Initiator struct {
	session
	started bool
	diffing bool // the responder's diff has begun
	sent    int  // symbols [0, sent) sent
}

// NewInitiator starts a session over set, which must not change
// until the session ends: pass a Snapshot.
func NewInitiator(set *Set, cfg Config) *Initiator {
	return &Initiator{session: session{set: set, lim: cfg.limits(set)}}
}

// Start returns the session's first frame, to be sent before anything is
// read. It is to be called once; later calls return nil.
func (x *Initiator) Start() []byte {
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
func (x *Initiator) Step(frame []byte) (out [][]byte, done bool, err error) {
	if !x.started && x.err == nil {
		return nil, false, fmt.Errorf("%w: Step before Start", ErrProtocol)
	}
	m, err := x.receive(frame)
	if err != nil {
		if x.err != nil || x.done {
			return nil, false, err
		}
		return x.fail(err)
	}
	switch m.kind {
	case msgRequest:
		out, err = x.request(&m)
	case msgDiff:
		err = x.diff(&m)
	default:
		err = fmt.Errorf("%w: initiator got message type %d", ErrProtocol, m.kind)
	}
	if err != nil {
		return x.fail(err)
	}
	x.stats.sent(out)
	return out, x.done, nil
}

// request answers a request for symbols [from, to) with as many frames as
// they take.
func (x *Initiator) request(m *message) ([][]byte, error) {
	switch {
	case x.diffing:
		return nil, fmt.Errorf("%w: request during the diff", ErrProtocol)
	case m.from != uint64(x.sent):
		return nil, fmt.Errorf("%w: request from %d, sent %d", ErrProtocol, m.from, x.sent)
	case x.stats.Rounds >= x.lim.maxRounds:
		return nil, fmt.Errorf("%w: more than %d rounds", ErrDifferenceTooLarge, x.lim.maxRounds)
	case m.to > uint64(x.lim.maxSymbols):
		return nil, fmt.Errorf("%w: %d symbols asked, %d allowed", ErrDifferenceTooLarge, m.to, x.lim.maxSymbols)
	}
	x.stats.Rounds++
	return x.symbolFrames(int(m.to)), nil
}

// symbolFrames encodes symbols [sent, to) into frames packed up to the limit.
func (x *Initiator) symbolFrames(to int) [][]byte {
	var frames [][]byte
	for x.sent < to {
		msg := message{kind: msgSymbols, from: uint64(x.sent)}
		size := frameOverhead
		for x.sent < to && size+symbolMaxSize <= MaxFrame {
			s := x.set.symbol(x.sent)
			size += symbolSize(&s)
			msg.syms = append(msg.syms, s)
			x.sent++
		}
		frame, err := encodeFrame(&msg)
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
func (x *Initiator) diff(m *message) error {
	x.diffing = true
	if !m.last && len(m.have)+len(m.want) == 0 {
		return fmt.Errorf("%w: empty diff frame", ErrProtocol)
	}
	if len(x.missing)+len(x.extra)+len(m.have)+len(m.want) > x.sent {
		return fmt.Errorf("%w: diff larger than the %d symbols sent", ErrProtocol, x.sent)
	}
	var err error
	if x.missing, err = appendAscending(x.missing, m.have); err != nil {
		return err
	}
	if x.extra, err = appendAscending(x.extra, m.want); err != nil {
		return err
	}
	if m.last {
		if intersect(x.missing, x.extra) {
			return fmt.Errorf("%w: a hash on both sides of the diff", ErrProtocol)
		}
		x.done = true
	}
	return nil
}

func appendAscending(dst, more [][32]byte) ([][32]byte, error) {
	if len(dst) > 0 && len(more) > 0 && bytes.Compare(dst[len(dst)-1][:], more[0][:]) >= 0 {
		return dst, fmt.Errorf("%w: diff hashes not ascending across frames", ErrProtocol)
	}
	return append(dst, more...), nil
}

// intersect reports whether two ascending lists share a hash.
func intersect(a, b [][32]byte) bool {
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
func (x *Initiator) Missing() [][32]byte { return x.missing }

// Extra returns the hashes this side has and the peer lacks (to send),
// ascending; complete once Step has reported done.
func (x *Initiator) Extra() [][32]byte { return x.extra }

// Stats returns the session's traffic so far.
func (x *Initiator) Stats() Stats { return x.stats }

// Responder is the side of a session that accepts the stream and
// decodes the difference from the initiator's symbols.
type Responder struct {
	session
	peel *peeler
	want int // end of the batch being received
}

// NewResponder prepares to answer a session over set, which must
// not change until the session ends: pass a Snapshot.
func NewResponder(set *Set, cfg Config) *Responder {
	lim := cfg.limits(set)
	return &Responder{
		session: session{set: set, lim: lim},
		peel:    newPeeler(set, workPerSymbol*lim.maxSymbols+1024),
	}
}

// Step handles one frame from the initiator, the first being the initiator's
// Start. It returns the frames to send back, in order (none while the
// initiator is still sending a batch), and done once the difference is known
// and out holds the last frames for the peer: send them, then Missing and
// Extra hold the difference. On error the session is over; out may then hold
// one abort frame, to be sent (best effort) before closing the stream.
func (r *Responder) Step(frame []byte) (out [][]byte, done bool, err error) {
	m, err := r.receive(frame)
	if err != nil {
		if r.err != nil || r.done {
			return nil, false, err
		}
		return r.fail(err)
	}
	if m.kind != msgSymbols {
		return r.fail(fmt.Errorf("%w: responder got message type %d", ErrProtocol, m.kind))
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
func (r *Responder) symbols(m *message) error {
	got, n := len(r.peel.syms), len(m.syms)
	switch {
	case m.from != uint64(got):
		return fmt.Errorf("%w: symbols from %d, expected %d", ErrProtocol, m.from, got)
	case got == 0 && n > min(maxInitialSymbols, r.lim.maxSymbols):
		return fmt.Errorf("%w: first frame of %d symbols", ErrLimit, n)
	case got == 0:
		r.want = n // the unasked first batch is one frame
	case got+n > r.want:
		return fmt.Errorf("%w: %d symbols beyond the %d asked", ErrProtocol, got+n-r.want, r.want)
	}
	r.stats.SymbolsReceived += n
	return r.peel.add(m.syms)
}

// endBatch answers a complete batch: the result if it decoded, else a
// request for more.
func (r *Responder) endBatch() ([][]byte, error) {
	if r.peel.done() {
		return r.finish(), nil
	}
	got := len(r.peel.syms)
	switch {
	case r.stats.Rounds >= r.lim.maxRounds:
		return nil, fmt.Errorf("%w: not decoded after %d rounds", ErrDifferenceTooLarge, r.stats.Rounds)
	case got >= r.lim.maxSymbols:
		return nil, fmt.Errorf("%w: not decoded with %d symbols", ErrDifferenceTooLarge, got)
	case symbolsFor(math.Abs(float64(r.peel.delta))) > float64(r.lim.maxSymbols):
		// Set sizes alone differ by more than the symbols allowed can decode.
		return nil, fmt.Errorf("%w: set sizes differ by %d", ErrDifferenceTooLarge, r.peel.delta)
	case r.peel.estN >= minEstimateSymbols &&
		symbolsFor(r.peel.estimate()/(estimateMargin*estimateMargin)) > float64(r.lim.maxSymbols):
		// Even a low reading of the estimate cannot decode: do not have the
		// peer send every symbol allowed for nothing.
		return nil, fmt.Errorf("%w: about %.0f differences", ErrDifferenceTooLarge, r.peel.estimate())
	}
	r.want = r.nextWant()
	r.stats.Rounds++
	frame, err := encodeFrame(&message{kind: msgRequest, from: uint64(got), to: uint64(r.want)})
	return [][]byte{frame}, err
}

// nextWant sizes the next batch: enough symbols to decode the estimated
// difference with margin for the estimate's error, and at least a quarter
// more than received, so that a low estimate still converges quickly.
func (r *Responder) nextWant() int {
	got := len(r.peel.syms)
	target := symbolsFor(estimateMargin * r.peel.estimate())
	want := max(got+got/4+8, int(min(target, float64(r.lim.maxSymbols))))
	return min(want, r.lim.maxSymbols)
}

const (
	// estimateMargin inflates the estimated difference so that, for the
	// estimate's spread from 64 symbols, ~97% of sessions decode with one
	// request (measured for d from 50 to 5000).
	estimateMargin = 1.4
	// minEstimateSymbols is how many symbols the estimate needs before it
	// is trusted to abort a session.
	minEstimateSymbols = 16
)

// symbolsFor is about how many symbols decode a difference of d: ~1.35·d
// for large d, relatively more for small d.
func symbolsFor(d float64) float64 {
	return 1.35*d + 3*math.Sqrt(d) + 4
}

// finish sorts the difference and encodes it for the initiator.
func (r *Responder) finish() [][]byte {
	r.missing, r.extra = r.peel.result()
	slices.SortFunc(r.missing, compareHashes)
	slices.SortFunc(r.extra, compareHashes)
	r.done = true
	// The initiator lacks what we have (extra) and has what we lack.
	have, want := r.extra, r.missing
	var frames [][]byte
	for {
		msg := message{kind: msgDiff}
		room := hashesPerFrame
		n := min(room, len(have))
		msg.have, have, room = have[:n], have[n:], room-n
		n = min(room, len(want))
		msg.want, want = want[:n], want[n:]
		msg.last = len(have)+len(want) == 0
		frame, err := encodeFrame(&msg)
		if err != nil {
			panic(err) // unreachable: packed within the limit
		}
		frames = append(frames, frame)
		if msg.last {
			return frames
		}
	}
}

func compareHashes(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) }

// Missing returns the hashes the peer has and this side lacks (to fetch),
// ascending; complete once Step has reported done.
func (r *Responder) Missing() [][32]byte { return r.missing }

// Extra returns the hashes this side has and the peer lacks (to send),
// ascending; complete once Step has reported done.
func (r *Responder) Extra() [][32]byte { return r.extra }

// Stats returns the session's traffic so far.
func (r *Responder) Stats() Stats { return r.stats }
