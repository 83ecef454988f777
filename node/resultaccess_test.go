package node_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/testnet"
)

// Fair exchange on the provider's blobs: a requester gets a result it has
// not signed for neither by fetching it (review2_test.go) nor by naming
// it as the input of its next job on the same provider. The provider
// stored the result for the requester; it must not take that as the
// requester having delivered its bytes, and so stage it for a job whose
// result (the same bytes, for a short, cheap run) the requester then pays
// instead of the first.
func TestUnpaidResultIsNoInputOfTheNextJob(t *testing.T) {
	tn, c := wasmPair(t)
	requester, provider := tn.Node(0), tn.Node(1)
	requester.WithholdAcceptances(true)
	t.Cleanup(func() { requester.WithholdAcceptances(false) })

	first, err := c.SubmitJob(context.Background(), wasmJob("sample", bigEcho()...))
	if err != nil {
		t.Fatal(err)
	}
	unpaid := waitReceipt(t, provider, mustJobID(t, first.ID)).Result
	if unpaid == "" {
		t.Fatal("the first job's result was not stored as a blob")
	}
	req := wasmJob("sample", "readfile", "/inputs/"+unpaid)
	req.Inputs = []string{unpaid}
	second, err := c.SubmitJob(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := waitReceipt(t, provider, mustJobID(t, second.ID)); got.Result == unpaid {
		t.Fatal("the provider staged the unpaid result as the requester's input: the second job's result is the first's")
	}
}

// A result's blobs open to its requester once the claim is written, also
// where the provider restarted in between: the bill, on disk, is claimed
// after the restart and the result (a blob) delivered.
func TestRestartedProviderOpensTheResultOnceClaimed(t *testing.T) {
	tn, c := wasmPair(t)
	requester, provider := tn.Node(0), tn.Node(1)
	requester.WithholdAcceptances(true)
	t.Cleanup(func() { requester.WithholdAcceptances(false) })
	ctx := context.Background()

	j, err := c.SubmitJob(ctx, wasmJob("sample", bigEcho()...))
	if err != nil {
		t.Fatal(err)
	}
	id := waitReceipt(t, provider, mustJobID(t, j.ID)).Result
	if s := askBlob(t, requester, provider.ID(), id); s != protocol.BlobRefused {
		t.Fatalf("before the claim the requester asking for the result got status %d", s)
	}
	if err := tn.Stop(1); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	provider = tn.Node(1)
	if _, err := provider.Connect(ctx, requester.ListenAddrs()[0]); err != nil {
		t.Fatal(err)
	}
	requester.WithholdAcceptances(false)
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if got, want := string(result(t, c, done)), strings.Join(bigEcho()[1:], " ")+"\n"; got != want {
		t.Fatalf("result of %d bytes, want %d", len(got), len(want))
	}
	if s := askBlob(t, requester, provider.ID(), id); s != protocol.BlobOK {
		t.Fatalf("after the claim the requester asking for its result got status %d", s)
	}
}

// wasmPair starts a requester (node 0) and a wasm provider (node 1) that
// sees it, and returns the requester's client.
func wasmPair(t *testing.T) (*testnet.Testnet, *api.Client) {
	t.Helper()
	tn := startTestnet(t, 2, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = []string{"wasm"}
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	return tn, c
}

// bigEcho is the sample module's arguments for a result too large to
// travel inline (protocol.MaxResultOutput): a blob on the provider.
func bigEcho() []string {
	args := []string{"echo"}
	for i := range 10 {
		args = append(args, strings.Repeat(string(rune('a'+i)), 4000))
	}
	return args
}

// waitReceipt waits for the provider's receipt entry of job in its own
// chain: the run ended and was billed.
func waitReceipt(t *testing.T, provider *node.Node, job protocol.JobID) ledger.ReceiptBody {
	t.Helper()
	var got ledger.ReceiptBody
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		var ok bool
		got, ok = findReceipt(t, provider, provider.ID(), job)
		if !ok {
			return fmt.Errorf("no receipt of job %s yet", job)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func findReceipt(t *testing.T, n *node.Node, provider peer.ID, job protocol.JobID) (ledger.ReceiptBody, bool) {
	es, err := n.Ledger().Entries(provider, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if r, ok := e.Body.(ledger.ReceiptBody); ok && r.Job == ledger.Hash(job) {
			return r, true
		}
	}
	return ledger.ReceiptBody{}, false
}

func mustJobID(t *testing.T, s string) protocol.JobID {
	t.Helper()
	id, err := protocol.ParseJobID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
