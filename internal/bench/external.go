package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Workloads driven by external tools, where installed.
const (
	wIperf1    = "iperf3: 1 stream"
	wIperf1R   = "iperf3: 1 stream, reverse"
	wIperf8    = "iperf3: 8 streams"
	wIperf8R   = "iperf3: 8 streams, reverse"
	wWrk1      = "wrk: HTTP/1.1 keep-alive, 1 conn"
	wWrk64     = "wrk: HTTP/1.1 keep-alive, 64 conns"
	wWrkClose  = "wrk: HTTP/1.1 Connection: close, 16 conns"
	httpBodyNB = 612 // the size of nginx's default page, as in the team's wrk runs
)

// tools are the external load generators found on this machine and the
// backends they talk to, shared by every contender of a run.
type tools struct {
	wrk, iperf3 string   // paths; "" when not installed
	http, iperf *process // their backends
}

// startTools finds wrk and iperf3 and starts their backends: the
// benchmark's HTTP server for wrk, an iperf3 server for iperf3. A tool
// that is missing, or whose backend does not start, is skipped with a
// line in the log.
func startTools(o *Options) *tools {
	t := &tools{}
	wantIperf := o.wants(wIperf1) || o.wants(wIperf1R) || o.wants(wIperf8) || o.wants(wIperf8R)
	wantWrk := o.wants(wWrk1) || o.wants(wWrk64) || o.wants(wWrkClose)
	if path, err := exec.LookPath("iperf3"); err != nil {
		o.logf("iperf3 not installed (make bench-peers installs it): its workloads skipped")
	} else if wantIperf {
		addr, err := freeAddr("127.0.0.1")
		if err == nil {
			_, port, _ := net.SplitHostPort(addr)
			t.iperf, err = start(o.load(exec.Command(path, "-s", "--forceflush", "-B", "127.0.0.1", "-p", port)), iperfReadyRE, false)
			if err == nil {
				t.iperf.addr = addr
			}
		}
		if err != nil {
			o.logf("iperf3 server did not start: %v; its workloads skipped", err)
		} else {
			t.iperf3 = path
		}
	}
	if path, err := exec.LookPath("wrk"); err != nil {
		o.logf("wrk not installed (make bench-peers installs it): its workloads skipped")
	} else if wantWrk {
		p, err := start(o.load(exec.Command(o.Rsp, "bench-http")), backendRE, false)
		if err != nil {
			o.logf("HTTP backend for wrk did not start: %v; wrk skipped", err)
		} else {
			t.wrk, t.http = path, p
		}
	}
	return t
}

var iperfReadyRE = regexp.MustCompile(`Server listening on (\d+)`)

// stop ends the tools' backends.
func (t *tools) stop() {
	t.http.stop()
	t.iperf.stop()
}

// external measures contender c with the external tools: each against a
// fresh proxy in front of that tool's backend (or the backend itself,
// for direct), with the proxy's CPU per unit.
func external(o *Options, c Contender, t *tools, host string) []Result {
	var out []Result
	dur := 2 * time.Second
	if o.Quick {
		dur = time.Second
	}
	if t.iperf3 != "" {
		out = append(out, withProxy(o, c, t.iperf, host, func(p *process, addr string) []Result {
			return iperfRuns(o, t.iperf3, p, addr, dur)
		})...)
	}
	if t.wrk != "" {
		out = append(out, withProxy(o, c, t.http, host, func(p *process, addr string) []Result {
			return wrkRuns(o, t.wrk, p, addr, dur)
		})...)
	}
	for i := range out {
		out[i].Contender = c.Name
	}
	return out
}

// withProxy starts c in front of backend (none for direct), runs the
// workloads and stops it.
func withProxy(o *Options, c Contender, backend *process, host string, run func(p *process, addr string) []Result) []Result {
	if c.start == nil {
		return run(nil, backend.addr)
	}
	p, err := c.start(o, backend.addr, host)
	if err != nil {
		return []Result{{Workload: "start for external load", Note: err.Error()}}
	}
	defer p.stop()
	return run(p, p.addr)
}

// iperfRuns runs iperf3's four workloads through addr.
func iperfRuns(o *Options, path string, p *process, addr string, dur time.Duration) []Result {
	host, port, _ := net.SplitHostPort(addr)
	var out []Result
	for _, w := range []struct {
		name string
		args []string
	}{{wIperf1, nil}, {wIperf1R, []string{"-R"}}, {wIperf8, []string{"-P", "8"}}, {wIperf8R, []string{"-P", "8", "-R"}}} {
		if !o.wants(w.name) {
			continue
		}
		o.logf("  %s", w.name)
		tp := Result{Workload: w.name, Unit: "Gbit/s"}
		cost := Result{Workload: w.name + wCPU, Unit: "s/GiB"}
		for range o.runs() {
			before := p.cpuTimes()
			args := append([]string{"-c", host, "-p", port, "-t", strconv.Itoa(int(dur.Seconds())), "-J"}, w.args...)
			raw, runErr := runTool(o, dur, path, args...)
			used := p.cpuTimes().sub(before)
			// Its report says what went wrong, when it ran at all.
			bits, bytes, err := parseIperf(raw)
			if err != nil && runErr != nil {
				err = fmt.Errorf("%w (%v)", runErr, err)
			}
			if err != nil {
				tp.Note = fmt.Sprintf("iperf3 %s: %v", strings.Join(args, " "), err)
				break
			}
			tp.Values = append(tp.Values, bits/1e9)
			if p != nil && bytes > 0 {
				cost.Values = append(cost.Values, (used.user+used.sys).Seconds()/(bytes/(1<<30)))
			}
			time.Sleep(100 * time.Millisecond) // the server gets ready for the next test
		}
		out = append(out, tp)
		if p != nil {
			out = append(out, cost)
		}
	}
	return out
}

// parseIperf reads the receiver's rate and byte count from iperf3's JSON
// report.
func parseIperf(raw []byte) (bitsPerSec, bytes float64, err error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			Received struct {
				Bytes float64 `json:"bytes"`
				Bits  float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return 0, 0, fmt.Errorf("its report: %w", err)
	}
	if r.Error != "" {
		return 0, 0, fmt.Errorf("%s", r.Error)
	}
	if r.End.Received.Bytes <= 0 {
		return 0, 0, fmt.Errorf("its report shows no bytes received")
	}
	return r.End.Received.Bits, r.End.Received.Bytes, nil
}

// wrkRuns runs wrk's three workloads through addr.
func wrkRuns(o *Options, path string, p *process, addr string, dur time.Duration) []Result {
	var out []Result
	for _, w := range []struct {
		name  string
		args  []string
		unit  string
		close bool // the server closes each connection
	}{
		{wWrk1, []string{"-t1", "-c1"}, "µs/req", false},
		{wWrk64, []string{"-t2", "-c64"}, "µs/req", false},
		{wWrkClose, []string{"-t2", "-c16", "-H", "Connection: close"}, "µs/conn", true},
	} {
		if !o.wants(w.name) {
			continue
		}
		o.logf("  %s", w.name)
		rate := Result{Workload: w.name, Unit: "req/s"}
		cost := Result{Workload: w.name + wCPU, Unit: w.unit}
		for range o.runs() {
			before := p.cpuTimes()
			args := append(w.args, "-d", fmt.Sprintf("%ds", int(dur.Seconds())), "http://"+addr+"/")
			raw, err := runTool(o, dur, path, args...)
			used := p.cpuTimes().sub(before)
			var reqs, perSec float64
			if err == nil {
				reqs, perSec, err = parseWrk(raw, w.close)
			}
			if err != nil {
				rate.Note = fmt.Sprintf("wrk %s: %v", strings.Join(args, " "), err)
				break
			}
			rate.Values = append(rate.Values, perSec)
			if p != nil {
				cost.Values = append(cost.Values, (used.user+used.sys).Seconds()/reqs*1e6)
			}
		}
		out = append(out, rate)
		if p != nil {
			out = append(out, cost)
		}
	}
	return out
}

var (
	wrkReqsRE   = regexp.MustCompile(`(\d+) requests in `)
	wrkRateRE   = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkErrorsRE = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkBadRE    = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// runTool runs an external load generator with the load's CPUs and
// returns its standard output; one that has not ended well after the
// run's duration is killed.
func runTool(o *Options, dur time.Duration, path string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	defer cancel()
	cmd := o.load(exec.Command(path, args...))
	run := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	run.Env, run.Dir = cmd.Env, cmd.Dir
	return run.Output()
}

// parseWrk reads the request count and rate from wrk's report. Failed
// connections, timeouts and bad responses make it an error: a rate
// counted over failures says nothing. Read errors are how wrk counts a
// server's close after a Connection: close response, so they are taken
// only where the server closes (closing), and no more than one per
// request.
func parseWrk(raw []byte, closing bool) (reqs, perSec float64, err error) {
	m, r := wrkReqsRE.FindSubmatch(raw), wrkRateRE.FindSubmatch(raw)
	if m == nil || r == nil {
		return 0, 0, fmt.Errorf("no rate in its report: %q", firstLine(raw))
	}
	reqs, _ = strconv.ParseFloat(string(m[1]), 64)
	perSec, _ = strconv.ParseFloat(string(r[1]), 64)
	if e := wrkErrorsRE.FindSubmatch(raw); e != nil {
		reads, _ := strconv.ParseFloat(string(e[2]), 64)
		if string(e[1]) != "0" || string(e[3]) != "0" || string(e[4]) != "0" || reads > 0 && (!closing || reads > reqs) {
			return 0, 0, fmt.Errorf("socket errors: %s", e[0])
		}
	}
	if b := wrkBadRE.FindSubmatch(raw); b != nil {
		return 0, 0, fmt.Errorf("%s bad responses", b[1])
	}
	if reqs == 0 {
		return 0, 0, fmt.Errorf("no request completed")
	}
	return reqs, perSec, nil
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte("\n"))
	return string(line)
}

// ServeHTTP runs the HTTP backend for wrk until stdin closes: every
// request gets a 612-byte page, the size of nginx's default one, and a
// request with Connection: close is answered and then closed by the
// server first. It prints "backend=ADDR" on stdout.
func ServeHTTP(stdin io.Reader, stdout io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench HTTP backend: %w", err)
	}
	page := bytes.Repeat([]byte("x"), httpBodyNB)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write(page)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintf(stdout, "backend=%s\n", ln.Addr())
	io.Copy(io.Discard, stdin)
	return srv.Close()
}
