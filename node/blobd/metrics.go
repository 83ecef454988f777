package blobd

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/node/blob"
)

// Stats are the blob store's usage and its transfers' counts.
type Stats struct {
	blob.Usage
	Fetched, Served, Rejected, Proved, Unproven uint64
}

// Stats returns what the blob store holds and what it has done.
func (s *Service) Stats() Stats {
	st := Stats{Usage: s.store.Usage()}
	if s.transfer != nil {
		t := &s.transfer.Stats
		st.Fetched, st.Served, st.Rejected = t.Fetched.Load(), t.Served.Load(), t.Rejected.Load()
		st.Proved, st.Unproven = t.Proved.Load(), t.Unproven.Load()
	}
	return st
}

// metric is one of the blob store's single-value metrics.
type metric struct {
	desc  *prometheus.Desc
	value prometheus.ValueType
	get   func(Stats) uint64
}

// collector exports the blob store's usage by kind and its collector's
// and transfers' counts, read when scraped.
type collector struct {
	s            *Service
	bytes, count *prometheus.Desc
	metrics      []metric
}

func newCollector(s *Service) *collector {
	counter := func(name, help string, get func(Stats) uint64) metric {
		return metric{prometheus.NewDesc(name, help, nil, nil), prometheus.CounterValue, get}
	}
	return &collector{
		s:     s,
		bytes: prometheus.NewDesc("mira_blob_bytes", "Bytes of stored blobs, by the kind that keeps each (operator, own, held, cached).", []string{"kind"}, nil),
		count: prometheus.NewDesc("mira_blob_count", "Stored blobs, by the kind that keeps each.", []string{"kind"}, nil),
		metrics: []metric{
			{prometheus.NewDesc("mira_blob_budget_bytes", "The blob store's budget (blob_cache_mib).", nil, nil), prometheus.GaugeValue,
				func(s Stats) uint64 { return uint64(s.Budget) }},
			{prometheus.NewDesc("mira_blob_partial_bytes", "Bytes partial downloads count against the budget (the whole blob while one is under way).", nil, nil), prometheus.GaugeValue,
				func(s Stats) uint64 { return uint64(max(s.PartialBytes, 0)) }},
			counter("mira_blob_evictions_total", "Blobs evicted to keep the budget, or deleted by the operator.", func(s Stats) uint64 { return s.Evictions }),
			counter("mira_blob_evicted_bytes_total", "Bytes of evicted blobs.", func(s Stats) uint64 { return uint64(s.EvictedBytes) }),
			counter("mira_blob_partials_removed_total", "Abandoned partial downloads and uploads removed.", func(s Stats) uint64 { return s.PartialsRemoved }),
			counter("mira_blob_refused_total", "Blob writes refused: they did not fit the budget.", func(s Stats) uint64 { return s.Refused }),
			counter("mira_blob_fetched_total", "Blobs fetched from peers and checked.", func(s Stats) uint64 { return s.Fetched }),
			counter("mira_blob_served_total", "Blobs sent to peers.", func(s Stats) uint64 { return s.Served }),
			counter("mira_blob_rejected_total", "Downloads that did not match their content ID.", func(s Stats) uint64 { return s.Rejected }),
			counter("mira_blob_proved_total", "Requesters that sent a blob this node held already, proving they hold it.", func(s Stats) uint64 { return s.Proved }),
			counter("mira_blob_unproven_total", "Job inputs and modules refused: the requester did not send their bytes.", func(s Stats) uint64 { return s.Unproven }),
		},
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.count
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s.Stats()
	for _, k := range blob.Kinds {
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.Bytes[k]), k.String())
		ch <- prometheus.MustNewConstMetric(c.count, prometheus.GaugeValue, float64(s.Blobs[k]), k.String())
	}
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.value, float64(m.get(s)))
	}
}
