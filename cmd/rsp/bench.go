package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"rsp/internal/bench"
)

// runBench is "rsp bench": it measures this rsp binary against direct
// loopback, a plain Go io.Copy proxy and the installed peers, and writes a
// markdown table and an SVG chart.
func runBench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rsp bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	quick := fs.Bool("quick", false, "")
	runs := fs.Int("runs", 3, "")
	rounds := fs.Int("rounds", 1, "")
	idle := fs.Int("idle-conns", 0, "")
	maxConns := fs.Int("max-conns", 0, "")
	only := fs.String("only", "", "")
	workloads := fs.String("workloads", "", "")
	rspArgs := fs.String("rsp-args", "", "")
	user := fs.String("user", "", "")
	proxyCPUs := fs.String("proxy-cpus", "", "")
	loadCPUs := fs.String("load-cpus", "", "")
	out := fs.String("out", "bench.md", "")
	chart := fs.String("chart", "bench.svg", "")
	help := fs.Bool("h", false, "")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "rsp: bench: %v\n", flagError(err))
		return 2
	}
	if *help {
		fmt.Fprint(stdout, benchUsage)
		return 0
	}
	if fs.NArg() > 0 || *runs < 1 || *rounds < 1 {
		fmt.Fprintf(stderr, "rsp: bench takes flags only, and -runs and -rounds of at least 1 (got %q, -runs %d, -rounds %d); run 'rsp bench -h'\n", fs.Args(), *runs, *rounds)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "rsp: bench: cannot find own binary: %v\n", err)
		return 1
	}
	o := &bench.Options{Rsp: self, Quick: *quick, Runs: *runs, Rounds: *rounds, IdleConns: *idle, MaxConns: *maxConns, Log: stderr,
		User: *user, ProxyCPUs: *proxyCPUs, LoadCPUs: *loadCPUs}
	if *rspArgs != "" {
		o.RspArgs = strings.Fields(*rspArgs)
	}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	for _, w := range strings.Split(*workloads, ",") {
		if w = strings.TrimSpace(w); w != "" {
			o.Workloads = append(o.Workloads, w)
		}
	}
	start := time.Now()
	results, err := bench.Run(o)
	if err != nil {
		fmt.Fprintf(stderr, "rsp: bench: %v\n", err)
		return 1
	}
	table := bench.Markdown(results)
	fmt.Fprint(stdout, table)
	host, _ := os.Hostname()
	doc := fmt.Sprintf("# rsp bench\n\n`rsp bench %s` on %s (%s, kernel %s), %s, took %v. "+
		"Medians of the runs; \"× direct\" is the median over direct loopback's in the same run.\n\n%s",
		strings.Join(args, " "), host, cpuModel(), kernel(), time.Now().UTC().Format(time.DateOnly), time.Since(start).Round(time.Second), table)
	if err := os.WriteFile(*out, []byte(doc), 0o644); err != nil {
		fmt.Fprintf(stderr, "rsp: bench: write %s: %v\n", *out, err)
		return 1
	}
	if err := os.WriteFile(*chart, []byte(bench.SVG(results)), 0o644); err != nil {
		fmt.Fprintf(stderr, "rsp: bench: write %s: %v\n", *chart, err)
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s and %s in %v\n", *out, *chart, time.Since(start).Round(time.Second))
	return 0
}

const benchUsage = `usage: rsp bench [-quick] [-runs N] [-rounds N] [-idle-conns N] [-max-conns N] [-only NAMES] [-workloads WORDS] [-user NAME] [-proxy-cpus L] [-load-cpus L] [-out FILE] [-chart FILE]

Measures, in one run and side by side on loopback: direct connections, rsp
(splice and copy), a plain Go io.Copy proxy, and HAProxy, nginx stream and
systemd-socket-proxyd where installed. Where wrk and iperf3 are installed,
they load each contender too (HTTP to the benchmark's HTTP backend; iperf3's
own server). Each proxy is its own process; its CPU, RSS and fds come from
/proc.

  -quick          384 MiB transfers, 0.75 s runs, 4 MiB integrity echoes,
                  1000 idle connections (under 2 minutes)
  -runs N         repetitions of each figure (default 3)
  -rounds N       run the contenders N times in turn, forwards then
                  backwards, with -runs runs each, and pool the values, so
                  that a shared machine's drift falls on all of them alike
                  (default 1)
  -idle-conns N   idle connections for the memory figure (default 5000)
  -max-conns N    cap of rsp's concurrency probe (default 9990; not with -quick)
  -only NAMES     comma-separated contenders to run besides direct
  -workloads WORDS comma-separated words: run only the workloads whose
                  names contain one (e.g. "128 streams,close,integrity,idle")
  -rsp-args FLAGS extra flags for the rsp contenders, e.g. "-pipe-size 1048576"
  -user NAME      run the proxies as this unprivileged user (e.g. nobody), as
                  the packaged unit does: the kernel's per-user pipe limits
                  (fs.pipe-user-pages-soft) apply; needs root, and a binary
                  that user can read
  -proxy-cpus L   pin the proxies to CPU list L (taskset -c, e.g. 0-1)
  -load-cpus L    pin the load and the backend to CPU list L (e.g. 2-3)
  -out FILE       markdown table (default bench.md)
  -chart FILE     SVG chart (default bench.svg)
`

// kernel returns the running kernel's release.
func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// cpuModel names the CPU and core count from /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	model, n := "", 0
	for _, line := range strings.Split(string(b), "\n") {
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

// runBenchHelper runs the benchmark's hidden helper processes.
func runBenchHelper(name string, args []string, stdout, stderr io.Writer) int {
	var err error
	switch name {
	case "bench-backend":
		err = bench.ServeBackend(os.Stdin, stdout)
	case "bench-http":
		err = bench.ServeHTTP(os.Stdin, stdout)
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
