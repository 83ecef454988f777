package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node"
)

func newInitCmd(g *globals) *cobra.Command {
	var (
		network     string
		swarmKey    string
		newSwarmKey bool
		genesis     string
		api         string
		listen      []string
		bootstrap   []string
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a node's data dir: identity, config and (for a private network) swarm key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if swarmKey != "" && newSwarmKey {
				return errors.New("use either --swarm-key FILE or --new-swarm-key, not both")
			}
			cfg := node.DefaultConfig(g.dataDir)
			var key []byte
			switch {
			case swarmKey != "":
				b, err := os.ReadFile(swarmKey)
				if err != nil {
					return fmt.Errorf("--swarm-key: %w", err)
				}
				key = b
			case newSwarmKey:
				b, err := node.NewSwarmKey()
				if err != nil {
					return err
				}
				key = b
			}
			if key != nil {
				cfg = node.DefaultConfigPrivate(g.dataDir)
			}
			if network != "" {
				cfg.Network = network
			}
			if api != "" {
				cfg.API = api
			}
			if len(listen) > 0 {
				cfg.Listen = listen
			}
			cfg.Bootstrap = bootstrap
			var gen []byte
			if genesis != "" {
				var err error
				if gen, err = os.ReadFile(genesis); err != nil {
					return fmt.Errorf("--genesis: %w", err)
				}
			}
			id, err := node.Init(node.InitOptions{Config: cfg, SwarmKey: key, Genesis: gen})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "initialized %s\n  peer id:  %s\n  network:  %s\n", g.dataDir, id, cfg.Network)
			if key != nil {
				psk, _ := node.ParseSwarmKey(key)
				fmt.Fprintf(out, "  private:  swarm key %s (fingerprint %s); give this file to every member\n",
					g.dataDir+"/"+node.SwarmKeyFile, node.SwarmKeyFingerprint(psk))
			}
			fmt.Fprintf(out, "start it with: mira node --data %s\n", g.dataDir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&network, "network", "", "network name (default \"main\")")
	f.StringVar(&swarmKey, "swarm-key", "", "join the private network of this swarm key file")
	f.BoolVar(&newSwarmKey, "new-swarm-key", false, "start a new private network with a fresh swarm key")
	f.StringVar(&genesis, "genesis", "", "the network's genesis file (initial credits); without one the node starts with none")
	f.StringVar(&api, "api", "", "API listen address (default 127.0.0.1:7410)")
	f.StringSliceVar(&listen, "listen", nil, "libp2p listen multiaddrs")
	f.StringSliceVar(&bootstrap, "bootstrap", nil, "bootstrap peer multiaddrs (ending in /p2p/<peer id>)")
	return cmd
}
