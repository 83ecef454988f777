package runner

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestArchiveOutputs(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("the provider's own file"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, out string)
		limit int64
		want  []string // "name mode content", in order
		err   error
	}{
		{
			name: "files and a subdirectory, in lexical order, owners and times left out",
			setup: func(t *testing.T, out string) {
				write(t, filepath.Join(out, "b.txt"), "bee", 0o600)
				write(t, filepath.Join(out, "a", "run.sh"), "#!/bin/sh", 0o700)
			},
			limit: 1 << 20,
			want:  []string{"a/ 755 ", "a/run.sh 755 #!/bin/sh", "b.txt 644 bee"},
		},
		{
			name: "links are left out, not followed",
			setup: func(t *testing.T, out string) {
				write(t, filepath.Join(out, "kept"), "mine", 0o644)
				must(t, os.Symlink(secret, filepath.Join(out, "file-link")))
				must(t, os.Symlink(filepath.Dir(secret), filepath.Join(out, "dir-link")))
			},
			limit: 1 << 20,
			want:  []string{"kept 644 mine"},
		},
		{
			name: "out itself a link",
			setup: func(t *testing.T, out string) {
				must(t, os.Remove(out))
				must(t, os.Symlink(filepath.Dir(secret), out))
			},
			limit: 1 << 20,
			err:   fs.ErrNotExist, // no outputs
		},
		{
			name:  "an empty directory",
			setup: func(t *testing.T, out string) { must(t, os.Mkdir(filepath.Join(out, "empty"), 0o700)) },
			limit: 1 << 20,
			want:  []string{"empty/ 755 "},
		},
		{
			name: "a FIFO is left out, not waited on",
			setup: func(t *testing.T, out string) {
				must(t, syscall.Mkfifo(filepath.Join(out, "pipe"), 0o644))
				write(t, filepath.Join(out, "z"), "zed", 0o644)
			},
			limit: 1 << 20,
			want:  []string{"z 644 zed"},
		},
		{
			name: "too many entries",
			setup: func(t *testing.T, out string) {
				for i := range maxOutputEntries + 1 {
					must(t, os.Mkdir(filepath.Join(out, fmt.Sprint(i)), 0o700))
				}
			},
			limit: 1 << 30,
			err:   errTooManyOutputs,
		},
		{
			name: "nested too deep",
			setup: func(t *testing.T, out string) {
				write(t, filepath.Join(out, strings.Repeat("d/", maxOutputDepth+1)+"f"), "deep", 0o644)
			},
			limit: 1 << 20,
			err:   errOutputsTooDeep,
		},
		{
			name: "nested as deep as allowed",
			setup: func(t *testing.T, out string) {
				write(t, filepath.Join(out, strings.Repeat("d/", maxOutputDepth)+"f"), "deep", 0o644)
			},
			limit: 1 << 20,
			want: append(func() (dirs []string) {
				for i := 1; i <= maxOutputDepth; i++ {
					dirs = append(dirs, strings.Repeat("d/", i)+" 755 ")
				}
				return dirs
			}(), strings.Repeat("d/", maxOutputDepth)+"f 644 deep"),
		},
		{
			name:  "removed",
			setup: func(t *testing.T, out string) { must(t, os.Remove(out)) },
			limit: 1 << 20,
			err:   fs.ErrNotExist,
		},
		{
			name: "over the limit",
			setup: func(t *testing.T, out string) {
				write(t, filepath.Join(out, "big"), strings.Repeat("x", 64<<10), 0o644)
			},
			limit: 32 << 10,
			err:   errOutputsTooLarge,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			scratch := t.TempDir()
			out := filepath.Join(scratch, outputsDir)
			must(t, os.Mkdir(out, 0o700))
			c.setup(t, out)
			var buf bytes.Buffer
			entries, err := archiveOutputs(scratch, &buf, c.limit)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("error %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := readTar(t, &buf)
			if strings.Join(got, "|") != strings.Join(c.want, "|") {
				t.Fatalf("archive holds %q, want %q", got, c.want)
			}
			if entries != len(c.want) {
				t.Fatalf("%d entries reported, want %d", entries, len(c.want))
			}
		})
	}
}

// The archive depends on the files alone: the same outputs give the same
// content ID on every provider.
func TestArchiveOutputsIsDeterministic(t *testing.T) {
	var archives [2]bytes.Buffer
	for i, mode := range []os.FileMode{0o600, 0o664} {
		scratch := t.TempDir()
		file := filepath.Join(scratch, outputsDir, "x", "y.bin")
		write(t, file, "payload", mode)
		when := time.Date(2020+i, 1, 1, 0, 0, 0, 0, time.UTC)
		must(t, os.Chtimes(file, when, when))
		if _, err := archiveOutputs(scratch, &archives[i], 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(archives[0].Bytes(), archives[1].Bytes()) {
		t.Fatal("two archives of the same files (other modes and times) differ")
	}
}

// The reason for failing a job's outputs goes into its signed result: it
// names no path of the provider's, and it is UTF-8 whatever name the job
// chose.
func TestOutputsErrorNamesOnlyTheJobsPath(t *testing.T) {
	err := outputsErr("out/\xffname", &fs.PathError{Op: "open", Path: "/var/lib/mira/work/j.1/job/out/\xffname", Err: syscall.EACCES})
	if got := err.Error(); got != "outputs: out/?name: permission denied" || errors.Is(err, errOutputsProvider) {
		t.Fatalf("error %q", got)
	}
	// What the job did not cause is the provider's, and not its text.
	if err := outputsErr("out/x", syscall.EMFILE); !errors.Is(err, errOutputsProvider) {
		t.Fatalf("too many open files: %v, want the provider's failure", err)
	}
}

func readTar(t *testing.T, r io.Reader) []string {
	t.Helper()
	var got []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.ModTime.Unix() != 0 {
			t.Fatalf("%s: owner %d/%d %q, time %v", h.Name, h.Uid, h.Gid, h.Uname, h.ModTime)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %o %s", h.Name, h.Mode, b))
	}
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o700))
	must(t, os.WriteFile(path, []byte(content), mode))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
