package protocol

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"github.com/mira-market/mira/protocol/pb"
)

// Capacity record limits and names.
const (
	// CapacityVersion is the version of the capacity record this code writes
	// and accepts.
	CapacityVersion = 1
	// MaxCapacitySize bounds a signed capacity record.
	MaxCapacitySize = 8 << 10
	// MaxCapacityTTL bounds how far in the future a record may expire, so
	// a provider cannot pin a stale record for days.
	MaxCapacityTTL = 24 * time.Hour
	// CapacityNamespace is the DHT namespace of capacity records.
	CapacityNamespace = "miracap"

	capacityDomain = "mira-capacity"
	maxGPUEntries  = 64
	maxExecutors   = 16
	maxNameLen     = 64
)

var capacityCodec = []byte("/mira/capacity/1")

// Tiers of service a job can ask for.
const (
	TierInteractive = "interactive"
	TierBatch       = "batch"
)

// GPU is one entry of a capacity record: Count GPUs of one model.
type GPU struct {
	Model    string
	VRAMMiB  int
	Count    int
	UUID     string
	Detected bool
}

// Capacity is a provider's announcement of what it can run and for how much.
type Capacity struct {
	Provider  peer.ID
	Network   string
	GPUs      []GPU
	CPUCores  int
	MemoryMiB int64
	FreeSlots int
	Executors []string
	// Prices in micro-credits per GPU-second, by tier.
	PriceInteractive uint64
	PriceBatch       uint64
	Seq              uint64
	Expires          time.Time
}

// CapacityKey is the DHT key under which a provider's record is stored.
func CapacityKey(p peer.ID) string {
	return "/" + CapacityNamespace + "/" + string(p)
}

// CapacityKeyPeer returns the peer a DHT key names.
func CapacityKeyPeer(key string) (peer.ID, error) {
	rest, ok := strings.CutPrefix(key, "/"+CapacityNamespace+"/")
	if !ok {
		return "", fmt.Errorf("%w: key %q is not in namespace %s", ErrBadMessage, key, CapacityNamespace)
	}
	p, err := peer.IDFromBytes([]byte(rest))
	if err != nil {
		return "", fmt.Errorf("%w: key names no peer: %v", ErrBadMessage, err)
	}
	return p, nil
}

// ContentKeyCID is the DHT content ID under which providers of a kind of
// capacity are listed, for keys like "gpu/nvidia-h100", "gpu/any" and
// "tier/batch". It is namespaced by network.
func ContentKeyCID(network, key string) cid.Cid {
	sum, err := mh.Sum([]byte(Prefix(network)+"/"+key), mh.SHA2_256, -1)
	if err != nil {
		panic(err) // SHA2-256 is always available
	}
	return cid.NewCidV1(cid.Raw, sum)
}

// ContentKeys are the provider-record keys a capacity record is listed under.
func (c *Capacity) ContentKeys() []string {
	keys := []string{"gpu/any", "tier/" + TierInteractive, "tier/" + TierBatch}
	for _, g := range c.GPUs {
		k := "gpu/" + g.Model
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// SignCapacity signs c with the provider's key. c.Provider must be the
// key's peer ID.
func SignCapacity(key crypto.PrivKey, c *Capacity) ([]byte, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if id != c.Provider {
		return nil, fmt.Errorf("%w: record names %s, key is %s", ErrSigner, c.Provider, id)
	}
	msg := &pb.Capacity{
		Version:          CapacityVersion,
		Provider:         []byte(c.Provider),
		Network:          c.Network,
		CpuCores:         uint32(c.CPUCores),
		MemoryMib:        uint64(c.MemoryMiB),
		FreeSlots:        uint32(c.FreeSlots),
		Executors:        c.Executors,
		PriceInteractive: c.PriceInteractive,
		PriceBatch:       c.PriceBatch,
		Seq:              c.Seq,
		ExpiresUnixMs:    c.Expires.UnixMilli(),
	}
	for _, g := range c.GPUs {
		msg.Gpus = append(msg.Gpus, &pb.GPU{Model: g.Model, VramMib: uint32(g.VRAMMiB), Count: uint32(g.Count), Uuid: g.UUID, Detected: g.Detected})
	}
	if err := checkCapacity(msg); err != nil {
		return nil, err
	}
	b, err := seal(key, capacityDomain, capacityCodec, msg)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxCapacitySize {
		return nil, fmt.Errorf("%w: capacity record is %d bytes, limit %d", ErrTooLarge, len(b), MaxCapacitySize)
	}
	return b, nil
}

// OpenCapacity verifies a signed capacity record (size, signature, signer is
// the provider it names, well-formed fields, version) and decodes it. It does
// not check expiry: see CapacityValidator.
func OpenCapacity(data []byte) (*Capacity, error) {
	msg := &pb.Capacity{}
	signer, err := open(data, MaxCapacitySize, capacityDomain, capacityCodec, msg)
	if err != nil {
		return nil, fmt.Errorf("capacity: %w", err)
	}
	if err := checkCapacity(msg); err != nil {
		return nil, fmt.Errorf("capacity: %w", err)
	}
	provider, err := peer.IDFromBytes(msg.Provider)
	if err != nil {
		return nil, fmt.Errorf("capacity: %w: provider: %v", ErrBadMessage, err)
	}
	if provider != signer {
		return nil, fmt.Errorf("capacity: %w: names %s, signed by %s", ErrSigner, provider, signer)
	}
	c := &Capacity{
		Provider:         provider,
		Network:          msg.Network,
		CPUCores:         int(msg.CpuCores),
		MemoryMiB:        int64(msg.MemoryMib),
		FreeSlots:        int(msg.FreeSlots),
		Executors:        msg.Executors,
		PriceInteractive: msg.PriceInteractive,
		PriceBatch:       msg.PriceBatch,
		Seq:              msg.Seq,
		Expires:          time.UnixMilli(msg.ExpiresUnixMs),
	}
	for _, g := range msg.Gpus {
		c.GPUs = append(c.GPUs, GPU{Model: g.Model, VRAMMiB: int(g.VramMib), Count: int(g.Count), UUID: g.Uuid, Detected: g.Detected})
	}
	return c, nil
}

// checkCapacity checks the fields a well-formed record must have.
func checkCapacity(m *pb.Capacity) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, a...))
	}
	switch {
	case m.Version != CapacityVersion:
		return bad("version %d, want %d", m.Version, CapacityVersion)
	case ValidateNetworkName(m.Network) != nil:
		return bad("network %q", m.Network)
	case len(m.Gpus) > maxGPUEntries:
		return bad("%d GPU entries, limit %d", len(m.Gpus), maxGPUEntries)
	case len(m.Executors) > maxExecutors:
		return bad("%d executors, limit %d", len(m.Executors), maxExecutors)
	case m.ExpiresUnixMs <= 0:
		return bad("no expiry")
	}
	for _, g := range m.Gpus {
		if g.Model == "" || len(g.Model) > maxNameLen || g.Count == 0 || len(g.Uuid) > 128 {
			return bad("GPU entry %q count %d", g.Model, g.Count)
		}
	}
	for _, e := range m.Executors {
		if e == "" || len(e) > maxNameLen {
			return bad("executor name %q", e)
		}
	}
	return nil
}

// CapacityValidator is the DHT validator of the capacity namespace. A record
// is valid when it opens (see OpenCapacity), is stored under its own
// provider's key, belongs to the network, and has not expired; of several, the
// highest seq wins, so a PUT of an older record is refused.
type CapacityValidator struct {
	Network string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Validate implements the go-libp2p-record Validator interface.
func (v CapacityValidator) Validate(key string, value []byte) error {
	_, err := v.open(key, value)
	return err
}

func (v CapacityValidator) open(key string, value []byte) (*Capacity, error) {
	p, err := CapacityKeyPeer(key)
	if err != nil {
		return nil, err
	}
	c, err := OpenCapacity(value)
	if err != nil {
		return nil, err
	}
	if c.Provider != p {
		return nil, fmt.Errorf("capacity: %w: stored under %s's key, names %s", ErrSigner, p, c.Provider)
	}
	if c.Network != v.Network {
		return nil, fmt.Errorf("capacity: %w: network %q, want %q", ErrBadMessage, c.Network, v.Network)
	}
	now := v.now()
	if !c.Expires.After(now) {
		return nil, fmt.Errorf("capacity: %w at %v", ErrExpired, c.Expires.UTC())
	}
	if c.Expires.Sub(now) > MaxCapacityTTL {
		return nil, fmt.Errorf("capacity: %w: expires %v, more than %v ahead", ErrBadMessage, c.Expires.UTC(), MaxCapacityTTL)
	}
	return c, nil
}

// Select implements the go-libp2p-record Validator interface: the valid
// record with the highest seq, ties broken by later expiry, then by bytes.
func (v CapacityValidator) Select(key string, values [][]byte) (int, error) {
	best, bestRec := -1, (*Capacity)(nil)
	for i, val := range values {
		c, err := v.open(key, val)
		if err != nil {
			continue
		}
		if best < 0 || cmp.Or(
			cmp.Compare(c.Seq, bestRec.Seq),
			c.Expires.Compare(bestRec.Expires),
			bytes.Compare(val, values[best]),
		) > 0 {
			best, bestRec = i, c
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("capacity: no valid record among %d", len(values))
	}
	return best, nil
}

func (v CapacityValidator) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}
