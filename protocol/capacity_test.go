package protocol

import (
	"bytes"
	"crypto/rand"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"

	"github.com/mira-market/mira/protocol/pb"
)

var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func newKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return k, id
}

func sampleCapacity(p peer.ID, seq uint64) *Capacity {
	return &Capacity{
		Provider:         p,
		Network:          "lab",
		GPUs:             []GPU{{Model: "nvidia-h100", VRAMMiB: 81559, Count: 2, Detected: true, UUID: "GPU-1"}},
		CPUCores:         32,
		MemoryMiB:        256 << 10,
		FreeSlots:        2,
		Executors:        []string{"wasm", "docker"},
		PriceInteractive: 1500,
		PriceBatch:       900,
		Seq:              seq,
		Expires:          testNow.Add(time.Minute),
	}
}

func TestCapacityRoundTrip(t *testing.T) {
	k, id := newKey(t)
	want := sampleCapacity(id, 7)
	b, err := SignCapacity(k, want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenCapacity(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Provider != id || got.Seq != 7 || got.GPUs[0] != want.GPUs[0] || !got.Expires.Equal(want.Expires) ||
		got.PriceBatch != 900 || len(got.Executors) != 2 || got.FreeSlots != 2 {
		t.Fatalf("round trip: got %+v", got)
	}
	if keys := got.ContentKeys(); len(keys) != 4 || keys[3] != "gpu/nvidia-h100" {
		t.Fatalf("content keys = %v", keys)
	}
}

func TestCapacityValidator(t *testing.T) {
	k, id := newKey(t)
	_, otherID := newKey(t)
	v := CapacityValidator{Network: "lab", Now: func() time.Time { return testNow }}
	valid, err := SignCapacity(k, sampleCapacity(id, 1))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(valid)
	flipped[len(flipped)-1] ^= 1 // the signature is the envelope's last field

	expired := sampleCapacity(id, 1)
	expired.Expires = testNow.Add(-time.Second)
	expiredB, _ := SignCapacity(k, expired)

	tooFar := sampleCapacity(id, 1)
	tooFar.Expires = testNow.Add(MaxCapacityTTL + time.Hour)
	tooFarB, _ := SignCapacity(k, tooFar)

	otherNet := sampleCapacity(id, 1)
	otherNet.Network = "elsewhere"
	otherNetB, _ := SignCapacity(k, otherNet)

	// A record naming one peer, signed by another: built by hand because
	// SignCapacity refuses to make it.
	forgerKey, _ := newKey(t)
	forged, err := seal(forgerKey, capacityDomain, capacityCodec, &pb.Capacity{
		Version: CapacityVersion, Provider: []byte(id), Network: "lab", ExpiresUnixMs: testNow.Add(time.Minute).UnixMilli(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// A valid signature over another message type's domain.
	wrongDomain, err := seal(k, "mira-other", capacityCodec, &pb.Capacity{
		Version: CapacityVersion, Provider: []byte(id), Network: "lab", ExpiresUnixMs: testNow.Add(time.Minute).UnixMilli(),
	})
	if err != nil {
		t.Fatal(err)
	}
	badVersion, _ := seal(k, capacityDomain, capacityCodec, &pb.Capacity{
		Version: 99, Provider: []byte(id), Network: "lab", ExpiresUnixMs: testNow.Add(time.Minute).UnixMilli(),
	})
	big := sampleCapacity(id, 1)
	for range 60 {
		big.GPUs = append(big.GPUs, GPU{Model: strings.Repeat("x", 60), VRAMMiB: 1, Count: 1, UUID: strings.Repeat("u", 100)})
	}
	bigMsg := &pb.Capacity{Version: CapacityVersion, Provider: []byte(id), Network: "lab", ExpiresUnixMs: testNow.Add(time.Minute).UnixMilli()}
	for _, g := range big.GPUs {
		bigMsg.Gpus = append(bigMsg.Gpus, &pb.GPU{Model: g.Model, Count: 1, Uuid: g.UUID})
	}
	oversized, _ := seal(k, capacityDomain, capacityCodec, bigMsg)

	for _, tc := range []struct {
		name  string
		key   string
		value []byte
		want  error
	}{
		{"valid", CapacityKey(id), valid, nil},
		{"bad signature", CapacityKey(id), flipped, ErrSignature},
		{"expired", CapacityKey(id), expiredB, ErrExpired},
		{"expiry too far ahead", CapacityKey(id), tooFarB, ErrBadMessage},
		{"other network", CapacityKey(id), otherNetB, ErrBadMessage},
		{"stored under another peer's key", CapacityKey(otherID), valid, ErrSigner},
		{"names a peer that did not sign it", CapacityKey(id), forged, ErrSigner},
		{"signature of another domain", CapacityKey(id), wrongDomain, ErrSignature},
		{"unknown version", CapacityKey(id), badVersion, ErrBadMessage},
		{"oversized", CapacityKey(id), oversized, ErrTooLarge},
		{"garbage", CapacityKey(id), []byte("garbage"), ErrBadMessage},
		{"empty", CapacityKey(id), nil, ErrBadMessage},
		{"key outside namespace", "/pk/" + string(id), valid, ErrBadMessage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Validate(tc.key, tc.value)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Validate err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCapacitySelectNewestSeq(t *testing.T) {
	k, id := newKey(t)
	v := CapacityValidator{Network: "lab", Now: func() time.Time { return testNow }}
	old, _ := SignCapacity(k, sampleCapacity(id, 5))
	newer, _ := SignCapacity(k, sampleCapacity(id, 6))
	expired := sampleCapacity(id, 9)
	expired.Expires = testNow.Add(-time.Second)
	expiredB, _ := SignCapacity(k, expired)

	for _, tc := range []struct {
		name   string
		values [][]byte
		want   int
	}{
		{"newer first", [][]byte{newer, old}, 0},
		// The DHT stores a PUT only when Select([new, stored]) picks the
		// new one: a lower seq than the stored record is refused.
		{"lower seq than stored", [][]byte{old, newer}, 1},
		{"invalid higher seq ignored", [][]byte{expiredB, old}, 1},
		{"garbage ignored", [][]byte{[]byte("x"), newer}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Select(CapacityKey(id), tc.values)
			if err != nil || got != tc.want {
				t.Fatalf("Select = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
	if _, err := v.Select(CapacityKey(id), [][]byte{expiredB}); err == nil {
		t.Fatal("Select picked among invalid records only")
	}
}

func TestSignCapacityRefusesOtherProvider(t *testing.T) {
	k, _ := newKey(t)
	_, other := newKey(t)
	if _, err := SignCapacity(k, sampleCapacity(other, 1)); !errors.Is(err, ErrSigner) {
		t.Fatalf("err = %v, want ErrSigner", err)
	}
}

// FuzzOpenCapacity: whatever opens re-validates. Its envelope's key (as
// core/record reads it) is the provider's, every field is within the
// record's bounds, and opening is deterministic.
func FuzzOpenCapacity(f *testing.F) {
	k, id := newKey(f)
	valid, _ := SignCapacity(k, sampleCapacity(id, 1))
	f.Add(valid)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := OpenCapacity(b)
		if err != nil {
			return
		}
		env, err := record.ConsumeTypedEnvelope(b, &signed{domain: capacityDomain, codec: capacityCodec, msg: &pb.Capacity{}})
		if err != nil {
			t.Fatalf("opened what core/record refuses: %v", err)
		}
		if signer, err := peer.IDFromPublicKey(env.PublicKey); err != nil || signer != c.Provider {
			t.Fatalf("record signed by %s (%v) opened as %s's", signer, err, c.Provider)
		}
		checkCapacityBounds(t, c)
		again, err := OpenCapacity(b)
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("opening twice differs: %+v, %v", again, err)
		}
	})
}

// FuzzCapacityRoundTrip: a record signed with any field values opens to
// exactly those values when they are within bounds, and is refused as a
// bad message when they are not.
func FuzzCapacityRoundTrip(f *testing.F) {
	k, id := newKey(f)
	f.Add("lab", "nvidia-h100", uint32(2), uint32(81559), "wasm", uint64(7), int64(1), uint32(3))
	f.Add("", "", uint32(0), uint32(0), "", uint64(0), int64(0), uint32(0))
	f.Add("-bad", "x", uint32(1), uint32(1), strings.Repeat("e", 65), uint64(1), int64(-5), uint32(70))
	f.Fuzz(func(t *testing.T, network, model string, count, vram uint32, executor string, seq uint64, expiresMs int64, gpuEntries uint32) {
		in := &Capacity{Provider: id, Network: network, Executors: []string{executor}, Seq: seq, Expires: time.UnixMilli(expiresMs)}
		for range gpuEntries % 80 {
			in.GPUs = append(in.GPUs, GPU{Model: model, VRAMMiB: int(vram), Count: int(count)})
		}
		b, err := SignCapacity(k, in)
		if err != nil {
			return // too large to sign
		}
		valid := ValidateNetworkName(network) == nil && expiresMs > 0 && len(in.GPUs) <= maxGPUEntries &&
			executor != "" && len(executor) <= maxNameLen &&
			(len(in.GPUs) == 0 || model != "" && len(model) <= maxNameLen && count > 0)
		out, err := OpenCapacity(b)
		switch {
		case valid && err != nil:
			t.Fatalf("a valid record refused: %v (%+v)", err, in)
		case !valid && !errors.Is(err, ErrBadMessage):
			t.Fatalf("an invalid record opened (%+v), err %v", in, err)
		case valid:
			in.GPUs = slices.Clip(in.GPUs)
			if out.Network != network || out.Seq != seq || !out.Expires.Equal(in.Expires) || len(out.GPUs) != len(in.GPUs) ||
				!slices.Equal(out.Executors, in.Executors) || out.Provider != id {
				t.Fatalf("round trip: %+v, want %+v", out, in)
			}
			for i := range out.GPUs {
				if out.GPUs[i] != in.GPUs[i] {
					t.Fatalf("GPU %d: %+v, want %+v", i, out.GPUs[i], in.GPUs[i])
				}
			}
			checkCapacityBounds(t, out)
		}
	})
}

// checkCapacityBounds checks an opened record against every bound
// checkCapacity promises.
func checkCapacityBounds(t *testing.T, c *Capacity) {
	t.Helper()
	if c.Provider == "" || ValidateNetworkName(c.Network) != nil || c.Expires.UnixMilli() <= 0 ||
		len(c.GPUs) > maxGPUEntries || len(c.Executors) > maxExecutors {
		t.Fatalf("opened a record out of bounds: %+v", c)
	}
	for _, g := range c.GPUs {
		if g.Model == "" || len(g.Model) > maxNameLen || g.Count <= 0 || len(g.UUID) > 128 || g.VRAMMiB < 0 {
			t.Fatalf("opened a GPU entry out of bounds: %+v", g)
		}
	}
	for _, e := range c.Executors {
		if e == "" || len(e) > maxNameLen {
			t.Fatalf("opened an executor name out of bounds: %q", e)
		}
	}
}
