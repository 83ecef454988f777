package node_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/testnet"
)

// Review 2: fair exchange. A requester that never signs an acceptance
// must not get the result: but the runner grants the requester read access
// to the result and outputs blobs as it stores them (node/runner/run.go
// storeResult/storeOutputs → AllowReader), before any bill is accepted,
// and the bill itself names the content IDs. A rogue requester fetches
// the blob straight from the provider and never pays.
func TestReviewResultBlobFetchableBeforeAcceptance(t *testing.T) {
	tn := startTestnet(t, 2, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = []string{"wasm"}
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 0)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	requester, provider := tn.Node(0), tn.Node(1)
	requester.WithholdAcceptances(true)
	t.Cleanup(func() { requester.WithholdAcceptances(false) })

	// Larger than a result carried inline: stored as a blob.
	private := strings.Repeat("private answer\n", 3<<10)
	in, err := c.PutBlob(context.Background(), strings.NewReader(private))
	if err != nil {
		t.Fatal(err)
	}
	req := wasmJob("sample", "readfile", "/inputs/"+in.ID)
	req.Inputs = []string{in.ID}
	if _, err := c.SubmitJob(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		if provider.OpenBills() != 1 {
			return fmt.Errorf("provider has %d open bills", provider.OpenBills())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	sum := sha256.Sum256([]byte(private))
	id, err := protocol.BlobID(sum[:])
	if err != nil {
		t.Fatal(err)
	}
	if provider.OpenBills() != 1 {
		t.Fatal("the bill was settled although acceptances are withheld")
	}
	if s := askBlob(t, requester, provider.ID(), id.String()); s == protocol.BlobOK {
		t.Fatal("the requester fetched the result blob from the provider without accepting the bill: " +
			"AllowReader is granted at run end, not after the claim")
	}
}
