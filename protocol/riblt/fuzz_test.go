package riblt

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzDecode: any input either fails to decode with
// ErrFrame or is a canonical frame that encodes back to itself.
func FuzzDecode(f *testing.F) {
	for _, m := range []message{
		{kind: msgSymbols, from: 3, syms: []symbol{{sum: [4]uint64{1, 2, 3, 4}, check: 9, count: -2}}},
		{kind: msgRequest, from: 64, to: 300},
		{kind: msgDiff, last: true, have: [][32]byte{{1}}, want: [][32]byte{{2}, {3}}},
		{kind: msgAbort, reason: reasonTooLarge},
	} {
		b, err := encodeFrame(&m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeFrame(b)
		if err != nil {
			return
		}
		again, err := encodeFrame(&m)
		if err != nil {
			t.Fatalf("decoded frame does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("not canonical:\n in  %x\n out %x", b, again)
		}
	})
}

// fuzzFrames splits fuzz input into frames, each prefixed by its uvarint
// length; at most 64 of them.
func fuzzFrames(b []byte) [][]byte {
	var frames [][]byte
	for len(b) > 0 && len(frames) < 64 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			break
		}
		frames = append(frames, b[k:k+int(n)])
		b = b[k+int(n):]
	}
	return frames
}

// fuzzJoin is the inverse of fuzzFrames, for seeds.
func fuzzJoin(role byte, frames [][]byte) []byte {
	b := []byte{role}
	for _, f := range frames {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// FuzzSession plays the peer of a session with arbitrary frames
// (the first byte picks which side is fuzzed). The session must never
// panic, must answer within the frame limit and its symbol cap, must end
// (done or error) no later than the frames run out, and must stay ended.
func FuzzSession(f *testing.F) {
	fx := newFixture(11, 1<<10, 300, 6, 5)
	cfg := Config{InitialSymbols: 8}
	// Seeds: the transcripts of honest sessions, which the fuzzer mutates.
	for _, fix := range []*fixture{fx, newFixture(12, 1<<10, 300, 60, 40)} {
		toRes, toIni := transcript(f, fix.a, fix.b, cfg)
		f.Add(fuzzJoin(0, toIni))
		f.Add(fuzzJoin(1, toRes))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		var s stepper
		var stats func() Stats
		if b[0]&1 == 0 {
			ini := NewInitiator(fx.a, cfg)
			ini.Start()
			s, stats = ini, ini.Stats
		} else {
			res := NewResponder(fx.b, cfg)
			s, stats = res, res.Stats
		}
		fuzzPlay(t, s, stats, fuzzFrames(b[1:]))
	})
}

// fuzzPlay feeds frames to s and checks the session's invariants.
func fuzzPlay(t *testing.T, s stepper, stats func() Stats, frames [][]byte) {
	ended := false
	for _, fr := range frames {
		out, done, err := s.Step(fr)
		if ended && err == nil {
			t.Fatalf("Step after the end succeeded")
		}
		for _, o := range out {
			if len(o) == 0 || len(o) > MaxFrame {
				t.Fatalf("answer of %d bytes", len(o))
			}
		}
		ended = ended || done || err != nil
	}
	st := stats()
	if st.SymbolsSent > 1<<10 || st.SymbolsReceived > 1<<10 || st.Rounds > DefaultMaxRounds {
		t.Fatalf("over the caps: %+v", st)
	}
}

// transcript runs an honest session and returns what each side sent.
func transcript(tb testing.TB, a, b *Set, cfg Config) (toRes, toIni [][]byte) {
	ini := NewInitiator(a, cfg)
	res := NewResponder(b, cfg)
	pending := [][]byte{ini.Start()}
	for len(pending) > 0 {
		toRes = append(toRes, pending...)
		out, done, err := deliver(res, pending)
		if err != nil {
			tb.Fatal(err)
		}
		toIni = append(toIni, out...)
		if pending, _, err = deliver(ini, out); err != nil {
			tb.Fatal(err)
		}
		if done {
			break
		}
	}
	return toRes, toIni
}
