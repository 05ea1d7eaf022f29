// Package metrics exposes rsp's counters to Prometheus: connections,
// bytes, connects and their latency, server states, pipes, event-loop
// busy time and reloads, plus Go's and the process's own collectors
// (process_open_fds and process_max_fds give the fds in use and the
// limit).
//
// Typical usage:
//
//	reg := metrics.NewRegistry(metrics.Sources{Relay: relay, Servers: px.ServerStates, ...})
//	srv := metrics.Serve(listener, reg, logger) // GET /metrics
//	...
//	srv.Close()
//
// Nothing is counted here: at each scrape the collector asks the relay
// for a Snapshot (each event loop folds its own counters) and the pools
// for their servers' states, so the paths that move bytes pay nothing
// for metrics.
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"rsp/internal/connlog"
	"rsp/internal/splice"
)

// ServerState is what a pool knows of one server at a scrape.
type ServerState struct {
	Backend, Server string
	State           string // "up", "down", "draining" or "maintenance"
	Weight          int
	Active          int64
	ChecksPassed    uint64
	ChecksFailed    uint64
}

// FrontendConfig is one configured frontend.
type FrontendConfig struct {
	Name    string
	MaxConn int // 0: no limit
}

// Sources are where the collector reads at each scrape. Any may be nil.
type Sources struct {
	Relay     *splice.Relay
	Servers   func() []ServerState
	Frontends func() []FrontendConfig
	MaxConn   func() int // [global] maxconn; 0: no limit
	Reloads   *Reloads
	ConnLog   *connlog.Logger
	Version   string
	// Journal returns, with handover = "crash", how many connections'
	// sockets systemd's store holds and how many messages to it wait;
	// nil: off.
	Journal func() (kept, waiting int64)
}

// States returns the server states, each a series of rsp_server_state.
func States() []string { return []string{"up", "down", "draining", "maintenance"} }

// snapshotTimeout bounds how long a scrape waits for each event loop.
const snapshotTimeout = 2 * time.Second

// NewRegistry returns a registry with rsp's collector and Go's and the
// process's.
func NewRegistry(src Sources) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(newCollector(src))
	return reg
}

// Serve serves GET /metrics for reg on ln until Close. Errors after the
// start are logged.
func Serve(ln net.Listener, reg *prometheus.Registry, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slogPrinter{log},
		ErrorHandling: promhttp.ContinueOnError,
		// Each scrape asks every event loop for its counters: a flood of
		// scrapes must not take the loops' time.
		MaxRequestsInFlight: 2,
		Timeout:             10 * time.Second,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("rsp: metrics at /metrics\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go serveMetrics(srv, ln, log)
	return srv
}

func serveMetrics(srv *http.Server, ln net.Listener, log *slog.Logger) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics listener failed; /metrics is no longer served", "listen", ln.Addr().String(), "err", err)
	}
}

type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) {
	p.log.Warn("metrics scrape failed", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}

// Reloads counts configuration reloads and their outcome.
type Reloads struct {
	mu      sync.Mutex
	ok      float64
	failed  float64
	lastOK  bool
	lastAt  time.Time // of the last successful load (the start counts)
	started bool
}

// Loaded records the configuration loaded at start.
func (r *Reloads) Loaded() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastOK, r.lastAt, r.started = true, time.Now(), true
}

// Record counts one reload; err is nil if it succeeded.
func (r *Reloads) Record(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.failed++
		r.lastOK = false
		return
	}
	r.ok++
	r.lastOK, r.lastAt = true, time.Now()
}

func (r *Reloads) read() (ok, failed float64, lastOK bool, lastAt time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ok, r.failed, r.lastOK, r.lastAt
}
