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

	dht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blobd"
	"github.com/mira-market/mira/node/capacity"
	"github.com/mira-market/mira/node/disk"
	"github.com/mira-market/mira/node/gossip"
	"github.com/mira-market/mira/node/joblogs"
	"github.com/mira-market/mira/node/ledgerd"
	"github.com/mira-market/mira/node/marketd"
	"github.com/mira-market/mira/node/results"
	"github.com/mira-market/mira/node/runner"
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
	// closers close what Start built, in the order built; Close runs
	// them in reverse.
	closers []func() error
	redial  chan peer.ID
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

// startAPI serves the local HTTP API; Close shuts it down first.
func (n *Node) startAPI(context.Context) error {
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
