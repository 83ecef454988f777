package executor

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/moby/moby/client"
)

// BuildScratchImage builds a Docker image named tag that holds only the
// static executable exe, as /job, its entrypoint: how to make a job image
// where no registry can be reached (build exe with CGO_ENABLED=0).
func BuildScratchImage(ctx context.Context, c *client.Client, tag string, exe []byte) error {
	return buildImage(ctx, c, tag, []contextFile{
		{"Dockerfile", 0o644, []byte("FROM scratch\nCOPY job /job\nENTRYPOINT [\"/job\"]\n")},
		{"job", 0o755, exe},
	})
}

// contextFile is a file of an image's build context.
type contextFile struct {
	name string
	mode int64
	data []byte
}

// buildImage builds the image tag from a build context of files, one of
// them the Dockerfile.
func buildImage(ctx context.Context, c *client.Client, tag string, files []contextFile) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return fmt.Errorf("image context: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("image context: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("image context: %w", err)
	}
	res, err := c.ImageBuild(ctx, &buf, client.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true})
	if err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	defer res.Body.Close()
	// The body is a stream of JSON messages; a failed build says so in one.
	dec := json.NewDecoder(res.Body)
	for {
		var msg struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("image build output: %w", err)
		}
		if msg.Error != "" {
			return fmt.Errorf("image build: %s", msg.Error)
		}
	}
	if _, err := c.ImageInspect(ctx, tag); err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	return nil
}
