package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/mira-market/mira/node/executor"
)

// startExecutors builds the executors the provider's config allows. One
// that cannot start (no Docker engine) is left out with a warning, so the
// node does not bid for work it cannot run.
func (r *Runner) startExecutors(ctx context.Context) (executor.Set, error) {
	set := executor.Set{}
	for _, name := range r.cfg.Executors {
		e, err := r.startExecutor(ctx, name)
		if errors.Is(err, errUnknownExecutor) {
			return nil, fmt.Errorf("config: provider.executors: unknown executor %q", name)
		}
		if err != nil {
			r.log.Warn("executor unavailable; not offered", "executor", name, "err", err)
			continue
		}
		set[name] = e
	}
	return set, nil
}

var errUnknownExecutor = errors.New("unknown executor")

func (r *Runner) startExecutor(ctx context.Context, name string) (executor.Executor, error) {
	lim := r.cfg.Limits
	switch name {
	case "noop":
		return executor.Noop{}, nil
	case "wasm":
		return executor.NewWasm(executor.WasmOptions{
			MaxMemoryMib: lim.MemoryMiB, CacheDir: r.wasmCacheDir(), Logger: r.log,
		})
	case "docker":
		d, err := executor.NewDocker(ctx, executor.DockerOptions{
			AllowNetwork: r.cfg.DockerNetwork, Owner: r.cfg.Owner, Logger: r.log,
			MaxMemoryMib: lim.MemoryMiB, MaxCPUMillis: lim.CPUMillis,
			User: r.cfg.DockerUser, Images: r.cfg.DockerImages,
		})
		if err != nil {
			return nil, err
		}
		// Containers a crash left behind.
		if removed, cerr := d.Cleanup(ctx); cerr != nil || removed > 0 {
			r.log.Info("removed leftover job containers", "count", removed, "err", cerr)
		}
		return d, nil
	case "process":
		return executor.NewProcess(executor.ProcessOptions{MaxMemoryMib: lim.MemoryMiB, Logger: r.log}), nil
	}
	return nil, errUnknownExecutor
}

// wasmCacheDir is the wasm executor's compilation cache, created 0700:
// the machine code there is run as is, so no one else may write it. A dir
// that is not the node's own, or that others may write, is not used (the
// node compiles in memory only) and a warning says why.
func (r *Runner) wasmCacheDir() string {
	dir := r.cfg.WasmCacheDir
	if dir == "" {
		dir = filepath.Join(r.cfg.DataDir, "wasm-cache")
	}
	if err := privateDir(dir); err != nil {
		r.log.Warn("wasm compilation cache not used", "dir", dir, "err", err)
		return ""
	}
	return dir
}

// privateDir creates dir (and its parents) with mode 0700 if it does not
// exist, and checks that it is a directory of this process's user that no
// one else may write or enter.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return errors.New("not a directory")
	case !ok || int(st.Uid) != os.Geteuid():
		return errors.New("not owned by the node's user")
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("mode %#o: others may use it (want 0700)", fi.Mode().Perm())
	}
	return nil
}

// closeExecutors releases what the executors hold (compiled modules, the
// Docker client).
func (r *Runner) closeExecutors() {
	for _, e := range r.executors {
		switch c := e.(type) {
		case interface{ Close(context.Context) error }:
			c.Close(context.Background())
		case interface{ Close() error }:
			c.Close()
		}
	}
}
