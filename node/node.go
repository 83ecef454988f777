// Package node assembles a running mira node from its parts: a libp2p host
// (private when a swarm key is configured), the Kademlia DHT, gossipsub,
// Badger storage and the local HTTP API. It owns every goroutine, socket and
// file; the packages it assembles (market, storage's algorithms) stay pure.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blobd"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/node/disk"
	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/node/joblogs"
	"github.com/mira-market/mira/node/ledgerd"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/node/results"
	"github.com/mira-market/mira/node/runner"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/storage"
)

// Version is the mira version this binary reports.
const Version = "0.1.0-dev"

// Node is a running mira node. Create it with Start; stop it with Close.
type Node struct {
	cfg      Config
	log      *slog.Logger
	priv     crypto.PrivKey
	gater    *gater
	capacity *capacity.Service
	market   *marketd.Driver
	limits   *peerLimits
	host     host.Host
	dht      *dht.IpfsDHT
	pubsub   *pubsub.PubSub
	db       *storage.DB
	disk     *disk.Guard
	blobs    *blobd.Service
	ledger   *ledgerd.Service
	scores   gossip.Scores // peers' gossip scores, as pubsub last reported them
	// connected gets newly connected peers, to reconcile with.
	connected chan peer.ID
	// dbGate keeps callbacks that libp2p runs on its own goroutines (stream
	// handlers) off the database once Close closes it.
	dbGate     sync.RWMutex
	dbClosed   bool
	logs       *joblogs.Book
	logStreams *joblogs.Streams
	runner     *runner.Runner     // a provider's job runtime
	results    *results.Collector // the results of the node's own jobs
	jobLimits  runner.Limits      // a provider's, set before its runner starts
	metrics    *prometheus.Registry
	api        *http.Server
	apiAddr    string
	bootstrap  []peer.AddrInfo
	started    time.Time
	readyAt    time.Duration

	ready  atomic.Bool
	warm   <-chan struct{} // closed once the runner's precompile is done
	runCtx context.Context // ends when Close begins
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed sync.Once
	redial chan peer.ID
}

// Option adjusts how Start builds a node.
type Option func(*options)

type options struct {
	log *slog.Logger
}

// WithLogger sets the node's logger; the default discards logs.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Start builds and starts a node from cfg: it opens the database, starts the
// libp2p host, DHT and gossipsub, dials the bootstrap peers, and serves the
// API. The context bounds start-up only; the node runs until Close.
func Start(ctx context.Context, cfg Config, opts ...Option) (_ *Node, err error) {
	started := time.Now()
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bootstrap, err := parseBootstrap(cfg.Bootstrap)
	if err != nil {
		return nil, fmt.Errorf("config: bootstrap: %w", err)
	}
	priv, err := LoadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg:       cfg,
		log:       o.log,
		bootstrap: bootstrap,
		started:   started,
		metrics:   prometheus.NewRegistry(),
		priv:      priv,
		runCtx:    runCtx,
		cancel:    cancel,
		redial:    make(chan peer.ID, 16),
		connected: make(chan peer.ID, 16),
	}
	gpus, err := n.discoverGPUs(ctx)
	if err != nil {
		return nil, err
	}
	if n.capacity, err = capacity.New(capacity.Config{Priv: priv, Network: cfg.Network, GPUs: gpus,
		Slots: cfg.Provider.Slots, Executors: cfg.Provider.Executors, PriceInteractive: cfg.Provider.PriceInteractive,
		PriceBatch: cfg.Provider.PriceBatch, TTL: time.Duration(cfg.Provider.CapacityTTL), MemoryMiB: totalMemoryMiB(), Log: o.log,
	}); err != nil {
		return nil, err
	}
	var blocked []peer.ID
	for _, s := range cfg.BlockedPeers {
		p, _ := peer.Decode(s) // checked by Validate
		blocked = append(blocked, p)
	}
	n.gater = newGater(blocked)
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	n.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	n.limits = newPeerLimits(cfg.Limits, n.metrics)

	if n.disk, err = openDiskGuard(cfg, o.log); err != nil {
		return nil, err
	}
	n.db, err = storage.Open(filepath.Join(cfg.DataDir, dbDir), storage.Options{Network: cfg.Network, Logger: o.log, Room: n.dbRoom})
	if err != nil {
		return nil, err
	}

	if n.logs, err = joblogs.NewBook(joblogs.Config{Dir: filepath.Join(cfg.DataDir, logsDir), Store: dbLogStore{n}, Log: n.log}); err != nil {
		return nil, err
	}

	listen, err := parseListen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	hostOpts := []libp2p.Option{
		libp2p.Identity(priv),
		// The host listens only once every protocol handler is set (see
		// below): a peer that connects must find all of them.
		libp2p.NoListenAddrs,
		libp2p.UserAgent("mira/" + Version),
		libp2p.PrometheusRegisterer(n.metrics),
		libp2p.ConnectionGater(n.gater),
	}
	cm, err := connmgr.NewConnManager(cfg.ConnLow, cfg.ConnHigh, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return nil, fmt.Errorf("connection manager: %w", err)
	}
	hostOpts = append(hostOpts, libp2p.ConnectionManager(cm))
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()), rcmgr.WithMetricsDisabled())
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	hostOpts = append(hostOpts, libp2p.ResourceManager(rm))
	if cfg.Private {
		psk, err := LoadSwarmKey(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		// A pre-shared key works over TCP only (QUIC and friends refuse it).
		hostOpts = append(hostOpts, libp2p.PrivateNetwork(psk), libp2p.DefaultPrivateTransports)
	}
	n.host, err = libp2p.New(hostOpts...)
	if err != nil {
		return nil, fmt.Errorf("libp2p host: %w", err)
	}
	for _, b := range bootstrap {
		n.host.Peerstore().AddAddrs(b.ID, b.Addrs, time.Hour*24*365)
		cm.Protect(b.ID, "bootstrap")
	}

	n.pubsub, err = pubsub.NewGossipSub(runCtx, n.host,
		pubsub.WithFloodPublish(true),
		// Market messages carry their own signatures; a content-hash
		// message ID makes a replayed message a duplicate.
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithMessageIdFn(messageID),
		pubsub.WithPeerScore(gossip.ScoreParams(cfg.Network), gossip.ScoreThresholds),
		pubsub.WithPeerScoreInspect(pubsub.PeerScoreInspectFn(n.scores.Update), gossip.ScoreInspectPeriod),
	)
	if err != nil {
		return nil, fmt.Errorf("gossipsub: %w", err)
	}
	n.registerMetrics()
	if n.blobs, err = blobd.New(n.blobsConfig()); err != nil {
		return nil, err
	}
	n.results = results.New(runCtx, n.blobs.Transfer(), n.log)
	n.logStreams = joblogs.NewStreams(joblogs.StreamsConfig{Host: n.host, Network: cfg.Network, Book: n.logs, Log: n.log,
		HoldsLease: func(job protocol.JobID, attempt uint32, p peer.ID) bool {
			return n.market.IsLeaseHolder(job, attempt, p)
		},
		Refused: func(err error) { n.market.Refused(err) },
	})
	n.host.SetStreamHandler(libp2pproto.ID(protocol.LogsProtocol(cfg.Network)), n.limits.limitStreams("logs", n.logStreams.Handle))

	n.host.Network().Notify(&network.NotifyBundle{
		DisconnectedF: func(_ network.Network, c network.Conn) { n.onDisconnect(c.RemotePeer()) },
		ConnectedF: func(_ network.Network, c network.Conn) {
			select {
			case n.connected <- c.RemotePeer():
			default: // reconciled with a random peer soon anyway
			}
		},
	})
	if err := n.startLedger(runCtx); err != nil {
		return nil, err
	}
	n.host.SetStreamHandler(libp2pproto.ID(protocol.ReconcileProtocol(cfg.Network)), n.limits.limitStreams("sync", n.ledger.HandleSync))
	if n.IsProvider() {
		n.jobLimits = n.providerLimits()
		if n.runner, err = runner.New(runCtx, n.runnerConfig()); err != nil {
			return nil, err
		}
		n.warm = n.runner.Warm()
	} else {
		warm := make(chan struct{})
		close(warm)
		n.warm = warm
	}
	if err := n.startMarket(runCtx); err != nil {
		return nil, err
	}
	n.onDiskChange(n.disk.Check())
	// Nothing is signed until peers have shown the node its own head.
	n.ledger.StartHeadSync()
	// Every handler is set: only now may peers reach the node, and only
	// now does it dial them (a peer reconciles on connect at once). The
	// DHT dials its bootstrap peers as soon as it exists, so it comes
	// last.
	n.dht, err = dht.New(n.host,
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(libp2pproto.ID(protocol.Prefix(cfg.Network))),
		dht.BootstrapPeers(bootstrap...),
		dht.NamespacedValidator(protocol.CapacityNamespace, protocol.CapacityValidator{Network: cfg.Network}),
	)
	if err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	if err := n.host.Network().Listen(listen...); err != nil {
		return nil, fmt.Errorf("libp2p listen: %w", err)
	}
	n.dialBootstrap(ctx)
	if err := n.dht.Bootstrap(runCtx); err != nil {
		return nil, fmt.Errorf("dht bootstrap: %w", err)
	}
	n.capacity.Start(runCtx, n.dht)
	if err := n.serveAPI(); err != nil {
		return nil, err
	}
	n.blobs.Start(runCtx)
	n.ledger.StartReconciling(n.connected)
	n.wg.Add(3)
	go n.watchDisk(runCtx)
	go n.maintainBootstrap(runCtx)
	go n.measureLatency(runCtx)

	n.readyAt = time.Since(started)
	n.ready.Store(true)
	n.log.Info("node ready", "peer_id", n.host.ID(), "network", cfg.Network, "private", cfg.Private,
		"addrs", n.host.Addrs(), "api", n.apiAddr, "took", n.readyAt)
	return n, nil
}

// parseListen parses the configured listen multiaddrs.
func parseListen(addrs []string) ([]ma.Multiaddr, error) {
	out := make([]ma.Multiaddr, 0, len(addrs))
	for _, a := range addrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return nil, fmt.Errorf("config: listen: %q: %w", a, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// discoverGPUs detects the machine's GPUs (if configured to) and adds the
// declared ones.
func (n *Node) discoverGPUs(ctx context.Context) ([]gpu.Device, error) {
	declared, err := gpu.FromDeclared(n.cfg.GPUs)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if !n.cfg.DetectGPUs {
		return declared, nil
	}
	detected := gpu.Detect(ctx, gpu.Options{Log: n.log})
	return append(detected, declared...), nil
}

// Close stops the node: the API, the background loops, the libp2p host and
// the database, in that order. It is safe to call more than once.
func (n *Node) Close() error {
	var errs []error
	n.closed.Do(func() {
		n.ready.Store(false)
		if n.api != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			errs = append(errs, n.api.Shutdown(ctx))
			cancel()
			os.Remove(filepath.Join(n.cfg.DataDir, APIAddrFile))
			os.Remove(filepath.Join(n.cfg.DataDir, TokenFile))
		}
		n.cancel()
		if n.market != nil {
			n.market.Close() // its runs end before the runner closes
		}
		n.wg.Wait()
		if n.runner != nil {
			n.runner.Close()
		}
		if n.results != nil {
			n.results.Close()
		}
		if n.blobs != nil {
			n.blobs.Close() // its collector's last pass writes to the database
		}
		if n.capacity != nil {
			n.capacity.Close()
		}
		if n.ledger != nil {
			errs = append(errs, n.ledger.Close())
		}
		if n.dht != nil {
			errs = append(errs, n.dht.Close())
		}
		if n.host != nil {
			errs = append(errs, n.host.Close())
		}
		n.dbGate.Lock()
		n.dbClosed = true
		n.dbGate.Unlock()
		if n.db != nil {
			errs = append(errs, n.closeDB())
		}
		if n.logs != nil {
			n.logs.Close()
		}
	})
	return errors.Join(errs...)
}

// dbLogStore keeps small complete job logs in the node's database.
type dbLogStore struct{ n *Node }

func (s dbLogStore) PutJobLog(name string, log []byte) error {
	err := errDBClosed
	s.n.withDB(func() { err = s.n.db.PutJobLog(name, log) })
	return err
}

func (s dbLogStore) JobLog(name string) (log []byte, ok bool, err error) {
	err = errDBClosed
	s.n.withDB(func() { log, ok, err = s.n.db.JobLog(name) })
	return log, ok, err
}

// errDBClosed is the error of a database use after the node closed it.
var errDBClosed = errors.New("database closed")

// withDB runs f unless the node's database is closed (or closing), and
// reports whether it ran.
func (n *Node) withDB(f func()) bool {
	n.dbGate.RLock()
	defer n.dbGate.RUnlock()
	if n.dbClosed {
		return false
	}
	f()
	return true
}

// ID is the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Host is the node's libp2p host.
func (n *Node) Host() host.Host { return n.host }

// DHT is the node's Kademlia DHT.
func (n *Node) DHT() *dht.IpfsDHT { return n.dht }

// Config is the configuration the node runs with.
func (n *Node) Config() Config { return n.cfg }

// APIAddr is the host:port the API listens on.
func (n *Node) APIAddr() string { return n.apiAddr }

// Warm is closed once the node's start-up work in the background is done:
// a provider's sample wasm modules compiled. A node serves before that; a
// benchmark waits for it, so that it times the work it asked for.
func (n *Node) Warm() <-chan struct{} { return n.warm }

// StartupTime is how long Start took to make the node ready.
func (n *Node) StartupTime() time.Duration { return n.readyAt }

// ListenAddrs are the addresses the host listens on, with /p2p/ appended:
// what another node needs to bootstrap from this one.
func (n *Node) ListenAddrs() []string {
	addrs := n.host.Network().ListenAddresses()
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
			continue // relay addresses need a relay; peers dial us directly
		}
		out = append(out, a.String()+"/p2p/"+n.host.ID().String())
	}
	return out
}

// ConnectedPeers lists the peers with at least one open connection.
func (n *Node) ConnectedPeers() []peer.ID { return n.host.Network().Peers() }

// RoutingTableSize is the number of peers in the DHT routing table.
func (n *Node) RoutingTableSize() int { return n.dht.RoutingTable().Size() }

func (n *Node) registerMetrics() {
	n.metrics.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mira_peers_connected", Help: "Peers with an open connection."},
			func() float64 { return float64(len(n.host.Network().Peers())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mira_dht_routing_table_peers", Help: "Peers in the DHT routing table."},
			func() float64 { return float64(n.dht.RoutingTable().Size()) }),
	)
}

func (n *Node) serveAPI() error {
	ln, err := net.Listen("tcp", n.cfg.API)
	if err != nil {
		return fmt.Errorf("api: listen on %s: %w", n.cfg.API, err)
	}
	if host, _, _ := net.SplitHostPort(n.cfg.API); !isLoopback(host) {
		n.log.Warn("API listens beyond loopback; anyone who can reach it and holds the token controls this node", "addr", n.cfg.API)
	}
	token, err := api.NewToken()
	if err != nil {
		ln.Close()
		return err
	}
	n.apiAddr = ln.Addr().String()
	if err := writeFileAtomic(filepath.Join(n.cfg.DataDir, TokenFile), []byte(token+"\n"), 0o600); err != nil {
		ln.Close()
		return err
	}
	if err := writeFileAtomic(filepath.Join(n.cfg.DataDir, APIAddrFile), []byte(n.apiAddr+"\n"), 0o644); err != nil {
		ln.Close()
		return err
	}
	handler := api.NewServer(api.Config{Backend: apiBackend{n}, Token: token, Metrics: n.metrics, Log: n.log})
	n.api = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := n.api.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("api server stopped", "err", err)
		}
	}()
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// writeFileAtomic replaces path with data through a rename, so a reader
// never sees a half-written token.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}
