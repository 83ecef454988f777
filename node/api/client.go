package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Client talks to a node's local API.
type Client struct {
	// BaseURL is like "http://127.0.0.1:7410".
	BaseURL string
	// Token is the bearer token from the node's api.token file.
	Token string
	HTTP  *http.Client
}

// NewClientFromDataDir reads api.addr and api.token from a running node's
// data dir.
func NewClientFromDataDir(dataDir string) (*Client, error) {
	addr, err := os.ReadFile(filepath.Join(dataDir, "api.addr"))
	if err != nil {
		return nil, fmt.Errorf("is the node running? %w", err)
	}
	token, err := os.ReadFile(filepath.Join(dataDir, "api.token"))
	if err != nil {
		return nil, fmt.Errorf("is the node running? %w", err)
	}
	return &Client{
		BaseURL: "http://" + strings.TrimSpace(string(addr)),
		Token:   strings.TrimSpace(string(token)),
	}, nil
}

// StatusError is an error response from the API.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return fmt.Sprintf("api: %d: %s", e.Code, e.Message) }

// Do sends a request with a JSON body (if in is not nil) and decodes a JSON
// response into out (if not nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", method, path, err)
	}
	return nil
}

// Node returns the node's identity.
func (c *Client) Node(ctx context.Context) (NodeInfo, error) {
	var info NodeInfo
	err := c.Do(ctx, http.MethodGet, "/v1/node", nil, &info)
	return info, err
}

// Peers lists the node's connected peers.
func (c *Client) Peers(ctx context.Context) ([]PeerInfo, error) {
	var peers []PeerInfo
	err := c.Do(ctx, http.MethodGet, "/v1/peers", nil, &peers)
	return peers, err
}

// Connect asks the node to dial a peer.
func (c *Client) Connect(ctx context.Context, addr string) (string, error) {
	var out struct {
		PeerID string `json:"peer_id"`
	}
	err := c.Do(ctx, http.MethodPost, "/v1/peers", ConnectRequest{Addr: addr}, &out)
	return out.PeerID, err
}

// Providers looks up providers that fit q.
func (c *Client) Providers(ctx context.Context, q ProviderQuery) ([]ProviderInfo, error) {
	v := url.Values{}
	if q.GPU != "" {
		v.Set("gpu", q.GPU)
	}
	if q.Count > 0 {
		v.Set("count", strconv.Itoa(q.Count))
	}
	if q.VRAMMiB > 0 {
		v.Set("vram_mib", strconv.Itoa(q.VRAMMiB))
	}
	if q.Source != "" {
		v.Set("gpu_source", q.Source)
	}
	var out []ProviderInfo
	err := c.Do(ctx, http.MethodGet, "/v1/providers?"+v.Encode(), nil, &out)
	return out, err
}

// SubmitJob posts a job and returns its ID and first state.
func (c *Client) SubmitJob(ctx context.Context, req JobRequest) (JobInfo, error) {
	var out JobInfo
	err := c.Do(ctx, http.MethodPost, "/v1/jobs", req, &out)
	return out, err
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, id string) (JobInfo, error) {
	var out JobInfo
	err := c.Do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), nil, &out)
	return out, err
}

// Jobs lists the node's jobs.
func (c *Client) Jobs(ctx context.Context) ([]JobInfo, error) {
	var out []JobInfo
	err := c.Do(ctx, http.MethodGet, "/v1/jobs", nil, &out)
	return out, err
}

// CancelJob cancels a job.
func (c *Client) CancelJob(ctx context.Context, id string) (JobInfo, error) {
	var out JobInfo
	err := c.Do(ctx, http.MethodDelete, "/v1/jobs/"+url.PathEscape(id), nil, &out)
	return out, err
}

// stream sends a request and returns the response body for the caller to
// read and close; an error status becomes a StatusError.
func (c *Client) stream(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return nil, &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	return resp, nil
}

// PutBlob uploads a blob and returns its content ID.
func (c *Client) PutBlob(ctx context.Context, r io.Reader) (BlobInfo, error) {
	var info BlobInfo
	resp, err := c.stream(ctx, http.MethodPost, blobsPath, r)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&info)
	return info, err
}

// Blob opens a stored blob; the caller closes it.
func (c *Client) Blob(ctx context.Context, id string) (io.ReadCloser, error) {
	resp, err := c.stream(ctx, http.MethodGet, blobsPath+"/"+url.PathEscape(id), nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// DeleteBlob unpins a blob the node holds and removes it unless a job
// still needs it.
func (c *Client) DeleteBlob(ctx context.Context, id string) (BlobDeleted, error) {
	var d BlobDeleted
	resp, err := c.stream(ctx, http.MethodDelete, blobsPath+"/"+url.PathEscape(id), nil)
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&d)
	return d, err
}

// JobResult opens a finished job's result; the caller closes it. The
// second value is the result's content ID.
func (c *Client) JobResult(ctx context.Context, id string) (io.ReadCloser, string, error) {
	resp, err := c.stream(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id)+"/result", nil)
	if err != nil {
		return nil, "", err
	}
	return resp.Body, resp.Header.Get("X-Mira-Content-Id"), nil
}

// JobOutputs opens the tar archive of a finished job's out/ files; the
// caller closes it. The second value is the archive's content ID.
func (c *Client) JobOutputs(ctx context.Context, id string) (io.ReadCloser, string, error) {
	resp, err := c.stream(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id)+"/outputs", nil)
	if err != nil {
		return nil, "", err
	}
	return resp.Body, resp.Header.Get("X-Mira-Content-Id"), nil
}

// JobLogs opens a job's log; with follow it streams until the run ends.
func (c *Client) JobLogs(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	path := "/v1/jobs/" + url.PathEscape(id) + "/logs"
	if follow {
		path += "?follow=1"
	}
	resp, err := c.stream(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Balance returns an account's balance; "" for the node's own.
func (c *Client) Balance(ctx context.Context, account string) (BalanceInfo, error) {
	var out BalanceInfo
	err := c.Do(ctx, http.MethodGet, "/v1/ledger/balance?account="+url.QueryEscape(account), nil, &out)
	return out, err
}

// Entries returns an account's ledger entries after seq; "" for the
// node's own.
func (c *Client) Entries(ctx context.Context, account string, after uint64, limit int) ([]EntryInfo, error) {
	var out []EntryInfo
	q := url.Values{"account": {account}, "after": {strconv.FormatUint(after, 10)}, "limit": {strconv.Itoa(limit)}}
	err := c.Do(ctx, http.MethodGet, "/v1/ledger/entries?"+q.Encode(), nil, &out)
	return out, err
}

// VerifyLedger re-validates the node's whole ledger.
func (c *Client) VerifyLedger(ctx context.Context) (VerifyInfo, error) {
	var out VerifyInfo
	err := c.Do(ctx, http.MethodGet, "/v1/ledger/verify", nil, &out)
	return out, err
}
