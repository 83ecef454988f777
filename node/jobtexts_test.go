package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/node/api"
)

// TestJobErrorsNameNoProviderPath: a job's error goes to its requester,
// who must learn nothing of the provider's file system from it. A
// process job nests 255-character directory names 17 deep and exits:
// the provider's last measurement of its scratch dir fails with "file
// name too long" and the full path. The requester must see the run fail
// for its disk, with no path of the provider's in the text, and the
// provider must still remove the tree.
func TestJobErrorsNameNoProviderPath(t *testing.T) {
	tn, c := execNet(t, "process")
	j, err := c.SubmitJob(context.Background(), api.JobRequest{
		Executor: "process", Command: []string{"/bin/sh", "-c",
			`n=$(printf '%0255d' 0); for i in $(seq 17); do mkdir $n && cd $n || exit 3; done`},
		Tier: "interactive", MaxPrice: 0.01, Resources: api.Resources{GPUs: 1}, MaxDuration: "30s", Deadline: "2m",
	})
	if err != nil {
		t.Fatal(err)
	}
	done := waitJobs(t, c, []string{j.ID}, "failed", time.Minute)[j.ID]
	dataDir, err := filepath.Abs(tn.Dir(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{dataDir, filepath.Base(dataDir), "/work/", strings.Repeat("0", 255)} {
		if strings.Contains(done.Error, leak) {
			t.Fatalf("the requester was told %q: it names the provider's path %.40q", done.Error, leak)
		}
	}
	if !strings.Contains(done.Error, "disk quota") {
		t.Fatalf("error %q (exit %d), want the run stopped for its disk", done.Error, done.ExitCode)
	}
	if left, _ := os.ReadDir(filepath.Join(dataDir, "work")); len(left) > 0 {
		t.Fatalf("the provider's work dir still holds %d entries", len(left))
	}
}
