package node_test

import (
	"strings"
	"testing"

	"github.com/mira-market/mira/node"
)

func TestLimitsConfigIsValidated(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*node.LimitsConfig)
		field string // "" for a valid config
	}{
		{"defaults", func(*node.LimitsConfig) {}, ""},
		{"no market rate", func(l *node.LimitsConfig) { l.MarketMessagesPerSecond = 0 }, "market_messages_per_second"},
		{"gossip burst below one gossip message", func(l *node.LimitsConfig) { l.GossipMessageBurst = 127 }, "gossip_message_burst"},
		{"no sync streams", func(l *node.LimitsConfig) { l.SyncStreamsPerPeer = 0 }, "sync_streams_per_peer"},
		{"per requester over the total", func(l *node.LimitsConfig) { l.OfferMemoryPerRequester = l.OfferMemory + 1 }, "offer_memory_per_requester"},
		{"offer memory too small", func(l *node.LimitsConfig) { l.OfferMemory = 1000 }, "offer_memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := node.DefaultConfig(t.TempDir())
			tc.edit(&cfg.Limits)
			err := cfg.Validate()
			if tc.field == "" && err != nil || tc.field != "" && (err == nil || !strings.Contains(err.Error(), "limits: ") || !strings.Contains(err.Error(), tc.field)) {
				t.Fatalf("err = %v, want one naming limits %q", err, tc.field)
			}
		})
	}
}
