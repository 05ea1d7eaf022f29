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
	"syscall"
	"time"
)

// Options says what to measure and how hard.
type Options struct {
	Rsp       string   // path of the rsp binary (the helpers are its hidden subcommands)
	Quick     bool     // smaller transfers, shorter runs, fewer connections
	Runs      int      // repetitions of each figure; 0 means 3
	IdleConns int      // idle connections for the memory figure; 0 means 5000 (1000 quick)
	MaxConns  int      // cap of rsp's concurrency probe; 0 means 9990; skipped when quick
	Only      []string // contender names to run (direct always runs); empty means all
	// Workloads are words that pick the workloads to run: one runs if its
	// name contains any of them; empty runs all.
	Workloads []string
	RspArgs   []string  // extra flags for the rsp contenders
	Log       io.Writer // progress lines; nil discards
	// User runs the proxies as this user (a name or a uid) without
	// capabilities, as the packaged unit's DynamicUser= runs rsp, where
	// the kernel's per-user pipe limits apply; "" runs them as this
	// process's user.
	User string
	// ProxyCPUs and LoadCPUs pin the proxies, and this process and the
	// backend, to CPU lists (taskset -c syntax, "0-3,8"); "" leaves them
	// free.
	ProxyCPUs, LoadCPUs string
	// Rounds runs every contender that many times in turn, forwards and
	// then backwards, each time with Runs runs of each figure, and pools
	// the values: drift of a shared machine then falls on every contender
	// alike instead of on whichever ran last. 0 means 1.
	Rounds int

	cred *syscall.Credential // from User
}

func (o *Options) logf(format string, a ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", a...)
	}
}

// workloadNames are the names -workloads words are matched against.
var workloadNames = []string{wUp1, wDown1, wUp8, wDown8, wUp128, wRR1, wRR64, wConns, wClosed,
	fmt.Sprintf(wIntegr, 16), wIdleRSS, wIperf1, wIperf1R, wIperf8, wIperf8R, wWrk1, wWrk64, wWrkClose}

// checkWorkloads refuses a word of Workloads that no workload's name
// holds: a typo would otherwise measure nothing and say nothing.
func (o *Options) checkWorkloads() error {
	for _, w := range o.Workloads {
		if !slices.ContainsFunc(workloadNames, func(n string) bool { return strings.Contains(strings.ToLower(n), strings.ToLower(w)) }) {
			return fmt.Errorf("-workloads %q: no workload's name holds it (they are: %s)", w, strings.Join(workloadNames, "; "))
		}
	}
	return nil
}

// wants reports whether workload is one to run (Workloads).
func (o *Options) wants(workload string) bool {
	if len(o.Workloads) == 0 {
		return true
	}
	return slices.ContainsFunc(o.Workloads, func(w string) bool {
		return strings.Contains(strings.ToLower(workload), strings.ToLower(w))
	})
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
	wUp1    = "upload, 1 stream"
	wDown1  = "download, 1 stream"
	wUp8    = "upload, 8 streams"
	wDown8  = "download, 8 streams"
	wUp128  = "upload, 128 streams"
	wCPU    = " — proxy CPU"
	wEndCPU = " — client+backend CPU"
	// wAllCPU is the proxy's and the endpoints' CPU together. On
	// loopback, work moves between them: a proxy whose send queue is full
	// has its bytes sent by the backend's acknowledgements, on the
	// backend's CPU time, so only the sum compares proxies fairly.
	wAllCPU  = " — proxy+client+backend CPU"
	wKernel  = " — proxy CPU in kernel"
	wRR1     = "64 B round trips, 1 conn"
	wRR64    = "64 B round trips, 64 conns"
	wP50     = " — p50"
	wP99     = " — p99"
	wConns   = "new connections, 16 clients"
	wClosed  = "HTTP/1.1 Connection: close, server closes first, 16 clients"
	wIdleRSS = "idle: RSS per connection"
	wIdleFDs = "idle: fds per connection"
	wIntegr  = "integrity: 64 × %d MiB echoes, half-close"
	wMax     = "concurrent connections under the fd limit"
)

// Run measures every contender and returns the results in order.
func Run(o *Options) ([]Result, error) {
	if err := o.setUp(); err != nil {
		return nil, err
	}
	backend, err := startBackend(o)
	if err != nil {
		return nil, err
	}
	defer backend.stop()
	t := startTools(o)
	defer t.stop()
	src := &sources{}
	var out []Result
	if err := o.checkWorkloads(); err != nil {
		return nil, err
	}
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
	var picked []Contender
	for _, c := range cs {
		if c.start == nil || len(o.Only) == 0 || slices.Contains(o.Only, c.Name) {
			picked = append(picked, c)
		}
	}
	// Each contender keeps its place in the table and its own 127.0.0.N
	// through every round, whatever order the round runs them in.
	figures := make([][]Result, len(picked))
	for round := range max(o.Rounds, 1) {
		for _, i := range roundOrder(len(picked), round) {
			c := picked[i]
			host := fmt.Sprintf("127.0.0.%d", 2+i)
			if o.Rounds > 1 {
				o.logf("== %s (round %d of %d)", c.Name, round+1, o.Rounds)
			} else {
				o.logf("== %s", c.Name)
			}
			figures[i] = pool(figures[i], measure(o, c, backend, host, src), round)
			figures[i] = pool(figures[i], external(o, c, t, host), round)
		}
	}
	for _, f := range figures {
		out = append(out, f...)
	}
	return out, nil
}

// roundOrder is the order in which round (from 0) runs n contenders, as
// indexes: as given in even rounds, reversed in odd ones, so that each
// contender's runs average over the same stretch of time.
func roundOrder(n, round int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
		if round%2 == 1 {
			order[i] = n - 1 - i
		}
	}
	return order
}

// pool adds one round's results of a contender to those of the rounds
// before: a figure already there (same workload and contender) gets the
// new values, a new one is appended. A note that differs from the ones
// kept is added with its round's number, so that a round that failed
// ("FAILED: bytes lost", a proxy that would not start) is never hidden by
// one that did not.
func pool(into, round []Result, n int) []Result {
	for _, r := range round {
		i := slices.IndexFunc(into, func(have Result) bool {
			return have.Workload == r.Workload && have.Contender == r.Contender
		})
		if i < 0 {
			if r.Note != "" && n > 0 {
				r.Note = fmt.Sprintf("round %d: %s", n+1, r.Note)
			}
			into = append(into, r)
			continue
		}
		into[i].Values = append(into[i].Values, r.Values...)
		if r.Note != "" && !strings.Contains(into[i].Note, r.Note) {
			into[i].Note = strings.TrimPrefix(fmt.Sprintf("%s; round %d: %s", into[i].Note, n+1, r.Note), "; ")
		}
	}
	return into
}

// meter reads the CPU time of a proxy and of the two endpoints around a
// workload: this process, whose goroutines are the clients, and the
// backend. With both, a figure shows what the proxy costs per unit of work
// next to what the client and server cost for the same unit.
type meter struct {
	proxy, backend *process
	p, e           cpuTimes // readings at start
}

func (m *meter) start() {
	m.p, m.e = m.proxy.cpuTimes(), m.endpoints()
}

func (m *meter) endpoints() cpuTimes {
	s, b := cpuOf("self"), m.backend.cpuTimes()
	return cpuTimes{s.user + b.user, s.sys + b.sys}
}

// stop returns the CPU time the proxy and the endpoints used since start.
func (m *meter) stop() (proxy, endpoints cpuTimes) {
	return m.proxy.cpuTimes().sub(m.p), m.endpoints().sub(m.e)
}

// costs collects, over the runs of one workload, the CPU time per unit
// of work (a GiB, a round trip, a connection) of the proxy and of the
// endpoints, and the kernel's share of the proxy's.
type costs struct {
	proxy, ends, all, kernel Result
}

func newCosts(workload, unit string) *costs {
	return &costs{
		proxy:  Result{Workload: workload + wCPU, Unit: unit},
		ends:   Result{Workload: workload + wEndCPU, Unit: unit},
		all:    Result{Workload: workload + wAllCPU, Unit: unit},
		kernel: Result{Workload: workload + wKernel, Unit: "%"},
	}
}

// add records one run that did units of work, with scale the figure's
// unit in seconds (1e-6 for µs).
func (c *costs) add(proxy, ends cpuTimes, units, scale float64) {
	if units <= 0 {
		return
	}
	p, e := proxy.user+proxy.sys, ends.user+ends.sys
	if p > 0 {
		c.proxy.Values = append(c.proxy.Values, p.Seconds()/scale/units)
		c.kernel.Values = append(c.kernel.Values, 100*proxy.sys.Seconds()/p.Seconds())
	}
	c.ends.Values = append(c.ends.Values, e.Seconds()/scale/units)
	c.all.Values = append(c.all.Values, (p+e).Seconds()/scale/units)
}

// results returns the rows that apply: the proxy's only where there is
// one. Without one (direct) the sum is the endpoints' alone, the baseline
// of the others' sums.
func (c *costs) results(withProxy bool) []Result {
	if !withProxy {
		return []Result{c.ends, c.all}
	}
	return []Result{c.proxy, c.ends, c.all, c.kernel}
}

// measure runs every workload against one contender.
func measure(o *Options, c Contender, backendProc *process, host string, src *sources) []Result {
	var p *process
	backend := backendProc.addr
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
	m := &meter{proxy: p, backend: backendProc}
	bulk := int64(2 << 30)
	dur := 2 * time.Second
	if o.Quick {
		bulk, dur = 384<<20, 750*time.Millisecond
	}
	for _, b := range []struct {
		name    string
		streams int
		run     func(*sources, string, int, int64) (time.Duration, error)
	}{{wUp1, 1, upload}, {wDown1, 1, download}, {wUp8, 8, upload}, {wDown8, 8, download}, {wUp128, 128, upload}} {
		if !o.wants(b.name) {
			continue
		}
		o.logf("  %s", b.name)
		tp := Result{Workload: b.name, Unit: "Gbit/s"}
		cost := newCosts(b.name, "s/GiB")
		for range o.runs() {
			m.start()
			d, err := b.run(src, addr, b.streams, bulk)
			if err != nil {
				tp.Note = err.Error()
				break
			}
			tp.Values = append(tp.Values, float64(bulk*8)/d.Seconds()/1e9)
			pc, ec := m.stop()
			cost.add(pc, ec, float64(bulk)/(1<<30), 1)
		}
		add(tp)
		for _, r := range cost.results(p != nil) {
			add(r)
		}
	}
	for _, rr := range []struct {
		name  string
		conns int
	}{{wRR1, 1}, {wRR64, 64}} {
		if !o.wants(rr.name) {
			continue
		}
		o.logf("  %s", rr.name)
		rate := Result{Workload: rr.name, Unit: "rt/s"}
		p50 := Result{Workload: rr.name + wP50, Unit: "µs"}
		p99 := Result{Workload: rr.name + wP99, Unit: "µs"}
		cost := newCosts(rr.name, "µs/rt")
		for range o.runs() {
			m.start()
			lat, err := roundTrips(src, addr, rr.conns, dur)
			if err != nil {
				rate.Note = err.Error()
				break
			}
			pc, ec := m.stop()
			cost.add(pc, ec, float64(len(lat)), 1e-6)
			slices.Sort(lat)
			rate.Values = append(rate.Values, float64(len(lat))/dur.Seconds())
			p50.Values = append(p50.Values, float64(percentile(lat, 50).Microseconds()))
			p99.Values = append(p99.Values, float64(percentile(lat, 99).Microseconds()))
		}
		add(rate)
		add(p50)
		add(p99)
		if rr.conns > 1 {
			for _, r := range cost.results(p != nil) {
				add(r)
			}
		}
	}
	for _, w := range []struct {
		name string
		run  func(*sources, string, int, time.Duration) (int64, error)
	}{{wConns, newConns}, {wClosed, closedByServer}} {
		if !o.wants(w.name) {
			continue
		}
		o.logf("  %s", w.name)
		cps := Result{Workload: w.name, Unit: "conn/s"}
		cost := newCosts(w.name, "µs/conn")
		for range o.runs() {
			m.start()
			n, err := w.run(src, addr, 16, dur)
			if err != nil {
				cps.Note = err.Error()
				break
			}
			pc, ec := m.stop()
			cost.add(pc, ec, float64(n), 1e-6)
			cps.Values = append(cps.Values, float64(n)/dur.Seconds())
		}
		add(cps)
		for _, r := range cost.results(p != nil) {
			add(r)
		}
	}
	size := int64(16 << 20)
	if o.Quick {
		size = 4 << 20
	}
	integ := Result{Workload: fmt.Sprintf(wIntegr, size>>20), Unit: "corrupted"}
	if o.wants(integ.Workload) {
		checkIntegrity(o, src, addr, size, integ, add)
	}
	if p == nil || !o.wants(wIdleRSS) {
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
	p, err := c.start(o, backend, host)
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

// checkIntegrity runs the integrity echoes through addr and adds their
// figure to integ: the count of echoes that came back wrong.
func checkIntegrity(o *Options, src *sources, addr string, size int64, integ Result, add func(Result)) {
	o.logf("  %s", integ.Workload)
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
}
