package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/protocol"
)

// blobCollectInterval is how often the blob store's collector runs
// besides when a write needs room: it removes abandoned partial
// downloads, evicts down to the budget and stores last-use times.
const blobCollectInterval = 5 * time.Minute

// openBlobStore opens the data dir's blob store, its records kept in the
// node's database.
func (n *Node) openBlobStore(dir string) (*blob.Store, error) {
	return blob.NewStore(dir, blob.Options{
		MaxSize: n.cfg.MaxBlobSize,
		Budget:  n.cfg.BlobCacheMiB << 20,
		HeldFor: time.Duration(n.cfg.BlobResultRetention),
		Index:   blobIndex{n},
		Log:     n.log,
	})
}

// blobIndex keeps the blob store's records in the node's database; a
// write after Close (a stream handler still serving) fails instead of
// touching a closed Badger.
type blobIndex struct{ n *Node }

func (x blobIndex) PutBlobRecord(name string, rec []byte) error {
	err := errDBClosed
	x.n.withDB(func() { err = x.n.db.PutBlobRecord(name, rec) })
	return err
}

func (x blobIndex) DeleteBlobRecord(name string) error {
	err := errDBClosed
	x.n.withDB(func() { err = x.n.db.DeleteBlobRecord(name) })
	return err
}

func (x blobIndex) BlobRecords(fn func(name string, rec []byte) error) error {
	err := errDBClosed
	x.n.withDB(func() { err = x.n.db.BlobRecords(fn) })
	return err
}

// collectBlobs runs the blob store's collector every blobCollectInterval,
// and once more as the node stops, so that last-use times survive.
func (n *Node) collectBlobs(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(blobCollectInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			n.blobs.Store().Collect()
		case <-ctx.Done():
			n.blobs.Store().Collect()
			return
		}
	}
}

// mayReadResult reports whether p is the requester of a job whose result
// or outputs this provider stored as blob id.
func (n *Node) mayReadResult(id cid.Cid, p peer.ID) bool {
	allowed := false
	n.withDB(func() {
		var err error
		if allowed, err = n.db.MayReadResult(id.String(), []byte(p)); err != nil {
			n.log.Warn("blob reader", "blob", id, "err", err)
		}
	})
	return allowed
}

// DeleteBlob is the operator's removal of a blob: it unpins it and removes
// it unless a requester's job still needs it, which keeps it (evictable)
// until its retention ends.
func (n *Node) DeleteBlob(id string) (api.BlobDeleted, error) {
	c, _, err := protocol.ParseBlobID(id)
	if err != nil {
		return api.BlobDeleted{}, fmt.Errorf("id: %w", err) // 400
	}
	removed, err := n.blobs.Store().Delete(c)
	if errors.Is(err, blob.ErrNotFound) {
		return api.BlobDeleted{}, fmt.Errorf("%w: %w", api.ErrNotFound, err)
	}
	if err != nil {
		return api.BlobDeleted{}, err
	}
	return api.BlobDeleted{ID: c.String(), Removed: removed}, nil
}

// BlobStats are the blob store's usage and its transfers' counts.
type BlobStats struct {
	blob.Usage
	Fetched, Served, Rejected, Proved, Unproven uint64
}

// BlobStats returns what the blob store holds and what it has done.
func (n *Node) BlobStats() BlobStats {
	s := &n.blobs.Stats
	return BlobStats{Usage: n.blobs.Store().Usage(), Fetched: s.Fetched.Load(), Served: s.Served.Load(),
		Rejected: s.Rejected.Load(), Proved: s.Proved.Load(), Unproven: s.Unproven.Load()}
}

// blobMetric is one of the blob store's single-value metrics.
type blobMetric struct {
	desc  *prometheus.Desc
	value prometheus.ValueType
	get   func(BlobStats) uint64
}

// blobCollector exports the blob store's usage by kind and its
// collector's and transfers' counts, read when scraped.
type blobCollector struct {
	n            *Node
	bytes, count *prometheus.Desc
	metrics      []blobMetric
}

func newBlobCollector(n *Node) *blobCollector {
	counter := func(name, help string, get func(BlobStats) uint64) blobMetric {
		return blobMetric{prometheus.NewDesc(name, help, nil, nil), prometheus.CounterValue, get}
	}
	return &blobCollector{
		n:     n,
		bytes: prometheus.NewDesc("mira_blob_bytes", "Bytes of stored blobs, by the kind that keeps each (operator, own, held, cached).", []string{"kind"}, nil),
		count: prometheus.NewDesc("mira_blob_count", "Stored blobs, by the kind that keeps each.", []string{"kind"}, nil),
		metrics: []blobMetric{
			{prometheus.NewDesc("mira_blob_budget_bytes", "The blob store's budget (blob_cache_mib).", nil, nil), prometheus.GaugeValue,
				func(s BlobStats) uint64 { return uint64(s.Budget) }},
			{prometheus.NewDesc("mira_blob_partial_bytes", "Bytes partial downloads count against the budget (the whole blob while one is under way).", nil, nil), prometheus.GaugeValue,
				func(s BlobStats) uint64 { return uint64(max(s.PartialBytes, 0)) }},
			counter("mira_blob_evictions_total", "Blobs evicted to keep the budget, or deleted by the operator.", func(s BlobStats) uint64 { return s.Evictions }),
			counter("mira_blob_evicted_bytes_total", "Bytes of evicted blobs.", func(s BlobStats) uint64 { return uint64(s.EvictedBytes) }),
			counter("mira_blob_partials_removed_total", "Abandoned partial downloads and uploads removed.", func(s BlobStats) uint64 { return s.PartialsRemoved }),
			counter("mira_blob_refused_total", "Blob writes refused: they did not fit the budget.", func(s BlobStats) uint64 { return s.Refused }),
			counter("mira_blob_fetched_total", "Blobs fetched from peers and checked.", func(s BlobStats) uint64 { return s.Fetched }),
			counter("mira_blob_served_total", "Blobs sent to peers.", func(s BlobStats) uint64 { return s.Served }),
			counter("mira_blob_rejected_total", "Downloads that did not match their content ID.", func(s BlobStats) uint64 { return s.Rejected }),
			counter("mira_blob_proved_total", "Requesters that sent a blob this node held already, proving they hold it.", func(s BlobStats) uint64 { return s.Proved }),
			counter("mira_blob_unproven_total", "Job inputs and modules refused: the requester did not send their bytes.", func(s BlobStats) uint64 { return s.Unproven }),
		},
	}
}

func (c *blobCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.count
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

func (c *blobCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.n.BlobStats()
	for _, k := range blob.Kinds {
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.Bytes[k]), k.String())
		ch <- prometheus.MustNewConstMetric(c.count, prometheus.GaugeValue, float64(s.Blobs[k]), k.String())
	}
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.value, float64(m.get(s)))
	}
}
