package node

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/riblt"
	"github.com/mira-market/mira/storage"
)

// Files in a node's data dir.
const (
	ConfigFile   = "config.toml"
	IdentityFile = "identity.key"
	SwarmKeyFile = "swarm.key"
	TokenFile    = "api.token"
	APIAddrFile  = "api.addr"
	dbDir        = "db"
	blobsDir     = "blobs"
	logsDir      = "logs"
)

// Config is a node's configuration, stored as TOML in DataDir/config.toml.
type Config struct {
	// DataDir holds the identity, config, swarm key, API token and database.
	// It is not stored in the file: it is where the file is.
	DataDir string `toml:"-"`

	// Network names the network; it prefixes the DHT protocol and topics.
	Network string `toml:"network"`
	// ReconcileInterval is how often the node reconciles its ledger with
	// a random peer (and it does with every peer it connects to).
	ReconcileInterval Duration `toml:"reconcile_interval"`
	// ReconcileSymbols is how many coded symbols of its ledger the node
	// keeps for reconciliation (48 bytes each); a session decodes a
	// difference of up to about 70 % of it, a larger one falls back to a
	// listing of every entry.
	ReconcileSymbols int `toml:"reconcile_symbols"`
	// MaxBlobSize bounds a blob (job input or result) this node stores or
	// fetches, in bytes.
	MaxBlobSize int64 `toml:"max_blob_size"`
	// BlobCacheMiB is the blob store's budget, in MiB: past it, inputs
	// and modules cached from requesters (and results held past their
	// retention) are evicted, least recently used first; a blob that
	// still does not fit is refused. It must hold one blob of
	// max_blob_size.
	BlobCacheMiB int64 `toml:"blob_cache_mib"`
	// BlobResultRetention is how long a provider keeps a result or
	// outputs archive for its requester to fetch before the collector may
	// evict it.
	BlobResultRetention Duration `toml:"blob_result_retention"`
	// Listen are the libp2p listen multiaddrs.
	Listen []string `toml:"listen"`
	// API is the host:port of the local HTTP API.
	API string `toml:"api"`
	// Bootstrap are multiaddrs with /p2p/ peer IDs that the node dials on
	// start and re-dials whenever the connection drops.
	Bootstrap []string `toml:"bootstrap"`
	// Private makes the node require DataDir/swarm.key and join only the
	// private network that key defines.
	Private bool `toml:"private"`

	// RedialInterval is how often unconnected bootstrap peers are re-dialed.
	RedialInterval Duration `toml:"redial_interval"`
	// PingInterval is how often connected peers' round-trip time is measured.
	PingInterval Duration `toml:"ping_interval"`
	// ConnLow and ConnHigh are the connection manager's watermarks.
	ConnLow  int `toml:"conn_low"`
	ConnHigh int `toml:"conn_high"`
	// BlockedPeers are peer IDs this node never connects to.
	BlockedPeers []string `toml:"blocked_peers"`

	// DetectGPUs runs GPU discovery (NVML, nvidia-smi, rocm-smi) on start.
	DetectGPUs bool `toml:"detect_gpus"`
	// GPUs declares GPUs by hand, for machines where discovery cannot see
	// them (and for testnets): [[gpu]] model, vram_mib, count.
	GPUs []gpu.Declared `toml:"gpu"`
	// Provider is how this node sells its capacity.
	Provider ProviderConfig `toml:"provider"`
	// Market sets the market's timing.
	Market MarketConfig `toml:"market"`
	// Disk sets how the node keeps its data dir's filesystem from filling.
	Disk DiskConfig `toml:"disk"`
	// Ledger sets how the node confirms its own account's head with its
	// peers after a start, before it signs anything.
	Ledger LedgerConfig `toml:"ledger"`
	// Limits bound what one peer may make this node do.
	Limits LimitsConfig `toml:"limits"`
}

// DiskConfig is the [disk] table. See package node/disk for why a full
// disk must never reach the database.
type DiskConfig struct {
	// MinFreeMiB is the free space, in MiB, below which the node refuses
	// new work (jobs, blobs, bids, peers' ledger entries) while it keeps
	// serving reads and settling what it has.
	MinFreeMiB uint64 `toml:"min_free_mib"`
	// ReserveMiB is the size of DATA/disk.reserve, allocated while space is
	// plentiful and deleted the moment the disk is low, so the database
	// always finds room for its own writes. 0 keeps no reserve.
	ReserveMiB uint64 `toml:"reserve_mib"`
	// CheckInterval is how often free space is measured.
	CheckInterval Duration `toml:"check_interval"`
}

// LedgerConfig is the [ledger] table.
type LedgerConfig struct {
	// HeadPeers is how many connected peers the node asks for its own
	// account's entries after a start.
	HeadPeers int `toml:"head_peers"`
	// HeadQuorum is how many of them must answer before it signs; 0 makes
	// it trust its own database and ask no one (a node that is alone by
	// design; unsafe after restoring a data dir).
	HeadQuorum int `toml:"head_quorum"`
	// HeadWait is how long jobs wait for that answer: after it, submits
	// are refused and awards fail, with a reason, until a peer answers.
	HeadWait Duration `toml:"head_wait"`
	// HoldSweepInterval is how often the node looks for its own open holds
	// that no job of its own will settle.
	HoldSweepInterval Duration `toml:"hold_sweep_interval"`
}

func (c LedgerConfig) validate() error {
	switch {
	case c.HeadPeers < 1 || c.HeadPeers > 16:
		return fmt.Errorf("head_peers %d out of range 1..16", c.HeadPeers)
	case c.HeadQuorum < 0 || c.HeadQuorum > c.HeadPeers:
		return fmt.Errorf("head_quorum %d out of range 0..head_peers (%d)", c.HeadQuorum, c.HeadPeers)
	case c.HeadWait <= 0:
		return errors.New("head_wait must be positive")
	case c.HoldSweepInterval <= 0:
		return errors.New("hold_sweep_interval must be positive")
	}
	return nil
}

// LimitsConfig is the [limits] table: how much one peer may send this node
// and hold open on it, and the memory a provider gives the offers it
// answered. The defaults leave room for `mira bench market --burst 1000`
// (a requester's 1,000 batch offers in a second and the bids, awards,
// acceptances and results they bring) several times over.
type LimitsConfig struct {
	// MarketMessagesPerSecond and MarketMessageBurst bound the direct
	// market messages one peer may send (a token bucket per peer): past
	// them a message is dropped, before its signature is checked, and
	// counted in mira_peer_limited_total{what="market"}.
	MarketMessagesPerSecond float64 `toml:"market_messages_per_second"`
	MarketMessageBurst      int     `toml:"market_message_burst"`
	// GossipMessagesPerSecond and GossipMessageBurst bound the signed
	// messages one peer may forward on the job topics: past them a gossip
	// message is ignored (not passed on, not scored against the peer,
	// which may only be relaying) and counted (what="gossip").
	GossipMessagesPerSecond float64 `toml:"gossip_messages_per_second"`
	GossipMessageBurst      int     `toml:"gossip_message_burst"`
	// BlobStreamsPerPeer, LogStreamsPerPeer and SyncStreamsPerPeer bound
	// the streams of each protocol one peer may hold open on this node at
	// once: one more is reset and counted (what="blob", "logs", "sync").
	BlobStreamsPerPeer int `toml:"blob_streams_per_peer"`
	LogStreamsPerPeer  int `toml:"log_streams_per_peer"`
	SyncStreamsPerPeer int `toml:"sync_streams_per_peer"`
	// OfferMemory and OfferMemoryPerRequester bound the bytes of the
	// offers a provider remembers having answered (to lease an award and
	// to answer each round once), in total and per requester: past them
	// the least recently answered are forgotten.
	OfferMemory             int `toml:"offer_memory"`
	OfferMemoryPerRequester int `toml:"offer_memory_per_requester"`
}

// DefaultLimits are the [limits] a new config gets.
func DefaultLimits() LimitsConfig {
	return LimitsConfig{
		MarketMessagesPerSecond: 2000,
		MarketMessageBurst:      10000,
		GossipMessagesPerSecond: 2000,
		GossipMessageBurst:      10000,
		BlobStreamsPerPeer:      64,
		LogStreamsPerPeer:       128,
		SyncStreamsPerPeer:      8,
		OfferMemory:             market.DefaultOfferMemory,
		OfferMemoryPerRequester: market.DefaultOfferMemoryPerRequester,
	}
}

func (l LimitsConfig) validate() error {
	var bad []string
	if l.MarketMessagesPerSecond <= 0 || math.IsNaN(l.MarketMessagesPerSecond) || l.MarketMessageBurst < 1 {
		bad = append(bad, "market_messages_per_second and market_message_burst must be positive")
	}
	if l.GossipMessagesPerSecond <= 0 || math.IsNaN(l.GossipMessagesPerSecond) || l.GossipMessageBurst < protocol.MaxGossipMarketMessages {
		bad = append(bad, fmt.Sprintf("gossip_messages_per_second must be positive and gossip_message_burst at least %d (one gossip message's)", protocol.MaxGossipMarketMessages))
	}
	if l.BlobStreamsPerPeer < 1 || l.LogStreamsPerPeer < 1 || l.SyncStreamsPerPeer < 1 {
		bad = append(bad, "blob_streams_per_peer, log_streams_per_peer and sync_streams_per_peer must be positive")
	}
	if l.OfferMemory < 1<<20 || l.OfferMemoryPerRequester < 1<<20 || l.OfferMemoryPerRequester > l.OfferMemory {
		bad = append(bad, "offer_memory and offer_memory_per_requester must be at least 1 MiB, the second at most the first")
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// MarketConfig is the [market] table: bidding windows and timeouts.
type MarketConfig struct {
	// InteractiveWindow is how long an interactive job waits for a first
	// acceptable bid before it is offered again.
	InteractiveWindow Duration `toml:"interactive_window"`
	// BatchWindow is how long a batch job collects bids.
	BatchWindow Duration `toml:"batch_window"`
	// AcceptTimeout bounds award to acceptance.
	AcceptTimeout Duration `toml:"accept_timeout"`
	// HeartbeatTimeout is how long a running provider may stay silent
	// before its job returns to the market; it beats at a third of it.
	HeartbeatTimeout Duration `toml:"heartbeat_timeout"`
	// ReputationWeight weighs providers' ledger records in the choice of
	// bid: a bid's price counts as price × (1 + weight × risk), risk 0
	// (a long spotless record) to 2 (losses only), and providers paid for
	// more jobs than they lost come first; 0 turns reputation off (the
	// cheapest bid wins). See market.ReputationPolicy.
	ReputationWeight float64 `toml:"reputation_weight"`
	// NewcomerShare is the fraction of jobs, 0..1, that go to a provider
	// without history when one bids, so that a new provider can start.
	NewcomerShare float64 `toml:"newcomer_share"`
	// BillTolerance is what this requester accepts in a provider's bill
	// beyond the run time it observed itself: "1s+5%" (clocks, the
	// network, a run's start and end around the messages). As a
	// provider, it takes a final acceptance (and delivers the result)
	// only if it is at least its bill less this tolerance.
	BillTolerance BillTolerance `toml:"bill_tolerance"`
	// ClaimWindow is how long after a run can have ended a provider may
	// still claim its bill: part of each award's hold expiry. As a
	// provider, the node declines an award whose hold leaves it less than
	// half its own window. A testnet may shorten it.
	ClaimWindow Duration `toml:"claim_window"`
	// SettlementInterval is how long a provider runs a job without its
	// requester's countersignature: a lease whose max_duration is longer
	// is billed as it goes, every ¾ interval, and paused when a bill goes
	// unanswered for ¼ interval; a run left paused two intervals is
	// stopped. Neither side risks more than one interval's price (see
	// market's interim.go). At least 1 s; default 60 s.
	SettlementInterval Duration `toml:"settlement_interval"`
}

// BillTolerance is market.Tolerance in config.toml: a duration plus a
// percentage of the observed time, "1s+5%"; either part may stand alone
// ("2s", "10%").
type BillTolerance market.Tolerance

// MarshalText implements encoding.TextMarshaler.
func (t BillTolerance) MarshalText() ([]byte, error) {
	return fmt.Appendf(nil, "%s+%d%%", t.Fixed, t.Percent), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *BillTolerance) UnmarshalText(b []byte) error {
	var out BillTolerance
	parts := strings.Split(strings.ReplaceAll(string(b), " ", ""), "+")
	if len(parts) > 2 || parts[0] == "" {
		return fmt.Errorf("bill_tolerance %q: want a duration plus a percentage, like \"1s+5%%\"", b)
	}
	for _, p := range parts {
		if pct, ok := strings.CutSuffix(p, "%"); ok {
			v, err := strconv.ParseUint(pct, 10, 8)
			if err != nil || v > 100 {
				return fmt.Errorf("bill_tolerance %q: percentage %q, want a whole number 0..100", b, p)
			}
			out.Percent = uint(v)
			continue
		}
		d, err := time.ParseDuration(p)
		if err != nil || d < 0 {
			return fmt.Errorf("bill_tolerance %q: %q is neither a duration (0 or more) nor a percentage", b, p)
		}
		out.Fixed = d
	}
	*t = out
	return nil
}

// Longest bill tolerance and claim window a config may set: a requester
// that accepts more than an hour beyond what it saw accepts anything, and
// a claim window is as long as the award's credits stay held after the
// run (a job lives at most a day).
const (
	maxBillTolerance = time.Hour
	maxClaimWindow   = 24 * time.Hour
)

// validate reports the reputation settings that cannot make sense.
func (m MarketConfig) validate() error {
	if !(m.ReputationWeight >= 0) || math.IsInf(m.ReputationWeight, 0) {
		return fmt.Errorf("reputation_weight: %v, want a number 0 or more (0: off)", m.ReputationWeight)
	}
	if !(m.NewcomerShare >= 0 && m.NewcomerShare <= 1) {
		return fmt.Errorf("newcomer_share: %v, want a fraction in 0..1", m.NewcomerShare)
	}
	// market.Config reads a zero tolerance as its default: a config that
	// says zero must not get 1s+5% silently.
	if t := m.BillTolerance; t == (BillTolerance{}) || t.Fixed > maxBillTolerance || t.Percent > 100 {
		return fmt.Errorf("bill_tolerance: %q, want more than nothing, at most %s plus at most 100%%", t.String(), maxBillTolerance)
	}
	// The bill is re-sent every third of heartbeat_timeout; a window
	// shorter than that leaves a provider no second try at its claim.
	if w := time.Duration(m.ClaimWindow); w < time.Duration(m.HeartbeatTimeout) || w > maxClaimWindow {
		return fmt.Errorf("claim_window: %s, want at least heartbeat_timeout (%s) and at most %s",
			w, time.Duration(m.HeartbeatTimeout), maxClaimWindow)
	}
	if m.SettlementInterval < Duration(MinSettlementInterval) {
		return fmt.Errorf("settlement_interval: %v, want at least %v", time.Duration(m.SettlementInterval), MinSettlementInterval)
	}
	return nil
}

func (t BillTolerance) String() string {
	b, _ := t.MarshalText()
	return string(b)
}

// MinSettlementInterval is the shortest [market] settlement_interval: a
// quarter of it is how long a bill may wait for its answer.
const MinSettlementInterval = time.Second

// pauseGrace is how long a run paused for an unanswered interim bill may
// stay paused before it is stopped: two settlement intervals.
func (m MarketConfig) pauseGrace() time.Duration { return 2 * time.Duration(m.SettlementInterval) }

// ProviderConfig is the [provider] table: what a node offers and for how much.
type ProviderConfig struct {
	// Slots is how many leases the node runs at once; 0 means it does not
	// sell capacity even if it has GPUs.
	Slots int `toml:"slots"`
	// PriceInteractive and PriceBatch are asking prices in credits per
	// GPU-second.
	PriceInteractive float64 `toml:"price_interactive"`
	PriceBatch       float64 `toml:"price_batch"`
	// Executors the node allows jobs to use: "wasm" (sandboxed), "docker",
	// "process" (runs host commands: only for a trusted private network),
	// "noop" (for tests and benchmarks).
	Executors []string `toml:"executors"`
	// DockerNetwork gives docker jobs a network; by default they have none.
	DockerNetwork bool `toml:"docker_network"`
	// DockerUser is the numeric "uid:gid" containers run as; default
	// "65534:65534" (nobody). A node that does not run as root must run
	// them as its own user.
	DockerUser string `toml:"docker_user"`
	// DockerImages are the images docker jobs may name: "name" (any of
	// its tags and digests), "name:tag" or "name@sha256:...". A job naming
	// another is declined ("image not allowed"); empty (the default): no
	// docker job.
	DockerImages []string `toml:"docker_images"`
	// DiskMiB is each job's scratch-disk quota: how much it may write
	// beyond its inputs before its writes are refused (wasm) or it is
	// stopped (docker, process), failing with "disk quota exceeded".
	DiskMiB uint32 `toml:"disk_mib"`
	// MaxMemoryMiB and MaxCPUMillis are the most memory and CPU one job
	// may ask for; a job asking more is declined. A job asking none gets
	// the executor's default memory (at most this) and, in a container,
	// all of MaxCPUMillis. Zero: the host's memory and cores divided by
	// slots.
	MaxMemoryMiB uint32 `toml:"max_memory_mib"`
	MaxCPUMillis uint32 `toml:"max_cpu_millis"`
	// WasmCacheDir keeps compiled wasm modules across restarts; default
	// DATA/wasm-cache. Nodes may share one (testnets do). It must be the
	// node's own, mode 0700 (created so): code compiled there is run.
	WasmCacheDir string `toml:"wasm_cache_dir,omitempty"`
	// CapacityTTL is how long an announcement stays valid; the node
	// re-announces at half of it. Short TTLs make a stopped provider vanish
	// from lookups sooner at the cost of more DHT traffic.
	CapacityTTL Duration `toml:"capacity_ttl"`
}

// Duration is a time.Duration written as a Go duration string ("5s") in TOML.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// DefaultConfig is the configuration `mira init` writes for a public node.
func DefaultConfig(dataDir string) Config {
	return Config{
		DataDir:             dataDir,
		Network:             protocol.DefaultNetwork,
		Listen:              []string{"/ip4/0.0.0.0/tcp/4410", "/ip4/0.0.0.0/udp/4410/quic-v1"},
		API:                 "127.0.0.1:7410",
		RedialInterval:      Duration(10 * time.Second),
		PingInterval:        Duration(15 * time.Second),
		ConnLow:             64,
		ConnHigh:            192,
		DetectGPUs:          true,
		MaxBlobSize:         1 << 30,
		BlobCacheMiB:        10 << 10,
		BlobResultRetention: Duration(24 * time.Hour),
		ReconcileInterval:   Duration(10 * time.Second),
		ReconcileSymbols:    riblt.DefaultCapacity,
		Provider: ProviderConfig{
			Slots:            1,
			PriceInteractive: 0.002,
			PriceBatch:       0.001,
			Executors:        []string{"wasm"},
			DockerUser:       executor.DefaultDockerUser,
			DockerImages:     []string{},
			DiskMiB:          1024,
			CapacityTTL:      Duration(10 * time.Minute),
		},
		Disk: DiskConfig{MinFreeMiB: 512, ReserveMiB: 64, CheckInterval: Duration(500 * time.Millisecond)},
		Market: MarketConfig{
			InteractiveWindow:  Duration(time.Second),
			BatchWindow:        Duration(3 * time.Second),
			AcceptTimeout:      Duration(5 * time.Second),
			HeartbeatTimeout:   Duration(15 * time.Second),
			ReputationWeight:   market.DefaultReputationWeight,
			NewcomerShare:      market.DefaultNewcomerShare,
			SettlementInterval: Duration(market.DefaultSettlementInterval),
			BillTolerance:      BillTolerance(market.DefaultBillTolerance),
			ClaimWindow:        Duration(market.DefaultClaimWindow),
		},
		Ledger: LedgerConfig{
			HeadPeers:         3,
			HeadQuorum:        1,
			HeadWait:          Duration(30 * time.Second),
			HoldSweepInterval: Duration(10 * time.Minute),
		},
		Limits: DefaultLimits(),
	}
}

// DefaultConfigPrivate is the configuration `mira init` writes for a member
// of a private network: TCP only, since a swarm key cannot protect QUIC.
func DefaultConfigPrivate(dataDir string) Config {
	cfg := DefaultConfig(dataDir)
	cfg.Private = true
	cfg.Listen = []string{"/ip4/0.0.0.0/tcp/4410"}
	return cfg
}

// LoadConfig reads dataDir/config.toml. Unknown keys are an error, so a typo
// in the file is reported instead of silently ignored.
func LoadConfig(dataDir string) (Config, error) {
	cfg := DefaultConfig(dataDir)
	path := filepath.Join(dataDir, ConfigFile)
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Config{}, fmt.Errorf("no config at %s: run `mira init --data %s` first", path, dataDir)
		}
		return Config{}, fmt.Errorf("read %s: %w", path, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("%s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	cfg.DataDir = dataDir
	return cfg, cfg.Validate()
}

// Validate checks the configuration for mistakes a node would only find
// later, with messages that name the field.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("config: data dir is empty")
	}
	if err := protocol.ValidateNetworkName(c.Network); err != nil {
		return fmt.Errorf("config: network: %w", err)
	}
	if len(c.Listen) == 0 {
		return errors.New("config: listen: at least one address is needed")
	}
	for _, s := range c.Listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("config: listen %q: %w", s, err)
		}
		if c.Private && !isTCP(a) {
			return fmt.Errorf("config: listen %q: a private network (swarm key) runs over TCP only; QUIC, WebTransport and WebRTC cannot use a pre-shared key", s)
		}
	}
	if _, err := parseBootstrap(c.Bootstrap); err != nil {
		return fmt.Errorf("config: bootstrap: %w", err)
	}
	if c.API == "" {
		return errors.New("config: api: address is empty")
	}
	if c.RedialInterval <= 0 || c.PingInterval <= 0 || c.ReconcileInterval <= 0 {
		return errors.New("config: redial_interval, ping_interval and reconcile_interval must be positive")
	}
	for _, s := range c.BlockedPeers {
		if _, err := peer.Decode(s); err != nil {
			return fmt.Errorf("config: blocked_peers %q: %w", s, err)
		}
	}
	if _, err := gpu.FromDeclared(c.GPUs); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := c.Provider.validate(); err != nil {
		return fmt.Errorf("config: provider: %w", err)
	}
	if err := c.Ledger.validate(); err != nil {
		return fmt.Errorf("config: ledger: %w", err)
	}
	if err := c.Limits.validate(); err != nil {
		return fmt.Errorf("config: limits: %w", err)
	}
	for name, d := range map[string]Duration{"interactive_window": c.Market.InteractiveWindow, "batch_window": c.Market.BatchWindow,
		"accept_timeout": c.Market.AcceptTimeout, "heartbeat_timeout": c.Market.HeartbeatTimeout} {
		if d <= 0 {
			return fmt.Errorf("config: market.%s must be positive", name)
		}
	}
	if err := c.Market.validate(); err != nil {
		return fmt.Errorf("config: market.%w", err)
	}
	if c.ReconcileSymbols < 256 || c.ReconcileSymbols > riblt.MaxCapacity {
		return fmt.Errorf("config: reconcile_symbols must be in 256..%d", riblt.MaxCapacity)
	}
	if c.Disk.CheckInterval <= 0 {
		return errors.New("config: disk.check_interval must be positive")
	}
	if c.Disk.MinFreeMiB > 1<<30 || c.Disk.ReserveMiB > 1<<30 {
		return errors.New("config: disk.min_free_mib and disk.reserve_mib must be at most 1073741824")
	}
	if minMiB := uint64(storage.MinWriteRoom) >> 20; c.Disk.ReserveMiB != 0 && c.Disk.ReserveMiB <= minMiB {
		return fmt.Errorf("config: disk.reserve_mib must be 0 or more than %d: the database needs that much room for a write", minMiB)
	}
	if c.MaxBlobSize <= 0 {
		return errors.New("config: max_blob_size must be positive")
	}
	if c.BlobCacheMiB <= 0 || c.BlobCacheMiB > math.MaxInt64>>20 || c.BlobCacheMiB<<20 < c.MaxBlobSize {
		return fmt.Errorf("config: blob_cache_mib (%d) must be positive and hold one blob of max_blob_size (%d bytes)", c.BlobCacheMiB, c.MaxBlobSize)
	}
	if c.BlobResultRetention <= 0 {
		return errors.New("config: blob_result_retention must be positive")
	}
	if c.ConnLow <= 0 || c.ConnHigh < c.ConnLow {
		return fmt.Errorf("config: conn_low (%d) and conn_high (%d): need 0 < low <= high", c.ConnLow, c.ConnHigh)
	}
	return nil
}

func (p ProviderConfig) validate() error {
	if p.Slots < 0 || p.Slots > 1024 {
		return fmt.Errorf("slots %d out of range 0..1024", p.Slots)
	}
	if p.PriceInteractive < 0 || p.PriceBatch < 0 || math.IsNaN(p.PriceInteractive) || math.IsNaN(p.PriceBatch) {
		return errors.New("prices must be non-negative numbers")
	}
	for _, e := range p.Executors {
		if !slices.Contains([]string{"wasm", "docker", "process", "noop"}, e) {
			return fmt.Errorf("executors: unknown executor %q (known: wasm, docker, process, noop)", e)
		}
	}
	if _, _, err := executor.ParseUser(p.DockerUser); err != nil {
		return fmt.Errorf("docker_user: %w", err)
	}
	for _, img := range p.DockerImages {
		if !market.ImageAllowed([]string{img}, img) {
			return fmt.Errorf("docker_images: %q is not an image reference (name, name:tag or name@sha256:...)", img)
		}
	}
	if p.DiskMiB == 0 || p.DiskMiB > 1<<24 {
		return fmt.Errorf("disk_mib %d out of range 1..%d", p.DiskMiB, 1<<24)
	}
	if time.Duration(p.CapacityTTL) < time.Second || time.Duration(p.CapacityTTL) > protocol.MaxCapacityTTL {
		return fmt.Errorf("capacity_ttl %v out of range 1s..%v", time.Duration(p.CapacityTTL), protocol.MaxCapacityTTL)
	}
	return nil
}

// Save writes the configuration to DataDir/config.toml.
func (c Config) Save() error {
	var b strings.Builder
	b.WriteString("# mira node configuration. Edit, then restart the node.\n")
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	path := filepath.Join(c.DataDir, ConfigFile)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func isTCP(a ma.Multiaddr) bool {
	hasTCP := false
	for _, c := range a {
		switch c.Protocol().Code {
		case ma.P_TCP:
			hasTCP = true
		case ma.P_WS, ma.P_WSS, ma.P_IP4, ma.P_IP6, ma.P_DNS, ma.P_DNS4, ma.P_DNS6, ma.P_P2P:
		default:
			return false
		}
	}
	return hasTCP
}
