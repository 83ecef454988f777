package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node/api"
)

func newJobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Submit, list, inspect, watch and cancel jobs through the local node",
	}
	cmd.AddCommand(newJobSubmitCmd(g), newJobLsCmd(g), newJobGetCmd(g), newJobWatchCmd(g), newJobCancelCmd(g),
		newJobLogsCmd(g), newJobResultCmd(g), newJobOutputsCmd(g))
	return cmd
}

func newJobSubmitCmd(g *globals) *cobra.Command {
	req := api.JobRequest{}
	var (
		file  string
		env   []string
		watch bool
	)
	cmd := &cobra.Command{
		Use:   "submit [flags] [-- ARGS...]",
		Short: "Submit a job; the spec comes from flags, or whole from --file (JSON, - for stdin)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if file != "" {
				r := io.Reader(os.Stdin)
				if file != "-" {
					f, err := os.Open(file)
					if err != nil {
						return err
					}
					defer f.Close()
					r = f
				}
				dec := json.NewDecoder(r)
				dec.DisallowUnknownFields()
				if err := dec.Decode(&req); err != nil {
					return fmt.Errorf("%s: %w", file, err)
				}
			} else {
				req.Args = args
				for _, kv := range env {
					k, v, ok := strings.Cut(kv, "=")
					if !ok {
						return fmt.Errorf("--env %q: want NAME=VALUE", kv)
					}
					if req.Env == nil {
						req.Env = map[string]string{}
					}
					req.Env[k] = v
				}
			}
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			j, err := c.SubmitJob(ctx, req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", j.ID, j.State)
			if watch {
				return watchJob(cmd.Context(), cmd.OutOrStdout(), c, j.ID)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "file", "", "job spec as JSON (the body of POST /v1/jobs)")
	f.StringVar(&req.Executor, "executor", "noop", "executor: noop, wasm, docker or process")
	f.StringVar(&req.Image, "image", "", "container image (docker)")
	f.StringVar(&req.Module, "module", "", "wasm module (content ID or sample name)")
	f.StringSliceVar(&req.Command, "command", nil, "command (docker, process)")
	f.StringArrayVar(&env, "env", nil, "NAME=VALUE for the job's environment (repeatable)")
	f.StringArrayVar(&req.Inputs, "input", nil, "content ID of an input blob (from `mira blob put`; repeatable)")
	f.IntVar(&req.Resources.MemoryMiB, "memory-mib", 0, "memory limit")
	f.IntVar(&req.Resources.CPUMillis, "cpu-millis", 0, "CPU limit in thousandths of a core (docker)")
	f.IntVar(&req.Resources.GPUs, "gpus", 0, "GPUs needed")
	f.StringVar(&req.Resources.GPUModel, "gpu-model", "", "GPU model, e.g. nvidia-h100 (default any)")
	f.StringVar(&req.GPUSource, "gpu-source", "", `"detected": only providers whose GPUs their node detected, not declared ones`)
	f.IntVar(&req.Resources.VRAMMiB, "vram-mib", 0, "least VRAM per GPU")
	f.StringVar(&req.Tier, "tier", "batch", "interactive or batch")
	f.Float64Var(&req.MaxPrice, "max-price", 0.01, "credits per GPU-second at most")
	f.StringVar(&req.MaxDuration, "max-duration", "1m", "longest run")
	f.StringVar(&req.Deadline, "deadline", "10m", "give up after this long (or at this RFC 3339 time)")
	f.BoolVar(&watch, "watch", false, "follow the job until it ends")
	return cmd
}

func newJobLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List this node's jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			jobs, err := c.Jobs(ctx)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tTIER\tSTATE\tPROVIDER\tPRICE\tCREATED")
			for _, j := range jobs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%g\t%s\n", j.ID[:16], j.Tier, j.State, short(j.Provider), j.Price, j.Created.Local().Format(time.TimeOnly))
			}
			return w.Flush()
		},
	}
}

func short(id string) string {
	if len(id) > 16 {
		return id[:6] + "…" + id[len(id)-6:]
	}
	return id
}

func newJobGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one job as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			j, err := c.Job(ctx, args[0])
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(j)
		},
	}
}

func newJobWatchCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "watch ID",
		Short: "Follow a job's way through the market until it ends",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := api.NewClientFromDataDir(g.dataDir)
			if err != nil {
				return err
			}
			return watchJob(cmd.Context(), cmd.OutOrStdout(), c, args[0])
		},
	}
}

func newJobCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job wherever it is",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			j, err := c.CancelJob(ctx, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", j.ID, j.State)
			return nil
		},
	}
}

func newJobLogsCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a job's output (stdout and stderr) as its provider streams it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := api.NewClientFromDataDir(g.dataDir)
			if err != nil {
				return err
			}
			rc, err := c.JobLogs(cmd.Context(), args[0], follow)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(cmd.OutOrStdout(), rc)
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing until the run ends")
	return cmd
}

func newJobResultCmd(g *globals) *cobra.Command {
	return newJobBlobCmd(g, "result ID", "Fetch a finished job's result (its stdout), checked against the provider's receipt",
		(*api.Client).JobResult)
}

func newJobOutputsCmd(g *globals) *cobra.Command {
	return newJobBlobCmd(g, "outputs ID", "Fetch the tar archive of the files a finished job left in its out/ directory, checked against the provider's receipt",
		(*api.Client).JobOutputs)
}

// newJobBlobCmd is a command that fetches one of a finished job's blobs.
func newJobBlobCmd(g *globals, use, short string, open func(*api.Client, context.Context, string) (io.ReadCloser, string, error)) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := api.NewClientFromDataDir(g.dataDir)
			if err != nil {
				return err
			}
			rc, id, err := open(c, cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer rc.Close()
			return writeOut(cmd, out, rc, id)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to this file instead of stdout")
	return cmd
}

// writeOut copies r to the file path (or stdout if empty), naming the
// content ID on stderr when it goes to a file.
func writeOut(cmd *cobra.Command, path string, r io.Reader, id string) error {
	if path == "" {
		_, err := io.Copy(cmd.OutOrStdout(), r)
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (%s)\n", path, id)
	return f.Close()
}

// watchJob prints one line per state change from the job's event stream.
func watchJob(ctx context.Context, out io.Writer, c *api.Client, id string) error {
	start := time.Now()
	var shown api.JobInfo
	last, err := readJobEvents(ctx, c, id, func(j api.JobInfo) {
		if line := describe(j); line != describe(shown) {
			fmt.Fprintf(out, "%8s  %s\n", time.Since(start).Round(time.Millisecond), line)
		}
		shown = j
	})
	if err != nil {
		return err
	}
	if last.State == "failed" || last.State == "expired" {
		return fmt.Errorf("job %s", last.State)
	}
	return nil
}

// readJobEvents follows a job's event stream (GET /v1/jobs/{id}/events),
// which ends when the job does, calling each (if not nil) with every state
// it sends; it returns the last.
func readJobEvents(ctx context.Context, c *api.Client, id string, each func(api.JobInfo)) (api.JobInfo, error) {
	var last api.JobInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/v1/jobs/"+id+"/events", nil)
	if err != nil {
		return last, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return last, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return last, fmt.Errorf("watch: %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		data, ok := strings.CutPrefix(s.Text(), "data: ")
		if !ok {
			continue
		}
		var j api.JobInfo
		if err := json.Unmarshal([]byte(data), &j); err != nil {
			return last, fmt.Errorf("watch: %w", err)
		}
		if each != nil {
			each(j)
		}
		last = j
	}
	return last, s.Err()
}

// describe says where a job stands in one line.
func describe(j api.JobInfo) string {
	line := fmt.Sprintf("%-9s", j.State)
	switch j.State {
	case "bidding":
		line += fmt.Sprintf(" %d bids, %d declines", len(j.Bids), len(j.Declines))
	case "assigned", "running":
		line += fmt.Sprintf(" on %s at %g credits/GPU-s (attempt %d)", short(j.Provider), j.Price, j.Attempt)
	case "succeeded", "failed":
		line += fmt.Sprintf(" on %s, exit %d", short(j.Provider), j.ExitCode)
		if out := strings.TrimSpace(j.Output); out != "" {
			line += ": " + out
		}
	}
	if j.Error != "" {
		line += " (" + j.Error + ")"
	}
	if j.State == "expired" {
		for _, d := range j.Declines {
			line += fmt.Sprintf("\n          declined by %s: %s", short(d.Provider), d.Reason)
		}
	}
	return line
}
