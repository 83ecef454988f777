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
//	sample id                print the user and group IDs it runs as (uid:gid)
//	sample dial ADDR [WAIT]  TCP connect to ADDR, retrying for WAIT (a Go duration)
//	sample serve PORT        accept TCP connections on PORT, greet each
//	sample alloc MIB [HOLD]  allocate and touch MIB MiB of memory, keep it HOLD (a Go duration)
//	sample spin              loop forever
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
		fail(2, "usage: sample hash|echo|readfile|write|symlink|fill|id|dial|serve|alloc|spin|sleep|env|exit ...")
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
