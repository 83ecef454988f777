// Package testnet runs several real mira nodes in one process: each with its
// own data dir, identity and Badger database, listening on loopback TCP and
// bootstrapped to the first node. Tests and `mira testnet` use it; helpers
// stop and restart members and wait for conditions without fixed sleeps.
package testnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
)

// Options configure Start.
type Options struct {
	// Nodes is the number of members; at least 1.
	Nodes int
	// Dir holds one data dir per member (node0, node1, ...). Existing data
	// dirs are reused, so a testnet can be stopped and started again.
	Dir string
	// Network names the network; default "testnet".
	Network string
	// Public runs without a swarm key. By default a testnet is private:
	// its members share a fresh swarm key.
	Public bool
	// Log receives every node's logs, tagged with the member index.
	Log *slog.Logger
	// Configure, if set, adjusts member i's config before its first start.
	Configure func(i int, cfg *node.Config)
	// Credits each member is granted by the testnet's genesis, in
	// micro-credits; default DefaultCredits.
	Credits uint64
	// Grants are the genesis's grants to accounts beside the members'
	// (benchmarks and tests whose entries are signed by other keys).
	Grants []ledger.GenesisGrant
	// WasmCacheDir is the wasm compilation cache the members share, so a
	// module compiles once per testnet, not once per member; default
	// Dir/wasm-cache. A node uses only a dir of its own user that no one
	// else may enter (mode 0700; created so): compiled code found there
	// is run.
	WasmCacheDir string
}

// DefaultCredits is each member's genesis grant: 1,000 credits.
const DefaultCredits = 1_000_000_000

// Testnet is a running set of nodes.
type Testnet struct {
	opts    Options
	mu      sync.Mutex
	members []*member
}

type member struct {
	dir  string
	cfg  node.Config
	node *node.Node // nil while stopped
}

// Start initializes (where needed) and starts opts.Nodes nodes. Member 0
// starts first; the others bootstrap to it and start in parallel.
func Start(ctx context.Context, opts Options) (*Testnet, error) {
	if opts.Nodes < 1 {
		return nil, errors.New("testnet: need at least one node")
	}
	if opts.Dir == "" {
		return nil, errors.New("testnet: Dir is required")
	}
	if opts.Network == "" {
		opts.Network = "testnet"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.WasmCacheDir == "" {
		opts.WasmCacheDir = filepath.Join(opts.Dir, "wasm-cache")
	}
	tn := &Testnet{opts: opts, members: make([]*member, opts.Nodes)}
	swarmKey, err := tn.swarmKey()
	if err != nil {
		return nil, err
	}
	for i := range tn.members {
		m, err := tn.prepare(i, swarmKey)
		if err != nil {
			return nil, err
		}
		tn.members[i] = m
	}
	if err := tn.writeGenesis(swarmKey); err != nil {
		return nil, err
	}
	if err := tn.startMember(ctx, 0); err != nil {
		return nil, err
	}
	// Pin member 0 to the port it got, so it can restart at the same
	// address and the others' bootstrap entries stay valid.
	first := tn.members[0]
	if addrs := first.node.ListenAddrs(); len(addrs) > 0 {
		first.cfg.Listen = []string{trimP2P(addrs[0])}
	}
	if err := first.cfg.Save(); err != nil {
		tn.Close()
		return nil, err
	}
	bootstrap := first.node.ListenAddrs()
	errs := make([]error, opts.Nodes)
	var wg sync.WaitGroup
	for i := 1; i < opts.Nodes; i++ {
		m := tn.members[i]
		m.cfg.Bootstrap = bootstrap
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.cfg.Save(); err != nil {
				errs[i] = err
				return
			}
			errs[i] = tn.startMember(ctx, i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tn.Close()
		return nil, err
	}
	return tn, nil
}

// writeGenesis gives the testnet a genesis, unless its members have one: a
// test network's, bound to the swarm key, with a grant of Options.Credits
// to every member and Options.Grants (no faucet: a faucet mints only for
// the peers it lists, as grants do).
func (tn *Testnet) writeGenesis(swarmKey []byte) error {
	if g, err := os.ReadFile(filepath.Join(tn.members[0].dir, node.GenesisFile)); err == nil {
		// A reused testnet: members added since get the same genesis
		// (without a grant of their own).
		for _, m := range tn.members[1:] {
			p := filepath.Join(m.dir, node.GenesisFile)
			if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
				if err := os.WriteFile(p, g, 0o644); err != nil {
					return fmt.Errorf("testnet: %w", err)
				}
			}
		}
		return nil
	}
	credits := tn.opts.Credits
	if credits == 0 {
		credits = DefaultCredits
	}
	g := &ledger.Genesis{Network: tn.opts.Network, Testnet: true}
	if swarmKey != nil {
		psk, err := node.ParseSwarmKey(swarmKey)
		if err != nil {
			return fmt.Errorf("testnet: %w", err)
		}
		g.SwarmKeyFingerprint = node.SwarmKeyFingerprint(psk)
	}
	for i, m := range tn.members {
		priv, err := node.LoadIdentity(m.dir)
		if err != nil {
			return fmt.Errorf("testnet: genesis: node %d: %w", i, err)
		}
		id, err := peer.IDFromPrivateKey(priv)
		if err != nil {
			return fmt.Errorf("testnet: genesis: node %d: %w", i, err)
		}
		g.Grants = append(g.Grants, ledger.GenesisGrant{Peer: id, Amount: credits})
	}
	g.Grants = append(g.Grants, tn.opts.Grants...)
	for _, m := range tn.members {
		if err := storage.SaveGenesis(filepath.Join(m.dir, node.GenesisFile), g); err != nil {
			return fmt.Errorf("testnet: %w", err)
		}
	}
	return nil
}

// Genesis returns the testnet's genesis.
func (tn *Testnet) Genesis() (*ledger.Genesis, error) {
	return storage.LoadGenesis(filepath.Join(tn.members[0].dir, node.GenesisFile))
}

func trimP2P(addr string) string {
	if i := strings.LastIndex(addr, "/p2p/"); i >= 0 {
		return addr[:i]
	}
	return addr
}

// swarmKey returns the key every member shares: the one already in member
// 0's data dir when the testnet is restarted, else a new one.
func (tn *Testnet) swarmKey() ([]byte, error) {
	if tn.opts.Public {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(tn.opts.Dir, "node0", node.SwarmKeyFile))
	if err == nil {
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("testnet: %w", err)
	}
	return node.NewSwarmKey()
}

// prepare initializes member i's data dir unless it exists, and loads its
// config.
func (tn *Testnet) prepare(i int, swarmKey []byte) (*member, error) {
	dir := filepath.Join(tn.opts.Dir, fmt.Sprintf("node%d", i))
	if _, err := os.Stat(filepath.Join(dir, node.ConfigFile)); errors.Is(err, os.ErrNotExist) {
		cfg := DefaultConfig(dir, tn.opts.Network)
		cfg.Provider.WasmCacheDir = tn.opts.WasmCacheDir
		if tn.opts.Configure != nil {
			tn.opts.Configure(i, &cfg)
		}
		if _, err := node.Init(node.InitOptions{Config: cfg, SwarmKey: swarmKey}); err != nil {
			return nil, fmt.Errorf("testnet: init node %d: %w", i, err)
		}
	}
	cfg, err := node.LoadConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("testnet: node %d: %w", i, err)
	}
	if cfg.Provider.WasmCacheDir == oldSharedWasmCache() {
		// A testnet made before the cache moved into its own dir.
		cfg.Provider.WasmCacheDir = tn.opts.WasmCacheDir
	}
	return &member{dir: dir, cfg: cfg}, nil
}

// oldSharedWasmCache is where testnets kept their compilation cache
// before: a fixed path in the shared /tmp, which another local user could
// create first and fill with machine code.
func oldSharedWasmCache() string { return filepath.Join(os.TempDir(), "mira-wasm-cache") }

// DefaultConfig is a member's config: loopback TCP on a free port, API on a
// free loopback port, and short redial and ping intervals so the network
// heals quickly.
func DefaultConfig(dir, network string) node.Config {
	cfg := node.DefaultConfig(dir)
	cfg.Network = network
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.API = "127.0.0.1:0"
	cfg.RedialInterval = node.Duration(time.Second)
	cfg.PingInterval = node.Duration(2 * time.Second)
	cfg.ReconcileInterval = node.Duration(time.Second)
	cfg.DetectGPUs = false // members declare their GPUs, so runs are the same on every machine
	cfg.Provider.Executors = []string{"noop", "wasm"}
	cfg.Provider.Slots = 4
	// Many members share one machine's disk: a small reserve each.
	cfg.Disk.MinFreeMiB, cfg.Disk.ReserveMiB = 64, 20
	cfg.Market = node.MarketConfig{
		InteractiveWindow: node.Duration(300 * time.Millisecond),
		BatchWindow:       node.Duration(300 * time.Millisecond),
		// Both generous for 2 cores under -race: a late acceptance bars
		// its provider from the job, and a missed beat re-assigns a job
		// that is running fine (and refuses its result).
		AcceptTimeout:    node.Duration(10 * time.Second),
		HeartbeatTimeout: node.Duration(10 * time.Second),
		BillTolerance:    node.BillTolerance(market.DefaultBillTolerance),
		ClaimWindow:      node.Duration(market.DefaultClaimWindow),
		// Long jobs of a test are billed as they go; a job of a few
		// seconds is billed once.
		SettlementInterval: node.Duration(10 * time.Second),
	}
	return cfg
}

func (tn *Testnet) startMember(ctx context.Context, i int) error {
	m := tn.members[i]
	var n *node.Node
	var err error
	// The goroutines the node starts inherit the label, so a CPU profile
	// of a testnet splits by member: go tool pprof -tags.
	pprof.Do(ctx, pprof.Labels("node", strconv.Itoa(i)), func(ctx context.Context) {
		n, err = node.Start(ctx, m.cfg, node.WithLogger(tn.opts.Log.With("node", i)))
	})
	if err != nil {
		return fmt.Errorf("testnet: start node %d: %w", i, err)
	}
	tn.mu.Lock()
	m.node = n
	tn.mu.Unlock()
	return nil
}

// Len is the number of members, running or stopped.
func (tn *Testnet) Len() int { return len(tn.members) }

// Node returns member i, or nil while it is stopped.
func (tn *Testnet) Node(i int) *node.Node {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return tn.members[i].node
}

// Nodes returns the running members.
func (tn *Testnet) Nodes() []*node.Node {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	var out []*node.Node
	for _, m := range tn.members {
		if m.node != nil {
			out = append(out, m.node)
		}
	}
	return out
}

// Dir is member i's data dir.
func (tn *Testnet) Dir(i int) string { return tn.members[i].dir }

// Stop stops member i; its data dir stays.
func (tn *Testnet) Stop(i int) error {
	tn.mu.Lock()
	n := tn.members[i].node
	tn.members[i].node = nil
	tn.mu.Unlock()
	if n == nil {
		return fmt.Errorf("testnet: node %d is not running", i)
	}
	return n.Close()
}

// Restart starts a stopped member i again from its data dir: same identity,
// same config, same database.
func (tn *Testnet) Restart(ctx context.Context, i int) error {
	if tn.Node(i) != nil {
		return fmt.Errorf("testnet: node %d is running", i)
	}
	return tn.startMember(ctx, i)
}

// Close stops every running member.
func (tn *Testnet) Close() error {
	var errs []error
	for i, m := range tn.members {
		if m != nil && tn.Node(i) != nil {
			errs = append(errs, tn.Stop(i))
		}
	}
	return errors.Join(errs...)
}

// WaitFor polls cond until it returns nil or timeout passes; then it returns
// cond's last error. Use it instead of sleeping.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, err)
		case <-time.After(delay):
		}
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}

// Formed reports nil once every running member has at least one peer and a
// non-empty DHT routing table.
func (tn *Testnet) Formed() error {
	for i, m := range tn.members {
		n := tn.Node(i)
		if n == nil {
			continue
		}
		if len(n.ConnectedPeers()) == 0 {
			return fmt.Errorf("node %d (%s) has no peers", i, m.dir)
		}
		if n.RoutingTableSize() == 0 {
			return fmt.Errorf("node %d (%s) has an empty routing table", i, m.dir)
		}
	}
	return nil
}

// SampleGPUs are the GPUs `mira testnet` and the benchmarks declare on
// providers, cycling through a few models so that queries by model differ.
var SampleGPUs = []gpu.Declared{
	{Model: "NVIDIA H100 80GB HBM3", VRAMMiB: 81559, Count: 2},
	{Model: "NVIDIA GeForce RTX 4090", VRAMMiB: 24564, Count: 1},
	{Model: "NVIDIA A100-SXM4-40GB", VRAMMiB: 40960, Count: 4},
}

// WithProviders returns a Configure function that makes members 1..n
// providers, each declaring one entry of SampleGPUs in turn.
func WithProviders(n int) func(int, *node.Config) {
	return func(i int, cfg *node.Config) {
		if i >= 1 && i <= n {
			cfg.GPUs = []gpu.Declared{SampleGPUs[(i-1)%len(SampleGPUs)]}
		}
	}
}
