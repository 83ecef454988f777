package protocol

import "testing"

func TestValidateNetworkName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"main", true},
		{"team-lab-2", true},
		{"a", true},
		{"", false},
		{"-lab", false},
		{"Lab", false},
		{"lab/evil", false},
		{"lab net", false},
		{"abcdefghijklmnopqrstuvwxyz0123456", false}, // 33 chars
	} {
		err := ValidateNetworkName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateNetworkName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestPrefix(t *testing.T) {
	if got := Prefix("lab"); got != "/mira/lab" {
		t.Fatalf("Prefix(lab) = %q", got)
	}
}
