package metrics

import (
	"runtime"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"rsp/internal/splice"
)

// collector builds every rsp_ metric at scrape time from Sources.
type collector struct {
	src Sources

	feAccepted, feActive, feEnded, feIn, feOut, feMax        *prometheus.Desc
	srvIn, srvOut, srvAttempts, srvFailures, srvRetries      *prometheus.Desc
	srvConns, srvActive, srvState, srvWeight, srvChecks      *prometheus.Desc
	connectSeconds                                           *prometheus.Desc
	active, maxConn, relayed, pipesOpen, pipesPooled, pipeSz *prometheus.Desc
	pipeBudget, pipePages, pipesSmall                        *prometheus.Desc
	loopBusy, reloads, reloadOK, reloadAt, suppressed, build *prometheus.Desc
	dropped, journalKept, journalWaiting                     *prometheus.Desc
}

func newCollector(src Sources) *collector {
	fe := []string{"frontend"}
	srv := []string{"backend", "server"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &collector{
		src:            src,
		feAccepted:     d("rsp_frontend_connections_accepted_total", "Connections accepted by the frontend.", fe...),
		feActive:       d("rsp_frontend_connections_active", "Connections of the frontend live now.", fe...),
		feEnded:        d("rsp_frontend_connections_ended_total", "Connections of the frontend ended, by cause.", "frontend", "cause"),
		feIn:           d("rsp_frontend_bytes_in_total", "Bytes from the frontend's clients delivered to servers.", fe...),
		feOut:          d("rsp_frontend_bytes_out_total", "Bytes from servers delivered to the frontend's clients.", fe...),
		feMax:          d("rsp_frontend_max_connections", "The frontend's maxconn (0: no limit).", fe...),
		srvIn:          d("rsp_server_bytes_in_total", "Bytes from clients delivered to the server.", srv...),
		srvOut:         d("rsp_server_bytes_out_total", "Bytes from the server delivered to clients.", srv...),
		srvAttempts:    d("rsp_server_connect_attempts_total", "Connects to the server started.", srv...),
		srvFailures:    d("rsp_server_connect_failures_total", "Connects to the server that failed or timed out.", srv...),
		srvRetries:     d("rsp_server_connect_retries_total", "Failed connects to the server after which another server was tried.", srv...),
		srvConns:       d("rsp_server_connections_total", "Connects to the server that succeeded.", srv...),
		srvActive:      d("rsp_server_connections_active", "Connections to the server live now.", srv...),
		srvState:       d("rsp_server_state", "1 for the server's current state, 0 for the others.", "backend", "server", "state"),
		srvWeight:      d("rsp_server_weight", "The server's effective weight, runtime changes included.", srv...),
		srvChecks:      d("rsp_server_check_results_total", "Active health checks of the server, by result.", "backend", "server", "result"),
		connectSeconds: d("rsp_backend_connect_duration_seconds", "Time taken by successful connects to the backend's servers.", "backend"),
		active:         d("rsp_connections_active", "Connections live now, every frontend.", nil...),
		maxConn:        d("rsp_max_connections", "[global] maxconn (0: no limit).", nil...),
		relayed:        d("rsp_relayed_bytes_total", "Bytes relayed, by how: splice (in the kernel) or copy (through user space).", "method"),
		pipesOpen:      d("rsp_pipes_open", "Pipes open, in use or pooled (two fds each).", nil...),
		pipesPooled:    d("rsp_pipes_pooled", "Pipes waiting empty in the pools.", nil...),
		pipeSz:         d("rsp_pipe_size_bytes", "Capacity the kernel granted the pipes (the smallest among the event loops' latest).", nil...),
		pipeBudget:     d("rsp_pipe_budget_pages", "Pages of pipes rsp allows itself under fs.pipe-user-pages-soft as an unprivileged user; 0: no limit.", nil...),
		pipePages:      d("rsp_pipe_pages", "Pages of pipe buffers rsp's open pipes hold.", nil...),
		pipesSmall:     d("rsp_pipes_small_total", "Pipes made smaller than pipe_size to stay within the pipe budget.", nil...),
		loopBusy:       d("rsp_event_loop_busy_seconds_total", "Time each event loop spent working, outside epoll_wait.", "loop"),
		reloads:        d("rsp_config_reloads_total", "Configuration reloads, by result.", "result"),
		reloadOK:       d("rsp_config_last_reload_successful", "1 if the last reload succeeded (or none was tried), else 0.", nil...),
		reloadAt:       d("rsp_config_last_reload_success_timestamp_seconds", "When the running configuration was loaded, in Unix time.", nil...),
		suppressed:     d("rsp_log_lines_suppressed_total", "Connection-log error lines dropped by the rate limit, by cause.", "cause"),
		dropped:        d("rsp_log_lines_dropped_total", "Connection-log lines dropped because the log output did not keep up.", nil...),
		journalKept:    d("rsp_crash_journal_connections", "Connections whose sockets systemd's descriptor store holds (handover = \"crash\"): what a crash now leaves to the next rsp.", nil...),
		journalWaiting: d("rsp_crash_journal_waiting", "Stores and removals for systemd's descriptor store waiting in rsp for room in systemd's queue; a connection whose store waits is reset by a crash.", nil...),
		build:          d("rsp_build_info", "rsp's version and the Go that built it (always 1).", "version", "goversion"),
	}
}

// Describe sends nothing: the collector is unchecked, since which series
// exist depends on the configuration of the moment.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

// Collect builds the metrics from a fresh snapshot.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.build, 1, c.src.Version, runtime.Version())
	c.collectReloads(counter, gauge)
	if cl := c.src.ConnLog; cl != nil {
		sup := cl.Suppressed()
		for cause := range splice.NumCauses {
			counter(c.suppressed, float64(sup[cause]), cause.String())
		}
		counter(c.dropped, float64(cl.Dropped()))
	}
	if c.src.MaxConn != nil {
		gauge(c.maxConn, float64(c.src.MaxConn()))
	}
	if c.src.Journal != nil {
		kept, waiting := c.src.Journal()
		gauge(c.journalKept, float64(kept))
		gauge(c.journalWaiting, float64(waiting))
	}
	if c.src.Relay == nil {
		return
	}
	snap := c.src.Relay.Snapshot(snapshotTimeout)
	gauge(c.active, float64(snap.Active))
	counter(c.relayed, float64(snap.Spliced), "splice")
	counter(c.relayed, float64(snap.Copied), "copy")
	gauge(c.pipesOpen, float64(snap.Pipes))
	gauge(c.pipesPooled, float64(snap.IdlePipes))
	gauge(c.pipeSz, float64(snap.PipeSize))
	gauge(c.pipeBudget, float64(snap.PipeBudget))
	gauge(c.pipePages, float64(snap.PipePages))
	counter(c.pipesSmall, float64(snap.SmallPipes))
	for i, b := range snap.LoopBusy {
		counter(c.loopBusy, b.Seconds(), strconv.Itoa(i))
	}
	c.collectFrontends(snap, counter, gauge)
	c.collectServers(snap, counter, gauge, ch)
}

type emit func(d *prometheus.Desc, v float64, labels ...string)

func (c *collector) collectReloads(counter, gauge emit) {
	r := c.src.Reloads
	if r == nil {
		return
	}
	ok, failed, lastOK, lastAt := r.read()
	counter(c.reloads, ok, "success")
	counter(c.reloads, failed, "failure")
	v := 0.0
	if lastOK {
		v = 1
	}
	gauge(c.reloadOK, v)
	if !lastAt.IsZero() {
		gauge(c.reloadAt, float64(lastAt.UnixNano())/1e9)
	}
}

// collectFrontends reports every configured frontend, and any other that
// still has counters (one removed by a reload).
func (c *collector) collectFrontends(snap *splice.Snapshot, counter, gauge emit) {
	seen := map[string]bool{}
	var names []string
	if c.src.Frontends != nil {
		for _, f := range c.src.Frontends() {
			if !seen[f.Name] {
				seen[f.Name] = true
				names = append(names, f.Name)
				gauge(c.feMax, float64(f.MaxConn), f.Name)
			}
		}
	}
	for name := range snap.Frontends {
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	for _, name := range names {
		f := snap.Frontends[name]
		if f == nil {
			f = &splice.FrontendStats{}
		}
		counter(c.feAccepted, float64(f.Accepted), name)
		gauge(c.feActive, float64(f.Active), name)
		counter(c.feIn, float64(f.BytesIn), name)
		counter(c.feOut, float64(f.BytesOut), name)
		for cause := range splice.NumCauses {
			counter(c.feEnded, float64(f.Ended[cause]), name, cause.String())
		}
	}
}

// collectServers reports every server of the pools, and any other that
// still has counters; the connect histogram is summed per backend.
func (c *collector) collectServers(snap *splice.Snapshot, counter, gauge emit, ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	var names []string
	if c.src.Servers != nil {
		for _, s := range c.src.Servers() {
			name := s.Backend + "/" + s.Server
			if seen[name] {
				continue
			}
			seen[name] = true
			names = append(names, name)
			for _, st := range States() {
				v := 0.0
				if st == s.State {
					v = 1
				}
				gauge(c.srvState, v, s.Backend, s.Server, st)
			}
			gauge(c.srvWeight, float64(s.Weight), s.Backend, s.Server)
			gauge(c.srvActive, float64(s.Active), s.Backend, s.Server)
			counter(c.srvChecks, float64(s.ChecksPassed), s.Backend, s.Server, "pass")
			counter(c.srvChecks, float64(s.ChecksFailed), s.Backend, s.Server, "fail")
		}
	}
	for name := range snap.Servers {
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	type hist struct {
		counts [len(splice.ServerStats{}.ConnectCounts)]int64
		sum    float64
		n      uint64
	}
	backends := map[string]*hist{}
	var order []string
	for _, name := range names {
		backend, server, _ := strings.Cut(name, "/")
		s := snap.Servers[name]
		if s == nil {
			s = &splice.ServerStats{}
		}
		counter(c.srvIn, float64(s.BytesIn), backend, server)
		counter(c.srvOut, float64(s.BytesOut), backend, server)
		counter(c.srvAttempts, float64(s.Attempts), backend, server)
		counter(c.srvFailures, float64(s.Failures), backend, server)
		counter(c.srvRetries, float64(s.Retries), backend, server)
		counter(c.srvConns, float64(s.Connects), backend, server)
		h := backends[backend]
		if h == nil {
			h = &hist{}
			backends[backend] = h
			order = append(order, backend)
		}
		for i, n := range s.ConnectCounts {
			h.counts[i] += n
			h.n += uint64(n)
		}
		h.sum += s.ConnectTime.Seconds()
	}
	bounds := splice.ConnectBuckets()
	for _, backend := range order {
		h := backends[backend]
		buckets := make(map[float64]uint64, len(bounds))
		var cum uint64
		for i, le := range bounds {
			cum += uint64(h.counts[i])
			buckets[le] = cum
		}
		ch <- prometheus.MustNewConstHistogram(c.connectSeconds, h.n, h.sum, buckets, backend)
	}
}
