package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// repBackend serves the reputation routes from a fixed book, visiting it
// in the order given (as a store might, in its own key order); the rest of
// Backend is not used here.
type repBackend struct {
	Backend
	order []peer.ID
	book  map[peer.ID]ReputationCounters
}

func (b repBackend) Reputation(_ context.Context, p peer.ID) (ReputationCounters, error) {
	return b.book[p], nil
}

func (b repBackend) Reputations(_ context.Context, fn func(peer.ID, ReputationCounters) error) error {
	for _, p := range b.order {
		if err := fn(p, b.book[p]); err != nil {
			return err
		}
	}
	return nil
}

func newPeer(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

const testToken = "secret"

func get(t *testing.T, h http.Handler, method, path, token string) (int, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: content type %q", method, path, ct)
	}
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, b
}

func TestReputationRoutes(t *testing.T) {
	honest, rogue, stranger := newPeer(t), newPeer(t), newPeer(t)
	book := map[peer.ID]ReputationCounters{
		honest: {Provider: ProviderCounters{Leases: 4, Receipts: 4, JobsPaid: 4, EarnedMicro: 2_500_000, GPUMS: 8000, WallMS: 4000}},
		rogue: {Provider: ProviderCounters{Leases: 3, NotRun: 2, VerificationLosses: 1},
			Requester: RequesterCounters{Awards: 2, PaidFor: 1, SpentMicro: 1_000_000, LeftUnpaid: 1}},
	}
	h := NewServer(Config{Backend: repBackend{order: []peer.ID{rogue, honest}, book: book}, Token: testToken})
	for _, tc := range []struct {
		name, method, path, token string
		code                      int
		check                     func(t *testing.T, body []byte)
	}{
		{"all, by peer ID", "GET", "/v1/reputation", testToken, 200, func(t *testing.T, body []byte) {
			var got []ReputationInfo
			mustDecode(t, body, &got)
			want := []string{honest.String(), rogue.String()}
			slices.Sort(want)
			if len(got) != 2 || got[0].PeerID != want[0] || got[1].PeerID != want[1] {
				t.Fatalf("peers %v, want %v", got, want)
			}
		}},
		{"one, with derived figures", "GET", "/v1/reputation/" + rogue.String(), testToken, 200, func(t *testing.T, body []byte) {
			var got ReputationInfo
			mustDecode(t, body, &got)
			d := got.Derived
			if got.PeerID != rogue.String() || got.Provider.NotRun != 2 || d.Losses != 3 || d.Standing != StandingUnproven ||
				d.SuccessRatio == nil || *d.SuccessRatio != 0 || d.PaidRatio == nil || *d.PaidRatio != 0.5 || d.Spent != 1 {
				t.Fatalf("got %s", body)
			}
		}},
		{"a peer without a record is a newcomer", "GET", "/v1/reputation/" + stranger.String(), testToken, 200, func(t *testing.T, body []byte) {
			var got ReputationInfo
			mustDecode(t, body, &got)
			if got.Derived.Standing != StandingNewcomer || got.Derived.SuccessRatio != nil || got.Derived.Risk != 1 {
				t.Fatalf("got %s", body)
			}
			if !bytes.Contains(body, []byte(`"success_ratio": null`)) {
				t.Fatalf("success_ratio not null: %s", body)
			}
		}},
		{"a bad peer ID", "GET", "/v1/reputation/not-a-peer", testToken, 400, wantError("peer: \"not-a-peer\" is not a peer ID")},
		{"no token", "GET", "/v1/reputation", "", 401, wantError("API token")},
		{"a wrong method", "POST", "/v1/reputation", testToken, 405, wantError("not allowed")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, h, tc.method, tc.path, tc.token)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, body)
			}
			tc.check(t, body)
		})
	}
}

func mustDecode(t *testing.T, body []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
}

func wantError(part string) func(t *testing.T, body []byte) {
	return func(t *testing.T, body []byte) {
		var e Error
		mustDecode(t, body, &e)
		if !strings.Contains(e.Error, part) {
			t.Fatalf("error %q, want it to say %q", e.Error, part)
		}
	}
}

// Two nodes whose ledgers hold the same records serve the same bytes,
// whatever order their stores visit the peers in.
func TestReputationBodyIsDeterministic(t *testing.T) {
	book := map[peer.ID]ReputationCounters{}
	var order []peer.ID
	for i := range 20 {
		p := newPeer(t)
		order = append(order, p)
		book[p] = ReputationCounters{Provider: ProviderCounters{JobsPaid: uint64(i), NotRun: uint64(i % 3), EarnedMicro: uint64(i) * 333_333, GPUMS: uint64(i) * 1001}}
	}
	reversed := slices.Clone(order)
	slices.Reverse(reversed)
	var bodies [][]byte
	for _, o := range [][]peer.ID{order, reversed} {
		h := NewServer(Config{Backend: repBackend{order: o, book: book}, Token: testToken})
		code, body := get(t, h, "GET", "/v1/reputation", testToken)
		if code != 200 {
			t.Fatalf("status %d: %s", code, body)
		}
		bodies = append(bodies, body)
	}
	if !bytes.Equal(bodies[0], bodies[1]) {
		t.Fatalf("bodies differ:\n%s\n%s", bodies[0], bodies[1])
	}
}

func TestNewReputation(t *testing.T) {
	one := func(f float64) *float64 { return &f }
	for _, tc := range []struct {
		name     string
		c        ReputationCounters
		standing string
		losses   uint64
		success  *float64
		risk     float64
	}{
		{"empty", ReputationCounters{}, StandingNewcomer, 0, nil, 1},
		{"waives only: still a newcomer", ReputationCounters{Provider: ProviderCounters{Waived: 3}}, StandingNewcomer, 0, nil, 1},
		{"a requester only: a newcomer as a provider", ReputationCounters{Requester: RequesterCounters{Awards: 5, PaidFor: 5}}, StandingNewcomer, 0, nil, 1},
		{"paid", ReputationCounters{Provider: ProviderCounters{JobsPaid: 3}}, StandingProven, 0, one(1), 0.25},
		{"losses of every kind", ReputationCounters{Provider: ProviderCounters{JobsPaid: 1, NotRun: 1, Unclaimed: 1, VerificationLosses: 1}},
			StandingUnproven, 3, one(0.25), 4.0/5 + 3.0/4},
		{"more paid than lost", ReputationCounters{Provider: ProviderCounters{JobsPaid: 3, NotRun: 1}}, StandingProven, 1, one(0.75), 2.0/5 + 1.0/4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewReputation(tc.c).Derived
			if d.Standing != tc.standing || d.Losses != tc.losses || math.Abs(d.Risk-tc.risk) > 1e-12 ||
				(d.SuccessRatio == nil) != (tc.success == nil) || d.SuccessRatio != nil && *d.SuccessRatio != *tc.success {
				t.Fatalf("derived %+v", d)
			}
		})
	}
}
