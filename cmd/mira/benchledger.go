package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	voied "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/parallel"
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
		Short: "Ingest rate of signed entries beside raw Ed25519 verification (Go's, curve25519-voi's single and batch); reconciliation between two nodes",
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

// benchChains signs perChain entries for each of accounts new accounts,
// each a chain any ledger whose genesis has the grants returned takes
// whatever else it holds: the account's grant, then jobs of its own, each
// held (for no provider), leased and run by the account itself, and
// released. Each entry is what the market writes; none needs another chain.
func benchChains(accounts, perChain int) ([][][]byte, []ledger.GenesisGrant, error) {
	const grant = 1 << 40
	chains := make([][][]byte, accounts)
	grants := make([]ledger.GenesisGrant, accounts)
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
			grants[a] = ledger.GenesisGrant{Peer: id, Amount: grant}
			var prev ledger.Hash
			for seq := 1; seq <= perChain; seq++ {
				body, err := benchBody(priv, id, seq, grant)
				if err != nil {
					errs[a] = err
					return
				}
				e := ledger.Entry{Account: id, Seq: uint64(seq), Prev: prev, Time: start.Add(time.Duration(seq) * time.Millisecond),
					Body: body}
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
			return nil, nil, err
		}
	}
	return chains, grants, nil
}

// benchBody is entry seq of account id's (priv's) bench chain: its grant,
// then for each job a hold, a lease (quoting the account's grant of the
// job to itself), a receipt and a release.
func benchBody(priv crypto.PrivKey, id peer.ID, seq int, grant uint64) (ledger.Body, error) {
	if seq == 1 {
		return ledger.GrantBody{Amount: grant}, nil
	}
	job := ledger.Hash(sha256.Sum256(fmt.Appendf(nil, "%s/%d", id, (seq-2)/4)))
	switch (seq - 2) % 4 {
	case 0:
		return ledger.HoldBody{Job: job, Amount: 1000}, nil
	case 1:
		g, err := ledger.LeaseGrant{Job: job, Requester: id, Provider: id, Price: 1, Attempt: 1}.Sign(benchNet, priv)
		return ledger.LeaseBody{Job: job, Requester: id, Price: 1, Attempt: 1, Grant: g}, err
	case 2:
		return ledger.ReceiptBody{Job: job, Receipt: job, Result: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
			Usage: ledger.Usage{WallMS: 1000, GPUMS: 1000}}, nil
	}
	return ledger.ReleaseBody{Job: job}, nil
}

func benchLedger(dir string, syncReceived bool, grants []ledger.GenesisGrant) (*storage.DB, *storage.Ledger, error) {
	db, err := storage.Open(dir, storage.Options{Network: benchNet})
	if err != nil {
		return nil, nil, err
	}
	g := &ledger.Genesis{Network: benchNet, Grants: grants}
	l, err := storage.OpenLedger(db, benchNet, g, nil, storage.WithReceivedSync(syncReceived))
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, l, nil
}

// benchIngest ingests signed entries into an on-disk ledger in batches of
// 256, and checks the same signatures alone on every core three ways, for
// the ratios of the rates.
func benchIngest(out io.Writer, n int) error {
	raws, grants, err := interleavedChains(100, (n+99)/100)
	if err != nil {
		return err
	}
	sigs, err := benchSigs(raws)
	if err != nil {
		return err
	}
	workers := runtime.GOMAXPROCS(0)
	leases := 0
	for _, s := range sigs {
		if s.lease {
			leases++
		}
	}
	fmt.Fprintf(out, "ingest: %d entries of 100 accounts, batches of 256, on disk; %d of them leases, whose grant ingest checks too (%.2f signatures per entry; (a) to (c) check the entries' own)\n",
		len(raws), leases, 1+float64(leases)/float64(len(raws)))
	fmt.Fprintf(out, "raw signature checks of the same entries on %d cores (keys and signed bytes prepared beforehand, not timed):\n", workers)
	stdRate, err := verifyRate(len(sigs), len(sigs), func(i int) bool { return ed25519.Verify(sigs[i].pub, sigs[i].msg, sigs[i].sig) })
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  (a) Go crypto/ed25519.Verify, one at a time (the goal's baseline): %.0f/s\n", stdRate)
	zipRate, err := verifyRate(len(sigs), len(sigs), func(i int) bool {
		return voied.VerifyWithOptions(sigs[i].pub, sigs[i].msg, sigs[i].sig, zip215)
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  (b) curve25519-voi, ZIP-215 rules, one at a time: %.0f/s\n", zipRate)
	batchRate, err := batchVerifyRate(sigs)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  (c) curve25519-voi, ZIP-215 rules, batches of %d as the ledger forms them: %.0f/s\n", ledger.SignatureBatch, batchRate)
	// As a node ingests peers' entries (no fsync per batch: see
	// storage.WithReceivedSync), and with a sync per batch.
	for _, synced := range []bool{false, true} {
		ir, err := ingestRate(raws, grants, synced)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  ingest (decode, verify, rules, store), fsync per batch %-5v: %.0f entries/s; ingest/(a) = %.2f, ingest/(c) = %.2f\n",
			synced, ir, ir/stdRate, ir/batchRate)
	}
	return nil
}

// interleavedChains signs perChain entries for each of accounts accounts
// and orders them as gossip brings them: each account's next entry in turn.
func interleavedChains(accounts, perChain int) ([][]byte, []ledger.GenesisGrant, error) {
	chains, grants, err := benchChains(accounts, perChain)
	if err != nil {
		return nil, nil, err
	}
	var raws [][]byte
	for seq := range chains[0] {
		for _, c := range chains {
			raws = append(raws, c[seq])
		}
	}
	return raws, grants, nil
}

// zip215 is the ledger's signature rule (see ledger.Entry.VerifySignature).
var zip215 = &voied.Options{Verify: voied.VerifyOptionsZIP_215}

type benchSig struct {
	account  peer.ID
	pub      []byte
	msg, sig []byte
	batch    int  // which IngestMany batch of 256 it arrives in
	lease    bool // a lease, which carries a grant besides
}

// benchSigs decodes the entries and prepares what their signature checks
// take: the public key, the signed bytes, the signature.
func benchSigs(raws [][]byte) ([]benchSig, error) {
	sigs := make([]benchSig, len(raws))
	for i, raw := range raws {
		e, err := ledger.DecodeEntry(raw)
		if err != nil {
			return nil, err
		}
		pk, err := e.Account.ExtractPublicKey()
		if err != nil {
			return nil, err
		}
		pub, err := pk.Raw()
		if err != nil {
			return nil, err
		}
		sigs[i] = benchSig{account: e.Account, pub: pub, msg: e.SigningBytes(benchNet), sig: e.Signature, batch: i / 256,
			lease: e.Kind() == ledger.KindLease}
	}
	return sigs, nil
}

// verifyRate calls verify(0) … verify(calls-1) on every core, which check
// sigs signatures in all, and returns the rate of signatures; a false
// verdict is an error.
func verifyRate(calls, sigs int, verify func(i int) bool) (float64, error) {
	var bad atomic.Int64
	start := time.Now()
	parallel.For(runtime.GOMAXPROCS(0), calls, func(i int) {
		if !verify(i) {
			bad.Add(1)
		}
	})
	took := time.Since(start)
	if bad.Load() > 0 {
		return 0, fmt.Errorf("%d signature checks failed", bad.Load())
	}
	return float64(sigs) / took.Seconds(), nil
}

// batchVerifyRate batch-verifies the signatures on every core the way the
// ledger does: each batch of 256 that IngestMany gets sorted by account,
// cut into chunks of ledger.SignatureBatch, a public key expanded once
// for the consecutive entries of its account.
func batchVerifyRate(sigs []benchSig) (float64, error) {
	sorted := slices.Clone(sigs)
	slices.SortStableFunc(sorted, func(a, b benchSig) int {
		if a.batch != b.batch {
			return a.batch - b.batch
		}
		return strings.Compare(string(a.account), string(b.account))
	})
	var chunks [][]benchSig
	for i := 0; i < len(sorted); i += 256 {
		batch := sorted[i:min(i+256, len(sorted))]
		for j := 0; j < len(batch); j += ledger.SignatureBatch {
			chunks = append(chunks, batch[j:min(j+ledger.SignatureBatch, len(batch))])
		}
	}
	return verifyRate(len(chunks), len(sorted), func(k int) bool {
		chunk := chunks[k]
		bv := voied.NewBatchVerifierWithCapacity(len(chunk))
		var x *voied.ExpandedPublicKey
		for j, s := range chunk {
			if j == 0 || s.account != chunk[j-1].account {
				var err error
				if x, err = voied.NewExpandedPublicKey(s.pub); err != nil {
					return false
				}
			}
			bv.AddExpandedWithOptions(x, s.msg, s.sig, zip215)
		}
		ok, _ := bv.Verify(rand.Reader)
		return ok
	})
}

func ingestRate(raws [][]byte, grants []ledger.GenesisGrant, synced bool) (float64, error) {
	dir, err := os.MkdirTemp("", "mira-bench-ledger-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, l, err := benchLedger(dir, synced, grants)
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

// benchReconcile fills two real nodes' ledgers with size entries each,
// differing by diff (half on each side), and times one reconciliation
// session between them over loopback.
func benchReconcile(ctx context.Context, out io.Writer, size, diff int) error {
	const accounts = 100
	chains, grants, err := benchChains(accounts, size/accounts+1)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "mira-bench-reconcile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tn, err := testnet.Start(ctx, testnet.Options{Nodes: 2, Dir: dir, Network: benchNet, Grants: grants, Configure: func(_ int, cfg *node.Config) {
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
