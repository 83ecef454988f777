package node

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/pnet"
)

// NewIdentity makes a fresh Ed25519 node identity.
func NewIdentity() (crypto.PrivKey, error) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return priv, nil
}

// LoadIdentity reads the node key from dataDir. It refuses a key file that
// others can read, as ssh does.
func LoadIdentity(dataDir string) (crypto.PrivKey, error) {
	path := filepath.Join(dataDir, IdentityFile)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity: %s has mode %v; it must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	priv, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("identity: decode %s: %w", path, err)
	}
	return priv, nil
}

// NewSwarmKey makes a random 32-byte pre-shared key in the IPFS swarm key
// format (/key/swarm/psk/1.0.0/, /base16/, hex).
func NewSwarmKey() ([]byte, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generate swarm key: %w", err)
	}
	return []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(k) + "\n"), nil
}

// ParseSwarmKey decodes a swarm key file's contents.
func ParseSwarmKey(b []byte) (pnet.PSK, error) {
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("swarm key: %w", err)
	}
	return psk, nil
}

// LoadSwarmKey reads and decodes dataDir/swarm.key.
func LoadSwarmKey(dataDir string) (pnet.PSK, error) {
	path := filepath.Join(dataDir, SwarmKeyFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("swarm key: %w", err)
	}
	psk, err := ParseSwarmKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return psk, nil
}

// SwarmKeyFingerprint is a short, non-secret name for a swarm key, safe to
// print and to compare between members of a network.
func SwarmKeyFingerprint(psk pnet.PSK) string {
	sum := sha256.Sum256(append([]byte("mira swarm key fingerprint\x00"), psk...))
	return hex.EncodeToString(sum[:8])
}
