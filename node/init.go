package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// InitOptions configure Init.
type InitOptions struct {
	// Config is written as the node's config; its DataDir is where Init writes.
	Config Config
	// SwarmKey, if set, is written to swarm.key and makes the node private.
	SwarmKey []byte
	// Genesis, if set, is the network's genesis file's content, written to
	// genesis.json; it must be for the config's network.
	Genesis []byte
}

// ErrAlreadyInitialized is returned by Init when the data dir already holds
// a node.
var ErrAlreadyInitialized = errors.New("data dir already initialized")

// Init creates a node's data dir: an Ed25519 identity (mode 0600), the
// config, and for a private network the swarm key. It refuses, changing
// nothing, when any of those files already exists. It returns the new peer ID.
func Init(opt InitOptions) (peer.ID, error) {
	cfg := opt.Config
	dir := cfg.DataDir
	if opt.SwarmKey != nil {
		if _, err := ParseSwarmKey(opt.SwarmKey); err != nil {
			return "", err
		}
		cfg.Private = true
	}
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	if opt.Genesis != nil {
		g, err := ledger.ParseGenesis(opt.Genesis)
		if err != nil {
			return "", err
		}
		if g.Network != cfg.Network {
			return "", fmt.Errorf("genesis is for network %q, not %q", g.Network, cfg.Network)
		}
		if opt.SwarmKey != nil && g.SwarmKeyFingerprint != "" {
			psk, _ := ParseSwarmKey(opt.SwarmKey) // checked above
			if g.SwarmKeyFingerprint != SwarmKeyFingerprint(psk) {
				return "", errors.New("genesis is for another swarm key")
			}
		}
	}
	for _, name := range []string{IdentityFile, ConfigFile, SwarmKeyFile, GenesisFile} {
		path := filepath.Join(dir, name)
		if _, err := os.Lstat(path); err == nil {
			return "", fmt.Errorf("%w: %s exists; refusing to overwrite it (use another --data dir, or remove it yourself)", ErrAlreadyInitialized, path)
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("check %s: %w", path, err)
		}
	}
	priv, err := NewIdentity()
	if err != nil {
		return "", err
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("derive peer ID: %w", err)
	}
	keyBytes, err := crypto.MarshalPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("encode identity: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create data dir: %w", err)
	}
	if err := writeNew(filepath.Join(dir, IdentityFile), keyBytes, 0o600); err != nil {
		return "", err
	}
	if opt.SwarmKey != nil {
		if err := writeNew(filepath.Join(dir, SwarmKeyFile), opt.SwarmKey, 0o600); err != nil {
			return "", err
		}
	}
	if opt.Genesis != nil {
		if err := writeNew(filepath.Join(dir, GenesisFile), opt.Genesis, 0o644); err != nil {
			return "", err
		}
	}
	if err := cfg.Save(); err != nil {
		return "", err
	}
	return id, nil
}

// writeNew writes a file that must not exist yet, with mode perm.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}
