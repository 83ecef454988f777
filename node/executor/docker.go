package executor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/mira-market/mira/protocol/pb"
)

// Labels on every container the docker executor creates.
const (
	// LabelJob holds the job ID.
	LabelJob = "mira.job"
	// LabelOwner holds DockerOptions.Owner, when set.
	LabelOwner = "mira.owner"
)

// ErrNoImage is returned for a job whose image is not present on this
// provider. Images are never pulled: the operator chooses what runs.
var ErrNoImage = errors.New("image not present on this provider")

// DockerOptions configures the docker executor. The zero value is usable.
type DockerOptions struct {
	// AllowNetwork lets containers use a network; without it they have
	// none (network mode "none").
	AllowNetwork bool
	// Network is the network mode or network name containers are attached
	// to when AllowNetwork is set; "bridge" when empty.
	Network string
	// DefaultMemoryMib is the memory limit of a job whose spec gives no
	// resources.memory_mib; 1024 when zero.
	DefaultMemoryMib uint32
	// MaxMemoryMib is the most memory a job may ask for (ErrOverLimit
	// beyond); the host's total memory when zero.
	MaxMemoryMib uint32
	// MaxCPUMillis is the most CPU a job may ask for (ErrOverLimit beyond),
	// and what a job that asks none gets; the host's cores when zero.
	MaxCPUMillis uint32
	// PidsLimit caps the processes of a container; 512 when zero.
	PidsLimit int64
	// User is the user containers run as, numeric "uid:gid";
	// "65534:65534" (nobody) when empty.
	User string
	// Images are the images jobs may name (ErrImageNotAllowed for any
	// other; see market.ImageAllowed): a name allows each of its tags
	// and digests, "name:tag" that tag, "name@sha256:..." that digest.
	// Empty: no job may run.
	Images []string
	// Owner, when set, labels this executor's containers (LabelOwner) and
	// limits Cleanup to them, so that nodes sharing one engine (a testnet)
	// do not remove each other's containers. A node's peer ID is a good
	// choice.
	Owner string
	// Logger receives debug logs; none when nil.
	Logger *slog.Logger
}

// DefaultDockerUser is the user containers run as unless the provider
// says otherwise: nobody, who owns no file on the host.
const DefaultDockerUser = "65534:65534"

// setDefaults fills in what the options leave out; host is the engine's
// host (its memory in bytes and cores), for the limits.
func (o *DockerOptions) setDefaults(hostMem int64, hostCPUs int) {
	if o.Network == "" {
		o.Network = "bridge"
	}
	if o.DefaultMemoryMib == 0 {
		o.DefaultMemoryMib = 1024
	}
	if o.MaxMemoryMib == 0 {
		o.MaxMemoryMib = uint32(min(max(hostMem>>20, 1), 1<<31))
	}
	o.DefaultMemoryMib = min(o.DefaultMemoryMib, o.MaxMemoryMib)
	// The engine refuses a container more CPUs than its host has.
	hostMillis := uint32(max(hostCPUs, 1) * 1000)
	if o.MaxCPUMillis == 0 || o.MaxCPUMillis > hostMillis {
		o.MaxCPUMillis = hostMillis
	}
	if o.PidsLimit == 0 {
		o.PidsLimit = 512
	}
	if o.User == "" {
		o.User = DefaultDockerUser
	}
}

// ParseUser parses a numeric "uid:gid", as DockerOptions.User is.
func ParseUser(s string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(s, ":")
	uid64, uerr := strconv.ParseUint(u, 10, 31)
	gid64, gerr := strconv.ParseUint(g, 10, 31)
	if !ok || uerr != nil || gerr != nil {
		return 0, 0, fmt.Errorf("user %q: want a numeric uid:gid", s)
	}
	return int(uid64), int(gid64), nil
}

// Docker runs jobs as containers through the Docker Engine API; it is the
// executor for GPU jobs.
//
// A job's spec.image must already be on the host, and declare no volume
// (ErrImageVolumes). spec.command, when
// given, replaces the image's entrypoint and spec.args are its arguments;
// without a command, spec.args replace the image's CMD and the image's
// entrypoint (if any) runs them. The container gets: the spec's env and no
// other variable but those the image sets, save the GPU device lists, which
// are the executor's (containerEnv: the job's GPUs, or "void"), job.Dir bind-mounted read-write
// at /work as its working directory and only mount, a read-only root
// filesystem, no capabilities, no-new-privileges, a pids limit, memory =
// resources.memory_mib with no swap, NanoCPUs = resources.cpu_millis, no
// network unless allowed, and the job's GPUs (job.GPUs, via the nvidia
// driver). With a job.DiskQuota, the fsize ulimit keeps any one file below
// the quota, the nofile ulimit (jobNoFile) bounds the files unlinked while
// open, and a watcher measures job.Dir from the host (see diskWatch)
// and stops the container once it holds more than the quota beyond its
// inputs: the run fails with ReasonDiskQuota. Output is read by attaching to the container (as `docker run`
// does); the daemon does not log it. The container is removed after every
// run, however it ended.
//
// A container killed by the kernel for using more than its memory (the
// engine's OOMKilled, or exit status 137 that the executor did not cause)
// is reported as ReasonOOM. PeakMemory comes from the engine's memory
// stats, sampled while the container runs (its cgroup is gone once it has
// exited): the cgroup's own peak where the engine reports one (cgroup v1),
// else the highest usage sampled; zero for a container that exits before
// the first sample.
type Docker struct {
	c        *client.Client
	opts     DockerOptions
	uid, gid int // opts.User
	log      *slog.Logger
}

var _ Executor = (*Docker)(nil)

// NewDocker connects to the Docker engine given by the environment
// (DOCKER_HOST and friends, else the local socket) and checks that it
// answers.
func NewDocker(ctx context.Context, opts DockerOptions) (*Docker, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := client.New(client.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("docker: client: %w", err)
	}
	if _, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		c.Close()
		return nil, fmt.Errorf("docker: engine not reachable: %w", err)
	}
	info, err := c.Info(ctx, client.InfoOptions{})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("docker: engine info: %w", err)
	}
	if opts.MaxCPUMillis > uint32(info.Info.NCPU*1000) {
		log.Warn("docker: max_cpu_millis is more than the engine's host has; lowered", "max_cpu_millis", opts.MaxCPUMillis, "cpus", info.Info.NCPU)
	}
	opts.setDefaults(info.Info.MemTotal, info.Info.NCPU)
	d := &Docker{c: c, opts: opts, log: log}
	if d.uid, d.gid, err = ParseUser(opts.User); err != nil {
		c.Close()
		return nil, fmt.Errorf("docker: %w", err)
	}
	// The node hands each job's scratch dir to the container's user and
	// removes what it wrote afterwards: only root can do both for
	// another user.
	if euid := os.Geteuid(); euid != 0 && d.uid != euid {
		c.Close()
		return nil, fmt.Errorf("docker: containers would run as %s, but this node runs as uid %d and could not remove the files they write: "+
			"run the node as root, or set provider.docker_user = \"%d:%d\" (the node's own user)", opts.User, euid, euid, os.Getegid())
	}
	return d, nil
}

// Name implements Executor.
func (*Docker) Name() string { return "docker" }

// Close closes the connection to the engine.
func (d *Docker) Close() error { return d.c.Close() }

// Client is the engine client the executor uses.
func (d *Docker) Client() *client.Client { return d.c }

// memoryPoll is how often a running container's memory is sampled. With
// cgroup v1 the engine reports the cgroup's own peak, so a later sample
// loses nothing; with v2 a peak between samples is missed.
const memoryPoll = 250 * time.Millisecond

// watchMemory samples the memory of the running container id, at once and
// then every memoryPoll, until the function it returns is called; that
// stops the sampling (cancelling a sample in flight) and returns the
// highest figure seen, also on later calls.
func (d *Docker) watchMemory(id string) (stop func() uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		defer func() { out <- peak }()
		tick := time.NewTicker(memoryPoll)
		defer tick.Stop()
		for {
			peak = max(peak, d.memorySample(ctx, id))
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return sync.OnceValue(func() uint64 {
		cancel()
		return <-out
	})
}

// memorySample is the container's peak memory so far as the engine
// reports it (cgroup v1), else its current usage (cgroup v2, where it
// includes the page cache, such as files the job wrote); zero when the
// engine has none (the container is not running).
func (d *Docker) memorySample(ctx context.Context, id string) uint64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := d.c.ContainerStats(ctx, id, client.ContainerStatsOptions{})
	if err != nil {
		return 0
	}
	defer r.Body.Close()
	var s container.StatsResponse
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&s); err != nil {
		return 0
	}
	return max(s.MemoryStats.MaxUsage, s.MemoryStats.Usage)
}

// failed ends a run that did not get to an exit: a done ctx is a killed
// job, anything else an error.
func (d *Docker) failed(ctx context.Context, start time.Time, err error) (Result, error) {
	if ctx.Err() != nil {
		return Result{ExitCode: -1, Reason: ctxReason(ctx), Wall: time.Since(start)}, nil
	}
	return Result{ExitCode: -1}, err
}

// limits are the memory (bytes) and CPU (nano-CPUs) of a job's container:
// what it asks, within the provider's maximum, else the defaults.
func (d *Docker) limits(spec *pb.JobSpec) (memory, nanoCPUs int64, err error) {
	memMib, cpu := d.opts.DefaultMemoryMib, d.opts.MaxCPUMillis
	r := spec.GetResources()
	switch {
	case r.GetMemoryMib() > d.opts.MaxMemoryMib:
		return 0, 0, fmt.Errorf("docker: memory_mib %d: %w of %d", r.GetMemoryMib(), ErrOverLimit, d.opts.MaxMemoryMib)
	case r.GetCpuMillis() > d.opts.MaxCPUMillis:
		return 0, 0, fmt.Errorf("docker: cpu_millis %d: %w of %d", r.GetCpuMillis(), ErrOverLimit, d.opts.MaxCPUMillis)
	}
	if r.GetMemoryMib() > 0 {
		memMib = r.GetMemoryMib()
	}
	if r.GetCpuMillis() > 0 {
		cpu = r.GetCpuMillis()
	}
	return int64(memMib) << 20, int64(cpu) * 1_000_000, nil
}

// namesImage reports whether the reference image names an image the
// engine lists under tags and digests (its RepoTags and RepoDigests).
func namesImage(image string, tags, digests []string) bool {
	ref, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return false
	}
	want, list := reference.TagNameOnly(ref).String(), tags
	if d, ok := ref.(reference.Digested); ok {
		want, list = ref.Name()+"@"+d.Digest().String(), digests
	}
	for _, s := range list {
		if r, err := reference.ParseNormalizedNamed(s); err == nil && r.String() == want {
			return true
		}
	}
	return false
}

// imageVolumes lists, sorted, the volumes img declares (its VOLUME
// lines): each would be a writable anonymous volume on the host.
func imageVolumes(img client.ImageInspectResult) []string {
	if img.Config == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(img.Config.Volumes))
}

// handOver makes the scratch dir dir the container user's: a node running
// as root gives it, and everything in it, to that user (the dir is 0700,
// and the dir above it the node's, 0700: no one else on the host gets in).
// A node of another user runs containers as itself (NewDocker), and has
// nothing to do.
func (d *Docker) handOver(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, d.uid, d.gid)
	})
	if err == nil {
		err = os.Chmod(dir, 0o700)
	}
	if err != nil {
		d.log.Warn("docker: the scratch dir could not be handed to the container's user", "dir", dir, "err", err)
		return errors.New("docker: the provider could not hand the scratch dir to the container's user")
	}
	return nil
}

// runConfig is what a job's container gets besides its spec.
type runConfig struct {
	dir      string // the scratch dir, absolute
	image    string // the image's ID
	memory   int64  // bytes
	nanoCPUs int64
}

// create creates the job's container and returns its ID.
func (d *Docker) create(ctx context.Context, job *Job, rc runConfig) (string, error) {
	cfg, hc := d.containerConfig(job, rc)
	name, err := containerName(job.ID)
	if err != nil {
		return "", err
	}
	c, err := d.c.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: hc, Name: name})
	if err != nil {
		return "", fmt.Errorf("docker: create: %w", err)
	}
	d.log.Debug("docker: created container", "job", job.ID, "name", name, "id", c.ID, "warnings", c.Warnings)
	return c.ID, nil
}

// containerConfig is the configuration of job's container.
func (d *Docker) containerConfig(job *Job, rc runConfig) (*container.Config, *container.HostConfig) {
	spec := job.Spec
	cfg := &container.Config{
		Image:        rc.image,
		Cmd:          spec.GetArgs(),
		WorkingDir:   "/work",
		User:         d.opts.User,
		Labels:       d.labels(job.ID),
		AttachStdout: true,
		AttachStderr: true,
	}
	if len(spec.GetCommand()) > 0 {
		cfg.Entrypoint = spec.GetCommand()
	}
	// The device lists are the executor's (containerEnv): the image's
	// and the spec's would otherwise reach the NVIDIA runtime.
	cfg.Env = containerEnv(spec.GetEnv(), job.GPUs)
	pids := d.opts.PidsLimit
	network := "none"
	if d.opts.AllowNetwork {
		network = d.opts.Network
	}
	hc := &container.HostConfig{
		Mounts:         []mount.Mount{{Type: mount.TypeBind, Source: rc.dir, Target: "/work"}},
		NetworkMode:    container.NetworkMode(network),
		Privileged:     false,
		CapDrop:        []string{"ALL"},
		SecurityOpt:    []string{"no-new-privileges"},
		ReadonlyRootfs: true,
		LogConfig:      container.LogConfig{Type: "none"},
		Resources: container.Resources{
			Memory:     rc.memory,
			MemorySwap: rc.memory, // memory+swap = memory: no swap
			NanoCPUs:   rc.nanoCPUs,
			PidsLimit:  &pids,
		},
	}
	if job.DiskQuota > 0 {
		// No file may grow past the quota; the watch counts /work as a
		// whole, and nofile bounds the files unlinked while open, which
		// it cannot see.
		fsize := int64(fsizeLimit(job.DiskQuota))
		hc.Ulimits = []*container.Ulimit{{Name: "fsize", Soft: fsize, Hard: fsize}, {Name: "nofile", Soft: jobNoFile, Hard: jobNoFile}}
	}
	if len(job.GPUs) > 0 {
		hc.DeviceRequests = []container.DeviceRequest{{
			Driver:       "nvidia",
			DeviceIDs:    job.GPUs,
			Capabilities: [][]string{{"gpu"}},
		}}
	}
	return cfg, hc
}

func (d *Docker) labels(jobID string) map[string]string {
	l := map[string]string{LabelJob: jobID}
	if d.opts.Owner != "" {
		l[LabelOwner] = d.opts.Owner
	}
	return l
}

// remove kills and removes a container, whatever its state.
func (d *Docker) remove(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.c.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
		d.log.Warn("docker: remove container", "id", id, "err", err)
	}
}

// Cleanup removes every container labeled LabelJob (and, with an Owner,
// this owner's LabelOwner), running or not: the leftovers of a node that
// stopped mid-run. Call it when a node starts. It returns how many it
// removed.
func (d *Docker) Cleanup(ctx context.Context) (int, error) {
	filters := client.Filters{}.Add("label", LabelJob)
	if d.opts.Owner != "" {
		filters.Add("label", LabelOwner+"="+d.opts.Owner)
	}
	list, err := d.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filters})
	if err != nil {
		return 0, fmt.Errorf("docker: list containers: %w", err)
	}
	n := 0
	var errs []error
	for _, c := range list.Items {
		_, err := d.c.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		switch {
		case err == nil:
			n++
		case !cerrdefs.IsNotFound(err):
			errs = append(errs, fmt.Errorf("docker: remove %s: %w", c.ID, err))
		}
	}
	return n, errors.Join(errs...)
}

// containerName is "mira-" + the job ID's first characters + a random
// suffix, so that two runs of one job never clash.
func containerName(jobID string) (string, error) {
	var b strings.Builder
	for _, r := range jobID {
		if b.Len() == 24 {
			break
		}
		if r < 0x80 && (r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return "", fmt.Errorf("docker: container name: %w", err)
	}
	if b.Len() == 0 {
		return "mira-" + hex.EncodeToString(suffix), nil
	}
	return "mira-" + b.String() + "-" + hex.EncodeToString(suffix), nil
}
