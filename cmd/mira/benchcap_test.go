package main

import "testing"

// TestBatchJobSignatures checks the per-job signature counts behind the
// cap against the flow of one batch job, worked out by hand.
func TestBatchJobSignatures(t *testing.T) {
	cases := []struct {
		nodes, providers           int
		seals, opens, ledgerChecks int
	}{
		// 10 signatures (offer, its round, 3 bids, award, its grant,
		// taken, acceptance, result) and 4 ledger entries; the offer
		// round and the taken notice checked on 9 nodes, 3 bids, award,
		// acceptance and result, the grant twice on the provider; 4
		// entries and the lease's grant on 9 nodes.
		{10, 3, 14, 26, 45},
		{2, 1, 12, 8, 5},
	}
	for _, c := range cases {
		seals, opens, ledgerChecks := batchJobSignatures(c.nodes, c.providers)
		if seals != c.seals || opens != c.opens || ledgerChecks != c.ledgerChecks {
			t.Errorf("%d nodes, %d providers: %d seals, %d opens, %d ledger checks; want %d, %d, %d",
				c.nodes, c.providers, seals, opens, ledgerChecks, c.seals, c.opens, c.ledgerChecks)
		}
	}
}

func TestMedian(t *testing.T) {
	cases := []struct {
		in   []float64
		want float64
	}{
		{[]float64{0.9}, 0.9},
		{[]float64{1.2, 0.7, 0.9}, 0.9},
		{[]float64{1.0, 0.6, 0.8, 0.7}, 0.75},
	}
	for _, c := range cases {
		if got := median(append([]float64(nil), c.in...)); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
