package node_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
)

func TestConfigBlobStoreLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*node.Config)
		err    string // "" for valid
	}{
		{"defaults", func(*node.Config) {}, ""},
		{"budget of one largest blob", func(c *node.Config) { c.MaxBlobSize, c.BlobCacheMiB = 64<<20, 64 }, ""},
		{"budget below one largest blob", func(c *node.Config) { c.MaxBlobSize, c.BlobCacheMiB = 64<<20+1, 64 }, "blob_cache_mib"},
		{"no budget", func(c *node.Config) { c.BlobCacheMiB = 0 }, "blob_cache_mib"},
		{"budget overflowing bytes", func(c *node.Config) { c.BlobCacheMiB = 1 << 60 }, "blob_cache_mib"},
		{"no retention", func(c *node.Config) { c.BlobResultRetention = 0 }, "blob_result_retention"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := node.DefaultConfig(t.TempDir())
			tc.change(&cfg)
			err := cfg.Validate()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Validate = %v, want an error naming %q", err, tc.err)
			}
		})
	}
}

// TestMarketSettlementConfig reads [market] bill_tolerance and
// claim_window from config.toml as `mira init` writes it, edited: what a
// requester accepts beyond the run time it saw, and how long a provider
// may claim (a testnet shortens it); a bad value is refused naming its key.
func TestMarketSettlementConfig(t *testing.T) {
	for _, tc := range []struct {
		name, tolerance, window string
		want                    market.Tolerance
		err                     string // "" for valid
	}{
		{"defaults", `"1s+5%"`, `"10m0s"`, market.DefaultBillTolerance, ""},
		{"testnet's short window", `"2s + 10%"`, `"30s"`, market.Tolerance{Fixed: 2 * time.Second, Percent: 10}, ""},
		{"a percentage alone", `"10%"`, `"1h"`, market.Tolerance{Percent: 10}, ""},
		{"a duration alone", `"500ms"`, `"24h"`, market.Tolerance{Fixed: 500 * time.Millisecond}, ""},
		{"nothing tolerated", `"0s"`, `"10m"`, market.Tolerance{}, "bill_tolerance"},
		{"nothing tolerated, both parts", `"0s+0%"`, `"10m"`, market.Tolerance{}, "bill_tolerance"},
		{"over 100%", `"1s+101%"`, `"10m"`, market.Tolerance{}, "bill_tolerance"},
		{"over an hour", `"2h"`, `"10m"`, market.Tolerance{}, "bill_tolerance"},
		{"negative", `"-1s"`, `"10m"`, market.Tolerance{}, "bill_tolerance"},
		{"three parts", `"1s+5%+1s"`, `"10m"`, market.Tolerance{}, "bill_tolerance"},
		{"not a tolerance", `"lenient"`, `"10m"`, market.Tolerance{}, "bill_tolerance"},
		{"window under heartbeat_timeout", `"1s+5%"`, `"14s"`, market.Tolerance{}, "claim_window"},
		{"window over a day", `"1s+5%"`, `"25h"`, market.Tolerance{}, "claim_window"},
		{"no window", `"1s+5%"`, `"0s"`, market.Tolerance{}, "claim_window"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := node.DefaultConfig(dir).Save(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, node.ConfigFile)
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			text := string(raw)
			for key, v := range map[string]string{"bill_tolerance": tc.tolerance, "claim_window": tc.window} {
				line := regexp.MustCompile(`(?m)^\s*` + key + ` = .*$`)
				if !line.MatchString(text) {
					t.Fatalf("the saved config has no %s:\n%s", key, text)
				}
				text = line.ReplaceAllLiteralString(text, key+" = "+v)
			}
			if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := node.LoadConfig(dir)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("LoadConfig = %v, want an error naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := market.Tolerance(cfg.Market.BillTolerance); got != tc.want {
				t.Fatalf("bill_tolerance %+v, want %+v", got, tc.want)
			}
			want, _ := time.ParseDuration(strings.Trim(tc.window, `"`))
			if time.Duration(cfg.Market.ClaimWindow) != want {
				t.Fatalf("claim_window %s, want %s", time.Duration(cfg.Market.ClaimWindow), want)
			}
		})
	}
}
