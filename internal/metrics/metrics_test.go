package metrics

import (
	"errors"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"rsp/internal/splice"
)

// TestCollect: a scrape of a started relay with no traffic has every
// family, every cause and server state at their values, and no series
// twice even when a server is listed twice.
func TestCollect(t *testing.T) {
	r := &splice.Relay{Loops: 2}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown(t.Context())
	reloads := &Reloads{}
	reloads.Loaded()
	reloads.Record(errors.New("bad file"))
	src := Sources{
		Relay: r, Version: "test",
		Servers: func() []ServerState {
			s := ServerState{Backend: "app", Server: "a", State: "draining", Weight: 3, ChecksPassed: 4, ChecksFailed: 1}
			return []ServerState{s, s}
		},
		Frontends: func() []FrontendConfig { return []FrontendConfig{{Name: "web", MaxConn: 10}} },
		MaxConn:   func() int { return 100 },
		Reloads:   reloads,
	}
	fams, err := NewRegistry(src).Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f := byName[name]
		if f == nil {
			return 0, false
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"rsp_server_state", map[string]string{"server": "a", "state": "draining"}, 1},
		{"rsp_server_state", map[string]string{"server": "a", "state": "up"}, 0},
		{"rsp_server_weight", map[string]string{"server": "a"}, 3},
		{"rsp_server_check_results_total", map[string]string{"result": "pass"}, 4},
		{"rsp_server_check_results_total", map[string]string{"result": "fail"}, 1},
		{"rsp_frontend_max_connections", map[string]string{"frontend": "web"}, 10},
		{"rsp_frontend_connections_ended_total", map[string]string{"frontend": "web", "cause": "killed"}, 0},
		{"rsp_max_connections", nil, 100},
		{"rsp_config_reloads_total", map[string]string{"result": "failure"}, 1},
		{"rsp_config_last_reload_successful", nil, 0},
		{"rsp_event_loop_busy_seconds_total", map[string]string{"loop": "1"}, -1},
		{"rsp_build_info", map[string]string{"version": "test"}, 1},
		{"process_open_fds", nil, -1},
	} {
		got, ok := value(c.name, c.labels)
		if !ok || c.want >= 0 && got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if n := len(byName["rsp_frontend_connections_ended_total"].GetMetric()); n != int(splice.NumCauses) {
		t.Errorf("%d ended series for one frontend, want one per cause (%d)", n, splice.NumCauses)
	}
	h := byName["rsp_backend_connect_duration_seconds"]
	if h == nil || h.GetType() != dto.MetricType_HISTOGRAM || len(h.GetMetric()[0].GetHistogram().GetBucket()) != len(splice.ConnectBuckets()) {
		t.Errorf("connect histogram: %v", h)
	}
}
