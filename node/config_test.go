package node_test

import (
	"strings"
	"testing"

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
