package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/multiformats/go-multistream"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/testnet"
)

const deadline = 30 * time.Second

func startTestnet(t *testing.T, n int, configure func(int, *node.Config)) *testnet.Testnet {
	t.Helper()
	tn, err := testnet.Start(context.Background(), testnet.Options{Nodes: n, Dir: t.TempDir(), Configure: configure, WasmCacheDir: testWasmCache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tn.Close(); err != nil {
			t.Errorf("close testnet: %v", err)
		}
	})
	return tn
}

func TestFiveNodeTestnetForms(t *testing.T) {
	tn := startTestnet(t, 5, testnet.WithProviders(2))
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	// Members that bootstrapped only to node 0 find each other through the DHT.
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		for i, n := range tn.Nodes() {
			if got := len(n.ConnectedPeers()); got < 4 {
				return fmt.Errorf("node %d sees %d peers, want 4", i, got)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Each finishes its start-up work (a provider compiles the samples).
	for i, n := range tn.Nodes() {
		select {
		case <-n.Warm():
		case <-time.After(deadline):
			t.Fatalf("node %d (provider: %v) not warm after %v", i, n.IsProvider(), deadline)
		}
	}
}

// startOutsider starts a node that bootstraps to the testnet's node 0 but
// holds the given swarm key (nil: a public node).
func startOutsider(t *testing.T, tn *testnet.Testnet, swarmKey []byte) *node.Node {
	t.Helper()
	cfg := testnet.DefaultConfig(t.TempDir(), "testnet")
	cfg.Bootstrap = tn.Node(0).ListenAddrs()
	if _, err := node.Init(node.InitOptions{Config: cfg, SwarmKey: swarmKey}); err != nil {
		t.Fatal(err)
	}
	cfg, err := node.LoadConfig(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestPrivateNetworkRefusesOutsiders(t *testing.T) {
	tn := startTestnet(t, 2, nil)
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	otherKey, err := node.NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  []byte
	}{
		{"different swarm key", otherKey},
		{"no swarm key", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := startOutsider(t, tn, tc.key)
			target, err := peer.AddrInfoFromString(tn.Node(0).ListenAddrs()[0])
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := out.Host().Connect(ctx, *target); err == nil {
				t.Fatal("outsider connected to the private network")
			}
			for i, n := range tn.Nodes() {
				if slices.Contains(n.ConnectedPeers(), out.ID()) {
					t.Fatalf("member %d is connected to the outsider", i)
				}
			}
			if len(out.ConnectedPeers()) != 0 {
				t.Fatalf("outsider has peers: %v", out.ConnectedPeers())
			}
		})
	}
}

func TestRestartKeepsIdentityAndRejoins(t *testing.T) {
	tn := startTestnet(t, 3, nil)
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}

	// A restarted member keeps its peer ID and rejoins.
	id2 := tn.Node(2).ID()
	if err := tn.Stop(2); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if got := tn.Node(2).ID(); got != id2 {
		t.Fatalf("peer ID changed across restart: %s -> %s", id2, got)
	}
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}

	// When the bootstrap peer (node 0) restarts, the others reconnect to it
	// by themselves.
	id0 := tn.Node(0).ID()
	if err := tn.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if slices.Contains(tn.Node(1).ConnectedPeers(), id0) {
			return errors.New("node 1 still connected to stopped node 0")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		for _, i := range []int{1, 2} {
			if !slices.Contains(tn.Node(i).ConnectedPeers(), id0) {
				return fmt.Errorf("node %d has not reconnected to node 0", i)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestAPI(t *testing.T) {
	tn := startTestnet(t, 3, nil)
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	n0 := tn.Node(0)
	client, err := api.NewClientFromDataDir(tn.Dir(0))
	if err != nil {
		t.Fatal(err)
	}

	// The token file is private to its owner.
	fi, err := os.Stat(filepath.Join(tn.Dir(0), node.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("api.token mode = %v, want 0600", fi.Mode().Perm())
	}

	info, err := client.Node(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.PeerID != n0.ID().String() || info.Network != "testnet" || info.Version == "" || len(info.Addrs) == 0 {
		t.Fatalf("GET /v1/node = %+v", info)
	}

	// /v1/peers on a 3-node net lists the other two.
	want := []string{tn.Node(1).ID().String(), tn.Node(2).ID().String()}
	slices.Sort(want)
	if err := testnet.WaitFor(ctx, deadline, func() error {
		peers, err := client.Peers(ctx)
		if err != nil {
			return err
		}
		var got []string
		for _, p := range peers {
			got = append(got, p.PeerID)
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("peers = %v, want %v", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	base := client.BaseURL
	for _, tc := range []struct {
		name, method, path, token, body string
		code                            int
		errContains                     string
	}{
		{"healthz needs no token", "GET", "/healthz", "", "", 200, ""},
		{"no token", "GET", "/v1/node", "", "", 401, "API token"},
		{"wrong token", "GET", "/v1/node", "nope", "", 401, "API token"},
		{"with token", "GET", "/v1/node", client.Token, "", 200, ""},
		{"metrics need the token", "GET", "/metrics", "", "", 401, "API token"},
		{"metrics", "GET", "/metrics", client.Token, "", 200, ""},
		{"unknown route", "GET", "/v1/nothing", client.Token, "", 404, "no route"},
		{"bad method", "DELETE", "/v1/node", client.Token, "", 405, "not allowed"},
		{"bad JSON", "POST", "/v1/peers", client.Token, "{not json", 400, "invalid JSON"},
		{"unknown field", "POST", "/v1/peers", client.Token, `{"adr":"x"}`, 400, "unknown field"},
		{"missing addr", "POST", "/v1/peers", client.Token, `{}`, 400, "addr"},
		{"bad multiaddr", "POST", "/v1/peers", client.Token, `{"addr":"/ip4/nope"}`, 502, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b := readAll(t, resp)
			if resp.StatusCode != tc.code {
				t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, tc.code, b)
			}
			if tc.code >= 400 {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Fatalf("error Content-Type = %q", ct)
				}
				if !strings.Contains(b, tc.errContains) {
					t.Fatalf("error body %s does not mention %q", b, tc.errContains)
				}
			}
		})
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRestartedNodeServesEveryProtocolAtOnce is finding 9 of the hardening
// review: a peer that opens a stream the moment a restarted node connects
// (as reconciliation on connect does) must find every mira protocol
// registered, not "protocols not supported".
func TestRestartedNodeServesEveryProtocolAtOnce(t *testing.T) {
	tn := startTestnet(t, 2, testnet.WithProviders(1))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	id1 := tn.Node(1).ID()
	if err := tn.Stop(1); err != nil {
		t.Fatal(err)
	}
	net := tn.Node(0).Config().Network
	protos := []libp2pproto.ID{
		libp2pproto.ID(protocol.Prefix(net) + "/reconcile/1"),
		libp2pproto.ID(protocol.MarketProtocol(net)),
		libp2pproto.ID(protocol.BlobProtocol(net)),
		libp2pproto.ID(protocol.LogsProtocol(net)),
	}
	h := tn.Node(0).Host()
	results := make(chan error, 4*len(protos))
	probe := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if c.RemotePeer() != id1 {
			return
		}
		for _, p := range protos {
			go func() { results <- negotiate(c, p) }()
		}
	}}
	h.Network().Notify(probe)
	defer h.Network().StopNotify(probe)
	if err := tn.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for range protos {
		select {
		case err := <-results:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(deadline):
			t.Fatal("no probe finished")
		}
	}
}

// negotiate opens a stream on the connection c and asks for proto on it:
// only the restarted node's answer on that very connection counts.
func negotiate(c network.Conn, proto libp2pproto.ID) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.NewStream(ctx)
	if err != nil {
		return nil // the connection went: nothing was refused
	}
	defer st.Reset()
	st.SetDeadline(time.Now().Add(10 * time.Second))
	if err := multistream.SelectProtoOrFail(proto, st); err != nil && strings.Contains(err.Error(), "not supported") {
		return fmt.Errorf("%s: %w", proto, err)
	}
	return nil
}
