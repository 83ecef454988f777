//go:build wasip1 || mirasample

// Command sample is the job program mira ships as its built-in WASI module
// "sample" (see executor.SampleModule) and that the executor tests also run
// as a container and a host process. It is built for GOOS=wasip1 by
// go:generate in the executor package, and for linux (static, with the
// mirasample build tag) by the docker tests.
//
// Usage:
//
//	sample hash N            SHA-256 over N MiB of generated data (default workload)
//	sample echo ARGS...      print the arguments
//	sample readfile PATH     print a file
//	sample write NAME TEXT   write TEXT to NAME in the working directory, print it back
//	sample symlink OLD NEW   make NEW a symlink to OLD, print what reading NEW gives
//	sample fill NAME MIB [PER [HOLD]]
//	                         write MIB MiB into NAME (in files NAME.0, NAME.1, ... of
//	                         PER MiB each when PER is given), then wait HOLD
//	sample pwrite NAME OFF MIB
//	                         write one byte at offset OFF of NAME (printing the error,
//	                         if any), then MIB MiB into NAME from its start
//	sample truncate NAME SIZE MIB
//	                         truncate NAME to SIZE bytes (printing the error, if any),
//	                         then write MIB MiB into NAME from its start
//	sample fallocate NAME MIB [HOLD]
//	                         allocate MIB MiB of blocks to NAME without changing its
//	                         size (FALLOC_FL_KEEP_SIZE; linux only), then wait HOLD
//	sample deepdir DEPTH [HOLD]
//	                         make DEPTH nested directories of 255-character names (by
//	                         renaming from the bottom, so no single call's path is
//	                         long), then wait HOLD
//	sample id                print the user and group IDs it runs as (uid:gid)
//	sample dial ADDR [WAIT]  TCP connect to ADDR, retrying for WAIT (a Go duration)
//	sample serve PORT        accept TCP connections on PORT, greet each
//	sample alloc MIB [HOLD]  allocate and touch MIB MiB of memory, keep it HOLD (a Go duration)
//	sample spin              loop forever
//	sample count NAME [EVERY]
//	                         forever, every EVERY (a Go duration, default 10ms), write
//	                         the count of ticks so far to NAME (20 digits, in place)
//	sample sleep DURATION    sleep
//	sample env               print the environment, one variable a line
//	sample exit CODE         exit with CODE
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail(2, "usage: sample hash|echo|readfile|write|symlink|fill|pwrite|truncate|fallocate|deepdir|id|dial|serve|alloc|spin|count|sleep|env|exit ...")
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "hash":
		n := 64
		if len(args) > 0 {
			n = atoi(args[0])
		}
		fmt.Println(hashMiB(n))
	case "echo":
		fmt.Println(strings.Join(args, " "))
	case "readfile":
		need(args, 1)
		b, err := os.ReadFile(args[0])
		if err != nil {
			fail(1, "readfile: %v", err)
		}
		os.Stdout.Write(b)
	case "write":
		need(args, 2)
		if err := os.WriteFile(args[0], []byte(args[1]), 0o644); err != nil {
			fail(1, "write: %v", err)
		}
		b, err := os.ReadFile(args[0])
		if err != nil {
			fail(1, "write: read back: %v", err)
		}
		os.Stdout.Write(b)
	case "symlink":
		need(args, 2)
		if err := os.Symlink(args[0], args[1]); err != nil {
			fail(1, "symlink: %v", err)
		}
		b, err := os.ReadFile(args[1])
		if err != nil {
			fail(1, "symlink: read: %v", err)
		}
		os.Stdout.Write(b)
	case "fill":
		need(args, 2)
		fill(args)
	case "pwrite":
		need(args, 3)
		pwrite(args[0], int64(atoi(args[1])), atoi(args[2]))
	case "truncate":
		need(args, 3)
		truncate(args[0], int64(atoi(args[1])), atoi(args[2]))
	case "fallocate":
		need(args, 2)
		fallocate(args[0], atoi(args[1]))
		fmt.Printf("allocated %s MiB\n", args[1])
		time.Sleep(holdArg(args, 2))
	case "deepdir":
		need(args, 1)
		deepdir(atoi(args[0]))
		fmt.Printf("made %s levels\n", args[0])
		time.Sleep(holdArg(args, 1))
	case "id":
		fmt.Printf("%d:%d\n", os.Getuid(), os.Getgid())
	case "dial":
		need(args, 1)
		dial(args)
	case "serve":
		need(args, 1)
		serve(args[0])
	case "alloc":
		need(args, 1)
		var hold time.Duration
		if len(args) > 1 {
			var err error
			if hold, err = time.ParseDuration(args[1]); err != nil {
				fail(2, "alloc: %v", err)
			}
		}
		alloc(atoi(args[0]), hold)
	case "spin":
		spin()
	case "count":
		need(args, 1)
		count(args[0], holdArg(args, 1))
	case "sleep":
		need(args, 1)
		d, err := time.ParseDuration(args[0])
		if err != nil {
			fail(2, "sleep: %v", err)
		}
		time.Sleep(d)
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
	case "exit":
		need(args, 1)
		os.Exit(atoi(args[0]))
	default:
		fail(2, "unknown command %q", cmd)
	}
}

// hashMiB returns the hex SHA-256 of n MiB where byte i of each MiB is
// byte(i % 251).
func hashMiB(n int) string {
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i % 251)
	}
	h := sha256.New()
	for range n {
		h.Write(block)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fill writes args[1] MiB into args[0], or into files args[0].0, .1, ...
// of args[2] MiB each, then sleeps for args[3]; a write that fails ends it
// with exit status 1.
func fill(args []string) {
	total, per := atoi(args[1]), 0
	if len(args) > 2 {
		per = atoi(args[2])
	}
	var hold time.Duration
	if len(args) > 3 {
		var err error
		if hold, err = time.ParseDuration(args[3]); err != nil {
			fail(2, "fill: %v", err)
		}
	}
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i % 251)
	}
	var f *os.File
	for i := range total {
		if f == nil || per > 0 && i%per == 0 {
			if f != nil {
				f.Close()
			}
			name := args[0]
			if per > 0 {
				name = fmt.Sprintf("%s.%d", args[0], i/per)
			}
			var err error
			if f, err = os.Create(name); err != nil {
				fail(1, "fill: %v", err)
			}
		}
		if _, err := f.Write(block); err != nil {
			fail(1, "fill: after %d MiB: %v", i, err)
		}
	}
	if f != nil {
		if err := f.Close(); err != nil {
			fail(1, "fill: %v", err)
		}
	}
	fmt.Printf("filled %d MiB\n", total)
	time.Sleep(hold)
}

// pwrite writes one byte at offset off of name, then fills it with mib
// MiB from its start.
func pwrite(name string, off int64, mib int) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		fail(1, "pwrite: %v", err)
	}
	if _, err := f.WriteAt([]byte{1}, off); err != nil {
		fmt.Printf("pwrite at %d: %v\n", off, err)
	}
	writeMiB(f, mib)
}

// truncate truncates name to size, then fills it with mib MiB from its
// start.
func truncate(name string, size int64, mib int) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		fail(1, "truncate: %v", err)
	}
	if err := f.Truncate(size); err != nil {
		fmt.Printf("truncate to %d: %v\n", size, err)
	}
	writeMiB(f, mib)
}

// writeMiB writes mib MiB into f from its start and closes it; a write
// that fails ends the program with exit status 1.
func writeMiB(f *os.File, mib int) {
	block := make([]byte, 1<<20)
	for i := range mib {
		if _, err := f.WriteAt(block, int64(i)<<20); err != nil {
			fail(1, "write: after %d MiB: %v", i, err)
		}
	}
	if err := f.Close(); err != nil {
		fail(1, "write: %v", err)
	}
	fmt.Printf("wrote %d MiB\n", mib)
}

// deepdir makes depth nested directories of 255-character names in the
// working directory: short names first, then renamed from the deepest up,
// so that every call's path stays short while the whole grows past
// PATH_MAX.
func deepdir(depth int) {
	short := make([]string, depth)
	for i := range short {
		short[i] = fmt.Sprintf("d%d", i)
	}
	if err := os.MkdirAll(strings.Join(short, "/"), 0o755); err != nil {
		fail(1, "deepdir: %v", err)
	}
	long := strings.Repeat("x", 255)
	for i := depth - 1; i >= 0; i-- {
		parent := strings.Join(short[:i], "/")
		from, to := short[i], long
		if parent != "" {
			from, to = parent+"/"+from, parent+"/"+to
		}
		if err := os.Rename(from, to); err != nil {
			fail(1, "deepdir: level %d: %v", i, err)
		}
	}
}

// holdArg is args[i] as a duration, zero when absent.
func holdArg(args []string, i int) time.Duration {
	if len(args) <= i {
		return 0
	}
	d, err := time.ParseDuration(args[i])
	if err != nil {
		fail(2, "%s: %v", os.Args[1], err)
	}
	return d
}

func dial(args []string) {
	wait := time.Duration(0)
	if len(args) > 1 {
		var err error
		if wait, err = time.ParseDuration(args[1]); err != nil {
			fail(2, "dial: %v", err)
		}
	}
	deadline := time.Now().Add(wait)
	for {
		c, err := net.DialTimeout("tcp", args[0], 2*time.Second)
		if err == nil {
			greeting, _ := io.ReadAll(io.LimitReader(c, 1024))
			c.Close()
			fmt.Printf("connected to %s: %s\n", args[0], strings.TrimSpace(string(greeting)))
			return
		}
		if !time.Now().Before(deadline) {
			fail(1, "dial: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func serve(port string) {
	l, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fail(1, "serve: %v", err)
	}
	fmt.Println("listening on", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			fail(1, "serve: %v", err)
		}
		fmt.Fprintln(c, "hello from sample")
		c.Close()
	}
}

// alloc allocates mib MiB in 1 MiB blocks, writing to every page so that
// the memory is really used, and keeps all of it alive until it is done.
func alloc(mib int, hold time.Duration) {
	blocks := make([][]byte, 0, mib)
	for range mib {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		blocks = append(blocks, b)
	}
	sum := 0
	for _, b := range blocks {
		sum += int(b[0])
	}
	fmt.Printf("allocated %d MiB\n", sum)
	time.Sleep(hold)
	runtime.KeepAlive(blocks)
}

//go:noinline
func spin() {
	n := 0
	for {
		n++
	}
}

func need(args []string, n int) {
	if len(args) < n {
		fail(2, "%s: needs %d argument(s)", os.Args[1], n)
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fail(2, "%s: %v", os.Args[1], err)
	}
	return n
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sample: "+format+"\n", args...)
	os.Exit(code)
}

// count writes, every every (10ms if zero), how many ticks have passed to
// name, as 20 digits written in place at its start: a reader never sees
// the file empty or short, as it could after a truncate.
func count(name string, every time.Duration) {
	if every <= 0 {
		every = 10 * time.Millisecond
	}
	f, err := os.Create(name)
	if err != nil {
		fail(1, "count: %v", err)
	}
	for n := 0; ; n++ {
		if _, err := f.WriteAt(fmt.Appendf(nil, "%020d", n), 0); err != nil {
			fail(1, "count: %v", err)
		}
		time.Sleep(every)
	}
}
