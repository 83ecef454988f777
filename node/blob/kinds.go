package blob

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Kind says why a node keeps a blob, and so whether and when the collector
// may remove it. A blob can be of several kinds at once (the same bytes
// uploaded by the operator and fetched as a requester's input); it stays
// as long as one of them keeps it.
type Kind uint8

const (
	// Cached is a module or input fetched from a requester to run its
	// job: evictable, least recently used first.
	Cached Kind = 1 << iota
	// Held is a result or outputs archive a provider keeps for the
	// requester of its job to fetch: kept for the store's retention
	// period after it was stored, then evictable like Cached.
	Held
	// Own is a result this node fetched (or received inline) as the
	// requester of its job: its operator's data, pinned.
	Own
	// Operator is a blob put through the API: pinned until deleted.
	Operator
)

// Kinds are the kinds, from the one that keeps a blob longest.
var Kinds = []Kind{Operator, Own, Held, Cached}

func (k Kind) String() string {
	var names []string
	for _, c := range Kinds {
		if k&c == 0 {
			continue
		}
		switch c {
		case Operator:
			names = append(names, "operator")
		case Own:
			names = append(names, "own")
		case Held:
			names = append(names, "held")
		case Cached:
			names = append(names, "cached")
		}
	}
	if len(names) == 0 {
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
	return strings.Join(names, "+")
}

// maxHolders bounds the requesters remembered per blob as having delivered
// its bytes; beyond it the oldest is forgotten (and proves it again by
// sending the bytes, should it name the blob again).
const maxHolders = 64

// touchPersist is how stale a blob's stored last-use time may grow before
// a use writes it: the in-memory order is exact; after a restart the
// least-recently-used order is right to this precision.
const touchPersist = time.Minute

// entry is what the store knows of a blob it holds.
type entry struct {
	kinds     Kind
	size      int64
	used      time.Time // last put, staged or served
	heldUntil time.Time // for Held: kept at least until then
	// holders are the requesters that delivered the blob's bytes to this
	// node (checked against its ID): they may use it as their jobs' input
	// without sending it again.
	holders []peer.ID
	// waiting are the requesters a Held blob is kept for that have not
	// fetched it yet: once none is left its retention ends.
	waiting []peer.ID
	// usedStored is the last-use time the index holds.
	usedStored time.Time
}

// class is the kind that decides the blob's fate at now: a pinned kind,
// else Held while its retention lasts, else Cached (evictable).
func (e *entry) class(now time.Time) Kind {
	switch {
	case e.kinds&Operator != 0:
		return Operator
	case e.kinds&Own != 0:
		return Own
	case e.kinds&Held != 0 && now.Before(e.heldUntil):
		return Held
	}
	return Cached
}

func (e *entry) heldBy(p peer.ID) bool { return slices.Contains(e.holders, p) }

// addWaiting records that a Held blob is kept for p until p fetches it.
func (e *entry) addWaiting(p peer.ID) bool {
	if slices.Contains(e.waiting, p) {
		return false
	}
	if len(e.waiting) >= maxHolders {
		e.waiting = slices.Delete(e.waiting, 0, len(e.waiting)-maxHolders+1)
	}
	e.waiting = append(e.waiting, p)
	return true
}

func (e *entry) addHolder(p peer.ID) bool {
	if e.heldBy(p) {
		return false
	}
	if len(e.holders) >= maxHolders {
		e.holders = slices.Delete(e.holders, 0, len(e.holders)-maxHolders+1)
	}
	e.holders = append(e.holders, p)
	return true
}

// record is an entry as the index stores it.
type record struct {
	Kinds     Kind  `json:"kinds"`
	Size      int64 `json:"size"`
	Used      int64 `json:"used_ms"`
	HeldUntil int64 `json:"held_until_ms,omitempty"`
	// Holders are peer IDs' bytes, kept as they are: a record must read
	// back whatever the store was given.
	Holders [][]byte `json:"holders,omitempty"`
	Waiting [][]byte `json:"waiting,omitempty"`
}

func (e *entry) encode() []byte {
	r := record{Kinds: e.kinds, Size: e.size, Used: e.used.UnixMilli()}
	for _, p := range e.holders {
		r.Holders = append(r.Holders, []byte(p))
	}
	for _, p := range e.waiting {
		r.Waiting = append(r.Waiting, []byte(p))
	}
	if !e.heldUntil.IsZero() {
		r.HeldUntil = e.heldUntil.UnixMilli()
	}
	b, _ := json.Marshal(r) // plain fields: cannot fail
	return b
}

func decodeEntry(b []byte) (*entry, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if r.Kinds == 0 || r.Kinds&^(Cached|Held|Own|Operator) != 0 {
		return nil, fmt.Errorf("unknown kinds %d", r.Kinds)
	}
	e := &entry{kinds: r.Kinds, size: r.Size, used: time.UnixMilli(r.Used)}
	for _, p := range r.Holders {
		e.holders = append(e.holders, peer.ID(p))
	}
	for _, p := range r.Waiting {
		e.waiting = append(e.waiting, peer.ID(p))
	}
	if r.HeldUntil != 0 {
		e.heldUntil = time.UnixMilli(r.HeldUntil)
	}
	e.usedStored = e.used
	return e, nil
}

// Index keeps the store's records (why each blob is kept, who delivered
// it) across restarts; the node keeps them in its database.
type Index interface {
	PutBlobRecord(name string, rec []byte) error
	DeleteBlobRecord(name string) error
	BlobRecords(fn func(name string, rec []byte) error) error
}
