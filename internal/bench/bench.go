// Package bench measures rsp on loopback against direct connections (the
// physical limit), a plain Go io.Copy proxy and, where installed, HAProxy,
// nginx stream and systemd-socket-proxyd, in one run and side by side.
// Every proxy runs as its own process, and its CPU time, memory and fds
// are read from /proc, not from the proxy's own say-so.
package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Options says what to measure and how hard.
type Options struct {
	Rsp       string    // path of the rsp binary (the helpers are its hidden subcommands)
	Quick     bool      // smaller transfers, shorter runs, fewer connections
	Runs      int       // repetitions of each figure; 0 means 3
	IdleConns int       // idle connections for the memory figure; 0 means 5000 (1000 quick)
	MaxConns  int       // cap of rsp's concurrency probe; 0 means 9990; skipped when quick
	Only      []string  // contender names to run (direct always runs); empty means all
	RspArgs   []string  // extra flags for the rsp contenders
	Log       io.Writer // progress lines; nil discards
}

func (o *Options) logf(format string, a ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", a...)
	}
}

func (o *Options) runs() int {
	if o.Runs > 0 {
		return o.Runs
	}
	return 3
}

// Result is one figure of one contender, over several runs.
type Result struct {
	Workload  string
	Contender string
	Unit      string
	Values    []float64 // one per run
	Note      string    // what went wrong, if the workload failed
}

// Median of the runs.
func (r Result) Median() float64 {
	v := slices.Clone(r.Values)
	slices.Sort(v)
	switch {
	case len(v) == 0:
		return 0
	case len(v)%2 == 1:
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Workload names, shared by the table and the chart.
const (
	wUp1     = "upload, 1 stream"
	wDown1   = "download, 1 stream"
	wUp8     = "upload, 8 streams"
	wDown8   = "download, 8 streams"
	wCPU     = " — proxy CPU"
	wRR1     = "64 B round trips, 1 conn"
	wRR64    = "64 B round trips, 64 conns"
	wP50     = " — p50"
	wP99     = " — p99"
	wConns   = "new connections, 16 clients"
	wIdleRSS = "idle: RSS per connection"
	wIdleFDs = "idle: fds per connection"
	wIntegr  = "integrity: 64 × %d MiB echoes, half-close"
	wMax     = "concurrent connections under the fd limit"
)

// Run measures every contender and returns the results in order.
func Run(o *Options) ([]Result, error) {
	backend, err := startBackend(o)
	if err != nil {
		return nil, err
	}
	defer backend.stop()
	src := &sources{}
	var out []Result
	host := 2 // each proxy listens on its own 127.0.0.N
	cs := contenders(o)
	for _, name := range o.Only {
		if !slices.ContainsFunc(cs, func(c Contender) bool { return c.Name == name }) {
			var names []string
			for _, c := range cs {
				names = append(names, c.Name)
			}
			return nil, fmt.Errorf("-only %q: no such contender here (installed: %s)", name, strings.Join(names, ", "))
		}
	}
	for _, c := range cs {
		if c.start != nil && len(o.Only) > 0 && !slices.Contains(o.Only, c.Name) {
			continue
		}
		o.logf("== %s", c.Name)
		out = append(out, measure(o, c, backend.addr, fmt.Sprintf("127.0.0.%d", host), src)...)
		host++
	}
	return out, nil
}

// measure runs every workload against one contender.
func measure(o *Options, c Contender, backend, host string, src *sources) []Result {
	var p *process
	addr := backend
	if c.start != nil {
		var err error
		p, err = c.start(o, backend, host)
		if err != nil {
			o.logf("  cannot start: %v", err)
			return []Result{{Workload: "start", Contender: c.Name, Note: err.Error()}}
		}
		// p is replaced by a fresh process for the idle figures: stop
		// whichever runs at the end, not the first one.
		defer func() { p.stop() }()
		addr = p.addr
	}
	if _, err := echoOnce(src, addr); err != nil {
		return []Result{{Workload: "start", Contender: c.Name, Note: "first echo failed: " + err.Error()}}
	}
	var out []Result
	add := func(r Result) {
		r.Contender = c.Name
		out = append(out, r)
	}
	bulk := int64(2 << 30)
	dur := 2 * time.Second
	if o.Quick {
		bulk, dur = 384<<20, 750*time.Millisecond
	}
	for _, b := range []struct {
		name    string
		streams int
		run     func(*sources, string, int, int64) (time.Duration, error)
	}{{wUp1, 1, upload}, {wDown1, 1, download}, {wUp8, 8, upload}, {wDown8, 8, download}} {
		o.logf("  %s", b.name)
		tp := Result{Workload: b.name, Unit: "Gbit/s"}
		cpu := Result{Workload: b.name + wCPU, Unit: "s/GiB"}
		for range o.runs() {
			before := p.cpu()
			d, err := b.run(src, addr, b.streams, bulk)
			if err != nil {
				tp.Note = err.Error()
				break
			}
			tp.Values = append(tp.Values, float64(bulk*8)/d.Seconds()/1e9)
			cpu.Values = append(cpu.Values, (p.cpu()-before).Seconds()/(float64(bulk)/(1<<30)))
		}
		add(tp)
		if p != nil {
			add(cpu)
		}
	}
	for _, rr := range []struct {
		name  string
		conns int
	}{{wRR1, 1}, {wRR64, 64}} {
		o.logf("  %s", rr.name)
		rate := Result{Workload: rr.name, Unit: "rt/s"}
		p50 := Result{Workload: rr.name + wP50, Unit: "µs"}
		p99 := Result{Workload: rr.name + wP99, Unit: "µs"}
		for range o.runs() {
			lat, err := roundTrips(src, addr, rr.conns, dur)
			if err != nil {
				rate.Note = err.Error()
				break
			}
			slices.Sort(lat)
			rate.Values = append(rate.Values, float64(len(lat))/dur.Seconds())
			p50.Values = append(p50.Values, float64(percentile(lat, 50).Microseconds()))
			p99.Values = append(p99.Values, float64(percentile(lat, 99).Microseconds()))
		}
		add(rate)
		add(p50)
		add(p99)
	}
	o.logf("  %s", wConns)
	cps := Result{Workload: wConns, Unit: "conn/s"}
	for range o.runs() {
		n, err := newConns(src, addr, 16, dur)
		if err != nil {
			cps.Note = err.Error()
			break
		}
		cps.Values = append(cps.Values, float64(n)/dur.Seconds())
	}
	add(cps)
	o.logf("  %s", wIntegr)
	size := int64(16 << 20)
	if o.Quick {
		size = 4 << 20
	}
	integ := Result{Workload: fmt.Sprintf(wIntegr, size>>20), Unit: "corrupted"}
	bad, err := integrity(src, addr, 64, size)
	integ.Values = []float64{float64(bad)}
	switch {
	case err != nil:
		integ.Note = "FAILED: " + err.Error()
	case bad > 0:
		integ.Note = "FAILED: bytes lost or changed (a proxy without half-close loses the echo's tail)"
	default:
		integ.Note = "ok"
	}
	add(integ)
	if p == nil {
		return out
	}
	n := o.IdleConns
	if n == 0 {
		n = 5000
		if o.Quick {
			n = 1000
		}
	}
	// A fresh process, so that memory left from the bulk runs does not
	// hide (or inflate) what idle connections cost.
	p.stop()
	p, err = c.start(o, backend, host)
	if err != nil {
		add(Result{Workload: wIdleRSS, Note: "restart failed: " + err.Error()})
		return out
	}
	addr = p.addr
	o.logf("  idle connections (%d)", n)
	rss, fds, got, err := idle(src, p, addr, n)
	note := ""
	if err != nil {
		note = fmt.Sprintf("only %d of %d connections worked: %v", got, n, err)
	}
	add(Result{Workload: fmt.Sprintf("%s (%d)", wIdleRSS, n), Unit: "KiB", Values: []float64{rss}, Note: note})
	add(Result{Workload: fmt.Sprintf("%s (%d)", wIdleFDs, n), Unit: "fds", Values: []float64{fds}, Note: note})
	if c.Name == "rsp splice" && !o.Quick {
		maxN := o.MaxConns
		if maxN == 0 {
			maxN = 9990
		}
		o.logf("  concurrent connections (up to %d)", maxN)
		conns, err := openIdle(src, addr, maxN)
		r := Result{Workload: wMax, Unit: "conns", Values: []float64{float64(len(conns))},
			Note: fmt.Sprintf("proxy held %d fds", p.fds())}
		if err != nil {
			r.Note += "; stopped by: " + err.Error()
		}
		closeAll(conns)
		add(r)
	}
	return out
}

// idle opens n connections through addr, each exchanging 16 bytes, and
// returns the proxy's RSS (KiB) and fds per connection while they idle,
// over the connections that worked (got); err says why any failed.
func idle(src *sources, p *process, addr string, n int) (rssPer, fdsPer float64, got int, err error) {
	time.Sleep(200 * time.Millisecond)
	rss0, err := p.rss()
	if err != nil {
		return 0, 0, 0, err
	}
	fds0 := p.fds()
	conns, err := openIdle(src, addr, n)
	defer closeAll(conns)
	if len(conns) == 0 {
		return 0, 0, 0, err
	}
	time.Sleep(500 * time.Millisecond)
	rss1, _ := p.rss()
	k := float64(len(conns))
	return float64(rss1-rss0) / k, float64(p.fds()-fds0) / k, len(conns), err
}
