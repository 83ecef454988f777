package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/storage"
	"github.com/mira-market/mira/testnet"
)

func newBenchLedgerCmd(*globals) *cobra.Command {
	var (
		entries int
		sizes   []int
		diff    int
	)
	cmd := &cobra.Command{
		Use:   "ledger",
		Short: "Ingest rate of signed entries beside raw Ed25519 verification; reconciliation between two nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if err := benchIngest(out, entries); err != nil {
				return err
			}
			for _, n := range sizes {
				if err := benchReconcile(cmd.Context(), out, n, diff); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&entries, "entries", 20000, "signed entries to ingest")
	cmd.Flags().IntSliceVar(&sizes, "reconcile", []int{10000, 100000}, "ledger sizes to reconcile between two nodes")
	cmd.Flags().IntVar(&diff, "diff", 100, "entries that differ (half on each side)")
	return cmd
}

const benchNet = "bench"

// benchChains signs chains of lease entries for accounts accounts, perChain
// entries each: entries that need no funds, so any ledger takes them.
func benchChains(accounts, perChain int) ([][][]byte, error) {
	chains := make([][][]byte, accounts)
	errs := make([]error, accounts)
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	start := time.Now().Add(-time.Hour)
	for a := range chains {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
			if err != nil {
				errs[a] = err
				return
			}
			id, _ := peer.IDFromPrivateKey(priv)
			var prev storage.Hash
			for seq := 1; seq <= perChain; seq++ {
				e := storage.Entry{Account: id, Seq: uint64(seq), Prev: prev, Time: start.Add(time.Duration(seq) * time.Millisecond),
					Body: storage.LeaseBody{Job: sha256.Sum256(fmt.Appendf(nil, "%s/%d", id, seq)), Requester: id, Price: 1}}
				if err := e.Sign(benchNet, priv); err != nil {
					errs[a] = err
					return
				}
				raw := e.Encode()
				chains[a] = append(chains[a], raw)
				prev = sha256.Sum256(raw)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return chains, nil
}

func benchLedger(dir string, syncReceived bool) (*storage.DB, *storage.Ledger, error) {
	db, err := storage.Open(dir, storage.Options{Network: benchNet})
	if err != nil {
		return nil, nil, err
	}
	l, err := storage.OpenLedger(db, benchNet, &storage.Genesis{Network: benchNet}, nil, storage.WithReceivedSync(syncReceived))
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, l, nil
}

// benchIngest ingests signed entries into an on-disk ledger in batches of
// 256 (one sync each), and verifies the same signatures alone on every
// core, for the ratio of the two rates.
func benchIngest(out io.Writer, n int) error {
	chains, err := benchChains(100, (n+99)/100)
	if err != nil {
		return err
	}
	var raws [][]byte
	for seq := range chains[0] {
		for _, c := range chains {
			raws = append(raws, c[seq])
		}
	}
	decoded := make([]storage.Entry, len(raws))
	for i, raw := range raws {
		if decoded[i], err = storage.DecodeEntry(raw); err != nil {
			return err
		}
	}
	start := time.Now()
	parallelFor(len(decoded), func(i int) {
		if err := decoded[i].VerifySignature(benchNet); err != nil {
			panic(err)
		}
	})
	verify := time.Since(start)

	vr := float64(len(raws)) / verify.Seconds()
	fmt.Fprintf(out, "ingest: %d entries of 100 accounts, batches of 256, on disk; raw Ed25519 verify of the same entries on %d cores: %.0f/s\n",
		len(raws), runtime.GOMAXPROCS(0), vr)
	// As a node ingests peers' entries (no fsync per batch: see
	// storage.WithReceivedSync), and with a sync per batch.
	for _, synced := range []bool{false, true} {
		ir, err := ingestRate(raws, synced)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  ingest, fsync per batch %-5v: %.0f entries/s; ingest/verify = %.2f\n", synced, ir, ir/vr)
	}
	return nil
}

func ingestRate(raws [][]byte, synced bool) (float64, error) {
	dir, err := os.MkdirTemp("", "mira-bench-ledger-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, l, err := benchLedger(dir, synced)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	start := time.Now()
	for i := 0; i < len(raws); i += 256 {
		res, err := l.IngestMany(raws[i:min(i+256, len(raws))])
		if err != nil {
			return 0, err
		}
		if len(res.Rejected) > 0 {
			return 0, fmt.Errorf("ingest rejected %d entries: %v", len(res.Rejected), res.Rejected[0].Err)
		}
	}
	return float64(len(raws)) / time.Since(start).Seconds(), nil
}

func parallelFor(n int, f func(i int)) {
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				f(i)
			}
		}()
	}
	wg.Wait()
}

// benchReconcile fills two real nodes' ledgers with size entries each,
// differing by diff (half on each side), and times one reconciliation
// session between them over loopback.
func benchReconcile(ctx context.Context, out io.Writer, size, diff int) error {
	const accounts = 100
	chains, err := benchChains(accounts, size/accounts+1)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "mira-bench-reconcile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tn, err := testnet.Start(ctx, testnet.Options{Nodes: 2, Dir: dir, Network: benchNet, Configure: func(_ int, cfg *node.Config) {
		cfg.ReconcileInterval = node.Duration(time.Hour) // only the session timed here
	}})
	if err != nil {
		return err
	}
	defer tn.Close()
	// Each side lacks the last entry of half of diff's chains.
	for side, n := range tn.Nodes() {
		var raws [][]byte
		for a, c := range chains {
			last := len(c)
			if a < diff && a%2 == side {
				last--
			}
			raws = append(raws, c[:last]...)
		}
		for i := 0; i < len(raws); i += 256 {
			if _, err := n.Ledger().IngestMany(raws[i:min(i+256, len(raws))]); err != nil {
				return err
			}
		}
	}
	a, b := tn.Node(0), tn.Node(1)
	before := a.ReconcileStats()
	start := time.Now()
	if err := a.Reconcile(ctx, b.ID()); err != nil {
		return err
	}
	took := time.Since(start)
	st := a.ReconcileStats()
	da, _ := a.Ledger().Digest()
	db, _ := b.Ledger().Digest()
	fmt.Fprintf(out, "reconcile: %d entries each, %d differing: %s, %d bytes (%d entries moved), ledgers agree: %v\n",
		a.Ledger().Count()-uint64(st.Received-before.Received), diff, took.Round(10*time.Microsecond), st.Bytes-before.Bytes,
		st.Sent+st.Received-before.Sent-before.Received, da == db)
	return nil
}
