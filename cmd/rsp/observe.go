package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"rsp/internal/activation"
	"rsp/internal/config"
	"rsp/internal/control"
	"rsp/internal/metrics"
	"rsp/internal/proxy"
	"rsp/internal/splice"
)

// metricsSocket is the FileDescriptorName= of the systemd socket that
// serves /metrics (rsp-metrics.socket).
const metricsSocket = config.MetricsSocket

// splitMetricsSockets takes the sockets named metricsSocket out of the
// ones systemd passed: they serve /metrics, never a frontend.
func splitMetricsSockets(sd []activation.Listener) (rest, metricsLns []activation.Listener) {
	for _, s := range sd {
		if s.Name == metricsSocket {
			metricsLns = append(metricsLns, s)
		} else {
			rest = append(rest, s)
		}
	}
	return rest, metricsLns
}

// serveMetrics serves /metrics on the systemd sockets named "metrics",
// or else on [global] metrics; nil when neither is set.
func serveMetrics(cfg *config.Config, sockets []activation.Listener, src metrics.Sources, log *slog.Logger) (*multiServer, error) {
	if len(sockets) == 0 && cfg.Metrics == "" {
		return nil, nil
	}
	reg := metrics.NewRegistry(src)
	ms := &multiServer{}
	if len(sockets) == 0 {
		ln, err := activation.Listen(cfg.Metrics)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		sockets = []activation.Listener{ln}
	} else if cfg.Metrics != "" {
		log.Info("metrics served on the systemd socket; [global] metrics is ignored", "metrics", cfg.Metrics)
	}
	for _, s := range sockets {
		ms.srvs = append(ms.srvs, metrics.Serve(s.Listener, reg, log))
		log.Info("serving metrics", "listen", s.Addr().String(), "path", "/metrics")
	}
	return ms, nil
}

// multiServer is the /metrics servers, one per listener.
type multiServer struct{ srvs []*http.Server }

// Close stops serving metrics.
func (m *multiServer) Close() {
	for _, s := range m.srvs {
		s.Close()
	}
}

// runningConfig is what the metrics report of the configuration now
// running; a reload replaces it.
type runningConfig struct {
	mu       sync.Mutex
	fronts   []metrics.FrontendConfig
	maxConns int
}

func (r *runningConfig) set(cfg *config.Config) {
	var fronts []metrics.FrontendConfig
	for _, f := range cfg.Frontends {
		fronts = append(fronts, metrics.FrontendConfig{Name: f.Name, MaxConn: f.MaxConn})
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fronts, r.maxConns = fronts, cfg.MaxConn
}

func (r *runningConfig) frontends() []metrics.FrontendConfig {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fronts
}

func (r *runningConfig) maxConn() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxConns
}

// serverStates is what the pools know of their servers, for metrics.
func serverStates(px *proxy.Proxy) []metrics.ServerState {
	views := px.Servers()
	out := make([]metrics.ServerState, 0, len(views))
	for _, v := range views {
		out = append(out, metrics.ServerState{
			Backend: v.Backend, Server: v.Server, State: v.State, Weight: v.Weight,
			Active: v.Active, ChecksPassed: v.ChecksPassed, ChecksFailed: v.ChecksFailed,
		})
	}
	return out
}

// serveControl serves rsp ctl on cfg's control socket; nil when none is
// configured. A socket that cannot be made is logged, and rsp serves
// without it: the proxy matters more than its control.
func serveControl(cfg *config.Config, px *proxy.Proxy, relay *splice.Relay, log *slog.Logger) *control.Server {
	if cfg.Control == "" {
		return nil
	}
	srv, err := control.Listen(cfg.Control, &control.Commands{Runtime: px, Conns: relay, Logger: log}, log)
	if err != nil {
		log.Error("control socket unavailable; rsp ctl cannot reach this rsp (create its directory, or fix control =)", "control", cfg.Control, "err", err)
		return nil
	}
	log.Info("control socket ready", "control", srv.Path())
	return srv
}
