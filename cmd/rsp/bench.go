package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"rsp/internal/bench"
)

// runBench is "rsp bench": it measures this rsp binary against direct
// loopback and a plain Go io.Copy proxy and writes a markdown table.
func runBench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rsp bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	quick := fs.Bool("quick", false, "smaller transfers and connection counts")
	runs := fs.Int("runs", 3, "repetitions of each throughput figure")
	idle := fs.Int("idle-conns", 0, "idle connections for the memory figure (default 5000, 1000 with -quick)")
	maxConns := fs.Int("max-conns", 0, "cap of the concurrency probe (default 9990)")
	out := fs.String("out", "bench.md", "file the markdown table is written to")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "rsp: %v\n", flagError(err))
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "rsp: bench: cannot find own binary: %v\n", err)
		return 1
	}
	start := time.Now()
	results, err := bench.Run(&bench.Options{Rsp: self, Quick: *quick, Runs: *runs, IdleConns: *idle, MaxConns: *maxConns, Log: stderr})
	table := bench.Markdown(results)
	fmt.Fprint(stdout, table)
	if err != nil {
		fmt.Fprintf(stderr, "rsp: bench: %v\n", err)
		return 1
	}
	host, _ := os.Hostname()
	doc := fmt.Sprintf("# rsp bench\n\n`rsp bench %s` on %s (%s), %s, took %v.\n\n%s", joinArgs(args), host, cpuModel(), time.Now().UTC().Format(time.DateOnly), time.Since(start).Round(time.Second), table)
	if err := os.WriteFile(*out, []byte(doc), 0o644); err != nil {
		fmt.Fprintf(stderr, "rsp: bench: write %s: %v\n", *out, err)
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s\n", *out)
	return 0
}

func joinArgs(a []string) string {
	s := ""
	for i, x := range a {
		if i > 0 {
			s += " "
		}
		s += x
	}
	return s
}

// cpuModel names the CPU and core count from /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	model, n := "", 0
	for _, line := range splitLines(string(b)) {
		if len(line) > 10 && line[:10] == "model name" {
			n++
			if model == "" {
				for i := range line {
					if line[i] == ':' {
						model = line[i+2:]
						break
					}
				}
			}
		}
	}
	return fmt.Sprintf("%d × %s", n, model)
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range s {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// runBenchHelper runs the benchmark's hidden helper processes.
func runBenchHelper(name string, args []string, stdout, stderr io.Writer) int {
	var err error
	switch name {
	case "bench-backend":
		err = bench.ServeBackend(os.Stdin, stdout)
	case "bench-iocopy":
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		listen := fs.String("listen", "127.0.0.1:0", "")
		backend := fs.String("backend", "", "")
		if err := fs.Parse(args); err != nil {
			fmt.Fprintf(stderr, "rsp: %s: %v\n", name, err)
			return 2
		}
		err = bench.ServeIOCopy(*listen, *backend, os.Stdin, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "rsp: %v\n", err)
		return 1
	}
	return 0
}
