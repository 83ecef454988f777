package storage

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzReconcileDecode: any input either fails to decode with
// ErrReconcileFrame or is a canonical frame that encodes back to itself.
func FuzzReconcileDecode(f *testing.F) {
	for _, m := range []rcMessage{
		{kind: rcMsgSymbols, from: 3, syms: []rcSymbol{{sum: [4]uint64{1, 2, 3, 4}, check: 9, count: -2}}},
		{kind: rcMsgRequest, from: 64, to: 300},
		{kind: rcMsgDiff, last: true, have: [][32]byte{{1}}, want: [][32]byte{{2}, {3}}},
		{kind: rcMsgAbort, reason: rcReasonTooLarge},
	} {
		b, err := rcEncode(&m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := rcDecode(b)
		if err != nil {
			return
		}
		again, err := rcEncode(&m)
		if err != nil {
			t.Fatalf("decoded frame does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("not canonical:\n in  %x\n out %x", b, again)
		}
	})
}

// rcFuzzFrames splits fuzz input into frames, each prefixed by its uvarint
// length; at most 64 of them.
func rcFuzzFrames(b []byte) [][]byte {
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

// rcFuzzJoin is the inverse of rcFuzzFrames, for seeds.
func rcFuzzJoin(role byte, frames [][]byte) []byte {
	b := []byte{role}
	for _, f := range frames {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// FuzzReconcileSession plays the peer of a session with arbitrary frames
// (the first byte picks which side is fuzzed). The session must never
// panic, must answer within the frame limit and its symbol cap, must end
// (done or error) no later than the frames run out, and must stay ended.
func FuzzReconcileSession(f *testing.F) {
	fx := newRcFixture(11, 1<<10, 300, 6, 5)
	cfg := ReconcileConfig{InitialSymbols: 8}
	// Seeds: the transcripts of honest sessions, which the fuzzer mutates.
	for _, fix := range []*rcFixture{fx, newRcFixture(12, 1<<10, 300, 60, 40)} {
		toRes, toIni := rcTranscript(f, fix.a, fix.b, cfg)
		f.Add(rcFuzzJoin(0, toIni))
		f.Add(rcFuzzJoin(1, toRes))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		var s rcStepper
		var stats func() ReconcileStats
		if b[0]&1 == 0 {
			ini := NewReconcileInitiator(fx.a, cfg)
			ini.Start()
			s, stats = ini, ini.Stats
		} else {
			res := NewReconcileResponder(fx.b, cfg)
			s, stats = res, res.Stats
		}
		rcFuzzPlay(t, s, stats, rcFuzzFrames(b[1:]))
	})
}

// rcFuzzPlay feeds frames to s and checks the session's invariants.
func rcFuzzPlay(t *testing.T, s rcStepper, stats func() ReconcileStats, frames [][]byte) {
	ended := false
	for _, fr := range frames {
		out, done, err := s.Step(fr)
		if ended && err == nil {
			t.Fatalf("Step after the end succeeded")
		}
		for _, o := range out {
			if len(o) == 0 || len(o) > ReconcileMaxFrame {
				t.Fatalf("answer of %d bytes", len(o))
			}
		}
		ended = ended || done || err != nil
	}
	st := stats()
	if st.SymbolsSent > 1<<10 || st.SymbolsReceived > 1<<10 || st.Rounds > DefaultReconcileMaxRounds {
		t.Fatalf("over the caps: %+v", st)
	}
}

// rcTranscript runs an honest session and returns what each side sent.
func rcTranscript(tb testing.TB, a, b *ReconcileSet, cfg ReconcileConfig) (toRes, toIni [][]byte) {
	ini := NewReconcileInitiator(a, cfg)
	res := NewReconcileResponder(b, cfg)
	pending := [][]byte{ini.Start()}
	for len(pending) > 0 {
		toRes = append(toRes, pending...)
		out, done, err := rcDeliver(res, pending)
		if err != nil {
			tb.Fatal(err)
		}
		toIni = append(toIni, out...)
		if pending, _, err = rcDeliver(ini, out); err != nil {
			tb.Fatal(err)
		}
		if done {
			break
		}
	}
	return toRes, toIni
}
