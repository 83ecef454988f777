package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/testnet"
)

// cacheNet starts a victim requester (node 0), a wasm provider (node 1)
// and a second requester (node 2), each seeing the provider.
func cacheNet(t *testing.T) (tn *testnet.Testnet, victim, rogue *api.Client) {
	t.Helper()
	tn = startTestnet(t, 3, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.Executors = []string{"wasm"}
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	victim, rogue = clientFor(t, tn, 0), clientFor(t, tn, 2)
	for _, c := range []*api.Client{victim, rogue} {
		queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	}
	return tn, victim, rogue
}

// readInput is a wasm job that prints the input it names.
func readInput(id string) api.JobRequest {
	req := wasmJob("sample", "readfile", "/inputs/"+id)
	req.Inputs = []string{id}
	return req
}

// The attack of issue 15, finding 1: a requester names another
// requester's private input (its content ID is public: offers are
// gossiped) as an input of its own job on the provider that cached it,
// and prints it. Likewise a result the provider holds for another
// requester (receipts name it), and a blob the provider's operator
// uploaded. The provider must not hand its copy to a requester that never
// delivered the bytes.
func TestRequesterCannotReadAnothersCachedInput(t *testing.T) {
	tn, victim, rogue := cacheNet(t)
	ctx := context.Background()

	// The victim's private input, 50 KB: larger than an inline result, so
	// the job's result (the input, printed) is a blob the provider holds.
	private := bytes.Repeat([]byte("victim's private record\n"), 50_000/24)
	in, err := victim.PutBlob(ctx, bytes.NewReader(private))
	if err != nil {
		t.Fatal(err)
	}
	j, err := victim.SubmitJob(ctx, readInput(in.ID))
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, victim, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if got := result(t, victim, done); !bytes.Equal(got, private) {
		t.Fatalf("the victim's own job read %d bytes, want its %d-byte input", len(got), len(private))
	}
	// A private output of the victim's, which the provider holds for it.
	wj, err := victim.SubmitJob(ctx, wasmJob("sample", "write", "/out/secret.txt", "victim's private output"))
	if err != nil {
		t.Fatal(err)
	}
	wrote := waitJobs(t, victim, []string{wj.ID}, "succeeded", time.Minute)[wj.ID]
	outputsSecret := fetchChecked(t, "outputs", wrote.OutputsID, wrote.OutputsSize)(victim.JobOutputs(ctx, wj.ID))
	// The provider's operator's own blob.
	operatorSecret := bytes.Repeat([]byte("operator's secret\n"), 3000)
	op, err := clientFor(t, tn, 1).PutBlob(ctx, bytes.NewReader(operatorSecret))
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, id string
		secret   []byte
	}{
		{"another requester's input", in.ID, private},
		{"outputs held for another requester", wrote.OutputsID, outputsSecret},
		{"the provider operator's blob", op.ID, operatorSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rj, err := rogue.SubmitJob(ctx, readInput(tc.id))
			if err != nil {
				t.Fatal(err)
			}
			ended := waitEnded(t, rogue, rj.ID)
			if ended.State == "succeeded" {
				got := result(t, rogue, ended)
				t.Fatalf("the rogue's job succeeded and printed %d bytes (the secret: %v)", len(got), bytes.Equal(got, tc.secret))
			}
			if want := "input " + tc.id + ": requester does not hold it"; ended.Error != want {
				t.Fatalf("the rogue's job failed with %q, want %q", ended.Error, want)
			}
			if ended.ResultSize > 0 || ended.OutputsID != "" {
				t.Fatalf("the rogue's failed job has a %d-byte result, outputs %q", ended.ResultSize, ended.OutputsID)
			}
			if _, err := rogue.Blob(ctx, tc.id); statusCode(err) != http.StatusNotFound {
				t.Fatalf("the rogue's node holds the secret (%v)", err)
			}
		})
	}
	if s := tn.Node(1).BlobStats(); s.Unproven != 3 {
		t.Fatalf("the provider counted %d unproven blobs, want 3", s.Unproven)
	}

	// The victim's later jobs use the provider's copy: its node does not
	// send the input again. Its own outputs may be its next job's input.
	servedBefore := tn.Node(0).BlobStats().Served
	for _, tc := range []struct {
		id   string
		want []byte
	}{{in.ID, private}, {wrote.OutputsID, outputsSecret}} {
		j, err = victim.SubmitJob(ctx, readInput(tc.id))
		if err != nil {
			t.Fatal(err)
		}
		again := waitJobs(t, victim, []string{j.ID}, "succeeded", time.Minute)[j.ID]
		if got := result(t, victim, again); !bytes.Equal(got, tc.want) {
			t.Fatalf("the victim's job on %s read %d bytes, want %d", tc.id, len(got), len(tc.want))
		}
	}
	if served := tn.Node(0).BlobStats().Served; served != servedBefore {
		t.Fatalf("the victim's node sent %d blobs for jobs on a cached input, want none", served-servedBefore)
	}

	// A requester that does hold the same bytes may use them: it proves
	// so by sending them.
	if _, err := rogue.PutBlob(ctx, bytes.NewReader(private)); err != nil {
		t.Fatal(err)
	}
	j, err = rogue.SubmitJob(ctx, readInput(in.ID))
	if err != nil {
		t.Fatal(err)
	}
	if got := result(t, rogue, waitJobs(t, rogue, []string{j.ID}, "succeeded", time.Minute)[j.ID]); !bytes.Equal(got, private) {
		t.Fatalf("a requester holding the input read %d bytes, want %d", len(got), len(private))
	}
	if s := tn.Node(1).BlobStats(); s.Proved != 1 {
		t.Fatalf("the provider counted %d proofs, want 1", s.Proved)
	}
}

// waitEnded waits for a job to succeed or fail and returns it.
func waitEnded(t *testing.T, c *api.Client, id string) api.JobInfo {
	t.Helper()
	var ended api.JobInfo
	if err := testnet.WaitFor(context.Background(), time.Minute, func() error {
		j, err := c.Job(context.Background(), id)
		if err != nil {
			return err
		}
		if j.State != "succeeded" && j.State != "failed" {
			return fmt.Errorf("job %s is %s", id[:8], j.State)
		}
		ended = j
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ended
}

// The operator's blobs: pinned within the budget, across a restart, until
// deleted through the API.
func TestOperatorBlobsAPI(t *testing.T) {
	tn := startTestnet(t, 1, func(_ int, cfg *node.Config) {
		cfg.MaxBlobSize = 1 << 20
		cfg.BlobCacheMiB = 1
	})
	ctx := context.Background()
	c := clientFor(t, tn, 0)
	first, err := c.PutBlob(ctx, bytes.NewReader(bytes.Repeat([]byte{'a'}, 600<<10)))
	if err != nil {
		t.Fatal(err)
	}
	// A second does not fit the 1 MiB budget beside the pinned first.
	_, err = c.PutBlob(ctx, bytes.NewReader(bytes.Repeat([]byte{'b'}, 600<<10)))
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusInsufficientStorage || !strings.Contains(se.Message, "blob store full") {
		t.Fatalf("a put past the budget: %v, want 507 blob store full", err)
	}

	if err := tn.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	c = clientFor(t, tn, 0)
	if s := tn.Node(0).BlobStats(); s.Bytes[blob.Operator] != first.Size || s.Refused != 0 {
		t.Fatalf("after a restart the node holds %v bytes by kind, want %d of the operator's", s.Bytes, first.Size)
	}
	for _, tc := range []struct {
		name, id string
		code     int
		body     string
	}{
		{"not a content ID", "nope", 400, "id:"},
		{"not held", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", 404, "not found"},
		{"the operator's blob", first.ID, 200, `"removed": true`},
		{"once deleted", first.ID, 404, "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodDelete, c.BaseURL+"/v1/blobs/"+tc.id, nil)
			req.Header.Set("Authorization", "Bearer "+c.Token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if b := readAll(t, resp); resp.StatusCode != tc.code || !strings.Contains(b, tc.body) {
				t.Fatalf("DELETE %s: %d %s, want %d with %q", tc.id, resp.StatusCode, b, tc.code, tc.body)
			}
		})
	}
	if _, err := c.Blob(ctx, first.ID); statusCode(err) != http.StatusNotFound {
		t.Fatalf("GET of a deleted blob: %v, want 404", err)
	}
	metrics := metricsText(t, c)
	for _, want := range []string{`mira_blob_bytes{kind="operator"} 0`, "mira_blob_evictions_total 1", "mira_blob_budget_bytes 1.048576e+06"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func metricsText(t *testing.T, c *api.Client) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.BaseURL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return readAll(t, resp)
}
