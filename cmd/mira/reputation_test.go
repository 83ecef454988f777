package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mira-market/mira/node/api"
)

func TestWriteReputations(t *testing.T) {
	recs := []api.ReputationInfo{
		{PeerID: "12D3KooWhonest", Reputation: api.NewReputation(api.ReputationCounters{
			Provider: api.ProviderCounters{JobsPaid: 3, NotRun: 1, EarnedMicro: 1_500_000, GPUMS: 2500}})},
		{PeerID: "12D3KooWnew", Reputation: api.NewReputation(api.ReputationCounters{})},
	}
	var out bytes.Buffer
	if err := writeReputations(&out, recs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("output:\n%s", out.String())
	}
	for i, want := range [][]string{
		{"12D3KooWhonest", "proven", "3", "1", "75.0%", "2.5", "1.5"},
		{"12D3KooWnew", "newcomer", "0", "0", "-"},
	} {
		if got := strings.Fields(lines[i+1]); !hasPrefix(got, want) {
			t.Errorf("line %q, want it to start with %v", lines[i+1], want)
		}
	}
	if !strings.HasPrefix(lines[3], "2 peers") {
		t.Errorf("last line %q", lines[3])
	}
}

func hasPrefix(got, want []string) bool {
	if len(got) < len(want) {
		return false
	}
	for i := range want {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}
