package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mira-market/mira/node/blobd"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/node/joblogs"
	"github.com/mira-market/mira/node/results"
	"github.com/mira-market/mira/node/runner"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/storage"
)

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
//
// Each step builds one part from the parts before it and registers how to
// close it; Close closes them in reverse. The host listens only after every
// protocol handler is set (see startRouting).
func Start(ctx context.Context, cfg Config, opts ...Option) (_ *Node, err error) {
	n, err := newNode(ctx, cfg, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	for _, step := range []func(context.Context) error{
		n.openStorage,  // disk guard, Badger, job logs
		n.buildHost,    // libp2p host (not listening yet) and gossipsub
		n.startBlobs,   // blob store, results, job log streams
		n.startLedger,  // ledger service and its sync handler
		n.startRunner,  // a provider's job runtime
		n.startMarket,  // market driver
		n.startRouting, // head sync, DHT, listen, bootstrap, capacity
		n.startLoops,   // blob collection, reconciliation, disk, peers
		n.startAPI,
	} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	n.readyAt = time.Since(n.started)
	n.ready.Store(true)
	n.log.Info("node ready", "peer_id", n.host.ID(), "network", cfg.Network, "private", cfg.Private,
		"addrs", n.host.Addrs(), "api", n.apiAddr, "took", n.readyAt)
	return n, nil
}

// newNode checks cfg and builds what needs no I/O beyond the identity and
// GPU discovery: the node's key, metrics, gater and capacity record.
func newNode(ctx context.Context, cfg Config, opts []Option) (*Node, error) {
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
		cfg: cfg, log: o.log, clock: clock.System, bootstrap: bootstrap, started: time.Now(), metrics: prometheus.NewRegistry(),
		priv: priv, runCtx: runCtx, cancel: cancel,
		redial: make(chan peer.ID, 16), connected: make(chan peer.ID, 16),
	}
	gpus, err := n.discoverGPUs(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if n.capacity, err = capacity.New(capacity.Config{Priv: priv, Network: cfg.Network, GPUs: gpus,
		Slots: cfg.Provider.Slots, Executors: cfg.Provider.Executors, PriceInteractive: cfg.Provider.PriceInteractive,
		PriceBatch: cfg.Provider.PriceBatch, TTL: time.Duration(cfg.Provider.CapacityTTL), MemoryMiB: totalMemoryMiB(), Clock: n.clock, Log: o.log,
	}); err != nil {
		cancel()
		return nil, err
	}
	var blocked []peer.ID
	for _, s := range cfg.BlockedPeers {
		p, _ := peer.Decode(s) // checked by Validate
		blocked = append(blocked, p)
	}
	n.gater = newGater(blocked)
	n.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	n.limits = newPeerLimits(cfg.Limits, n.metrics)
	return n, nil
}

// onClose registers how to close a part just built; Close runs these in
// reverse.
func (n *Node) onClose(f func() error) { n.closers = append(n.closers, f) }

// openStorage checks the disk, opens Badger and the job log book.
func (n *Node) openStorage(context.Context) (err error) {
	if n.disk, err = openDiskGuard(n.cfg, n.log); err != nil {
		return err
	}
	n.db, err = storage.Open(filepath.Join(n.cfg.DataDir, dbDir), storage.Options{Network: n.cfg.Network, Logger: n.log, Room: n.dbRoom})
	if err != nil {
		return err
	}
	n.onClose(func() error {
		// Callbacks libp2p runs on its own goroutines pass this gate.
		n.dbGate.Lock()
		n.dbClosed = true
		n.dbGate.Unlock()
		return n.closeDB()
	})
	n.logs, err = joblogs.NewBook(joblogs.Config{Dir: filepath.Join(n.cfg.DataDir, logsDir), Store: dbLogStore{n}, Clock: n.clock, Log: n.log})
	if err != nil {
		return err
	}
	n.onClose(func() error { n.logs.Close(); return nil })
	return nil
}

// buildHost builds the libp2p host, without listen addresses (the host
// listens once every protocol handler is set, so that a peer that connects
// finds all of them), and gossipsub on it.
func (n *Node) buildHost(context.Context) error {
	cm, err := connmgr.NewConnManager(n.cfg.ConnLow, n.cfg.ConnHigh, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return fmt.Errorf("connection manager: %w", err)
	}
	opts, err := n.hostOptions(cm)
	if err != nil {
		return err
	}
	if n.host, err = libp2p.New(opts...); err != nil {
		return fmt.Errorf("libp2p host: %w", err)
	}
	n.onClose(n.host.Close)
	for _, b := range n.bootstrap {
		n.host.Peerstore().AddAddrs(b.ID, b.Addrs, time.Hour*24*365)
		cm.Protect(b.ID, "bootstrap")
	}
	n.host.Network().Notify(&network.NotifyBundle{
		DisconnectedF: func(_ network.Network, c network.Conn) { n.onDisconnect(c.RemotePeer()) },
		ConnectedF: func(_ network.Network, c network.Conn) {
			select {
			case n.connected <- c.RemotePeer():
			default: // reconciled with a random peer soon anyway
			}
		},
	})
	n.pubsub, err = pubsub.NewGossipSub(n.runCtx, n.host,
		pubsub.WithFloodPublish(true),
		// Market messages carry their own signatures; a content-hash
		// message ID makes a replayed message a duplicate.
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithMessageIdFn(messageID),
		pubsub.WithPeerScore(gossip.ScoreParams(n.cfg.Network), gossip.ScoreThresholds),
		pubsub.WithPeerScoreInspect(pubsub.PeerScoreInspectFn(n.scores.Update), gossip.ScoreInspectPeriod),
	)
	if err != nil {
		return fmt.Errorf("gossipsub: %w", err)
	}
	n.registerMetrics()
	return nil
}

// hostOptions are the libp2p options of the node's host.
func (n *Node) hostOptions(cm *connmgr.BasicConnMgr) ([]libp2p.Option, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()), rcmgr.WithMetricsDisabled())
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(n.priv),
		libp2p.NoListenAddrs,
		libp2p.UserAgent("mira/" + Version),
		libp2p.PrometheusRegisterer(n.metrics),
		libp2p.ConnectionGater(n.gater),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
	}
	if n.cfg.Private {
		psk, err := LoadSwarmKey(n.cfg.DataDir)
		if err != nil {
			return nil, err
		}
		// A pre-shared key works over TCP only (QUIC and friends refuse it).
		opts = append(opts, libp2p.PrivateNetwork(psk), libp2p.DefaultPrivateTransports)
	}
	return opts, nil
}

// startBlobs opens the blob store, the collector of the node's own jobs'
// results and the job log streams.
func (n *Node) startBlobs(context.Context) (err error) {
	if n.blobs, err = blobd.New(n.blobsConfig()); err != nil {
		return err
	}
	n.onClose(func() error { n.blobs.Close(); return nil }) // its last pass writes to the database
	n.results = results.New(n.runCtx, n.blobs.Transfer(), n.log)
	n.onClose(func() error { n.results.Close(); return nil })
	n.logStreams = joblogs.NewStreams(joblogs.StreamsConfig{Host: n.host, Network: n.cfg.Network, Book: n.logs, Clock: n.clock, Log: n.log,
		HoldsLease: func(job protocol.JobID, attempt uint32, p peer.ID) bool {
			return n.market.IsLeaseHolder(job, attempt, p)
		},
		Refused: func(err error) { n.market.Refused(err) },
	})
	n.host.SetStreamHandler(libp2pproto.ID(protocol.LogsProtocol(n.cfg.Network)), n.limits.limitStreams("logs", n.logStreams.Handle))
	return nil
}

// startRunner starts a provider's job runtime; a node that only buys is
// warm at once.
func (n *Node) startRunner(context.Context) (err error) {
	if !n.IsProvider() {
		warm := make(chan struct{})
		close(warm)
		n.warm = warm
		return nil
	}
	n.jobLimits = n.providerLimits()
	if n.runner, err = runner.New(n.runCtx, n.runnerConfig()); err != nil {
		return err
	}
	n.onClose(func() error { n.runner.Close(); return nil })
	n.warm = n.runner.Warm()
	return nil
}

// startRouting makes the node reachable, now that every handler is set:
// only now may peers reach it, and only now does it dial them (a peer
// reconciles on connect at once). The DHT dials its bootstrap peers as
// soon as it exists, so it comes last of the parts.
func (n *Node) startRouting(ctx context.Context) (err error) {
	n.onDiskChange(n.disk.Check())
	// Nothing is signed until peers have shown the node its own head.
	n.ledger.StartHeadSync()
	listen, err := parseListen(n.cfg.Listen)
	if err != nil {
		return err
	}
	n.dht, err = dht.New(n.host,
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(libp2pproto.ID(protocol.Prefix(n.cfg.Network))),
		dht.BootstrapPeers(n.bootstrap...),
		dht.NamespacedValidator(protocol.CapacityNamespace, protocol.CapacityValidator{Network: n.cfg.Network}),
	)
	if err != nil {
		return fmt.Errorf("dht: %w", err)
	}
	n.onClose(n.dht.Close)
	if err := n.host.Network().Listen(listen...); err != nil {
		return fmt.Errorf("libp2p listen: %w", err)
	}
	n.dialBootstrap(ctx)
	if err := n.dht.Bootstrap(n.runCtx); err != nil {
		return fmt.Errorf("dht bootstrap: %w", err)
	}
	n.capacity.Start(n.runCtx, n.dht)
	n.onClose(func() error { n.capacity.Close(); return nil })
	return nil
}

// startLoops starts the node's background loops, which end with runCtx.
func (n *Node) startLoops(context.Context) error {
	n.blobs.Start(n.runCtx)
	n.ledger.StartReconciling(n.connected)
	n.wg.Add(3)
	go n.watchDisk(n.runCtx)
	go n.maintainBootstrap(n.runCtx)
	go n.measureLatency(n.runCtx)
	n.onClose(func() error { n.wg.Wait(); return nil })
	return nil
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

// Close stops the node: the API first (no new requests), then the run
// context (every loop and service sees the node stopping), then the parts
// Start built, in reverse order. It is safe to call more than once.
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
		for i := len(n.closers) - 1; i >= 0; i-- {
			errs = append(errs, n.closers[i]())
		}
	})
	return errors.Join(errs...)
}
