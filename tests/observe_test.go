package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// This file tests what rsp shows of itself: the Prometheus metrics and
// the connection log, through the built binary, in both relays.

var metricsRE = regexp.MustCompile(`msg="serving metrics" listen=(\S+)`)

// metricsAddr returns where rsp p serves /metrics, from its log.
func metricsAddr(t *testing.T, p *proc) string {
	t.Helper()
	var addr string
	if !eventually(5*time.Second, func() bool {
		m := metricsRE.FindStringSubmatch(p.stderr.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	}) {
		t.Fatalf("rsp logged no metrics listener:\n%s", p.stderr.String())
	}
	return addr
}

// series is one scrape: each sample by its name and labels, written
// name{k="v",...} with the labels sorted.
type series map[string]float64

// scrapeMetrics scrapes addr's /metrics with the Prometheus text parser.
func scrapeMetrics(t *testing.T, addr string) series {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape: parse: %v", err)
	}
	out := series{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			default:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

// delta returns after[key] - before[key]; the key must be in after.
func delta(t *testing.T, before, after series, key string) float64 {
	t.Helper()
	v, ok := after[key]
	if !ok {
		var near []string
		name, _, _ := strings.Cut(key, "{")
		for k := range after {
			if strings.HasPrefix(k, name) {
				near = append(near, k)
			}
		}
		slices.Sort(near)
		t.Fatalf("no series %s in the scrape; of that name:\n%s", key, strings.Join(near, "\n"))
	}
	return v - before[key]
}

// logLine is one parsed log line.
type logLine map[string]string

// parseLogfmt parses one logfmt line as slog's text handler writes it.
func parseLogfmt(line string) (logLine, error) {
	out := logLine{}
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " ") {
		k, rest, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("no = in %q", s)
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil, fmt.Errorf("key %s: %v", k, err)
			}
			v, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			v, rest, _ = strings.Cut(rest, " ")
		}
		out[k] = v
		s = rest
	}
	return out, nil
}

// connLines returns rsp's connection-log lines, parsed (text or JSON).
func connLines(t *testing.T, p *proc) []logLine {
	t.Helper()
	var out []logLine
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		var l logLine
		switch {
		case strings.HasPrefix(line, "{"):
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			l = logLine{}
			for k, v := range m {
				l[k] = fmt.Sprint(v)
			}
		case strings.Contains(line, "msg=conn "):
			var err error
			if l, err = parseLogfmt(line); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
		default:
			continue
		}
		if l["msg"] == "conn" {
			out = append(out, l)
		}
	}
	return out
}

// connLineFrom returns the connection-log line of the client whose local
// address is client, waiting for it.
func connLineFrom(t *testing.T, p *proc, client string) logLine {
	t.Helper()
	var found logLine
	eventually(5*time.Second, func() bool {
		for _, l := range connLines(t, p) {
			if l["client"] == client {
				found = l
				return true
			}
		}
		return false
	})
	if found == nil {
		t.Fatalf("no connection-log line for client %s:\n%s", client, p.stderr.String())
	}
	return found
}

// checkLine requires each field of want in line, and every field of the
// format present.
func checkLine(t *testing.T, what string, line logLine, want map[string]string) {
	t.Helper()
	for _, k := range []string{"time", "level", "id", "client", "frontend", "backend", "server", "server_addr", "bytes_in", "bytes_out", "connect_ms", "duration_ms", "tries", "cause", "relay"} {
		if _, ok := line[k]; !ok {
			t.Errorf("%s: log line has no %s: %v", what, k, line)
		}
	}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s: log line %s=%q, want %q (line %v)", what, k, line[k], v, line)
		}
	}
	if d, err := strconv.ParseFloat(line["duration_ms"], 64); err != nil || d < 0 {
		t.Errorf("%s: duration_ms %q", what, line["duration_ms"])
	}
}

// TestMetricsAndConnLog: known traffic through rsp moves the metrics by
// exactly what the test did — bytes each way, connections by cause (a
// clean close, a client reset, an idle timeout, a refusal at maxconn, a
// connect failure, a drained connection) — and each connection gets one
// log line with the right fields, in both relays.
func TestMetricsAndConnLog(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) { testMetricsAndConnLog(t, mode) })
	}
}

func testMetricsAndConnLog(t *testing.T, mode string) {
	srv := newIDServer(t, "a")
	down, down2 := listen(t), listen(t)
	downAddr, down2Addr := down.Addr().String(), down2.Addr().String()
	down.Close()
	down2.Close()
	cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
metrics = "127.0.0.1:0"
conn_log = "all"

[frontend.web]
listen = "127.0.0.1:0"
backend = "app"
maxconn = 2
idle_timeout = "2s"

[frontend.dead]
listen = "127.0.0.1:0"
backend = "gone"

[backend.app.server.a]
address = %q

[backend.gone]
eject_after = 0
[backend.gone.server.x]
address = %q
[backend.gone.server.y]
address = %q
`, mode, srv.addr, downAddr, down2Addr))
	p := startRsp(t, "-config", cfg)
	web, dead := listeningOn(p, "web"), listeningOn(p, "dead")
	if web == "" || dead == "" {
		t.Fatalf("listen addresses not logged:\n%s", p.stderr.String())
	}
	maddr := metricsAddr(t, p)
	before := scrapeMetrics(t, maddr)

	// A clean transfer, verified end to end: the server sends its name
	// line then echoes, so out = in + 2.
	const n = 3<<20 + 17
	c := dial(t, web)
	clean := c.LocalAddr().String()
	if line, err := readLine(c, 5*time.Second); err != nil || line != "a\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	got := make(chan digest, 1)
	go func() { d, _ := receive(c); got <- d }()
	sent, err := send(c, 7, n)
	if err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if d := <-got; d != sent {
		t.Fatalf("echo through rsp: got %v, sent %v", d, sent)
	}
	c.Close()
	l := connLineFrom(t, p, clean)
	checkLine(t, "clean", l, map[string]string{"level": "INFO", "frontend": "web", "backend": "app", "server": "a",
		"server_addr": srv.addr, "bytes_in": strconv.Itoa(n), "bytes_out": strconv.Itoa(n + 2), "cause": "client_close", "tries": "1", "relay": mode})

	// A client reset.
	r := dial(t, web)
	reset := r.LocalAddr().String()
	readLine(r, 5*time.Second)
	r.Write([]byte("xyz"))
	readFull(t, r, 3)
	r.SetLinger(0)
	r.Close()
	checkLine(t, "reset", connLineFrom(t, p, reset), map[string]string{"level": "WARN", "cause": "client_reset",
		"bytes_in": "3", "bytes_out": "5"})

	// An idle timeout (2s), and a refusal at maxconn while it and one more
	// are live.
	idle := dial(t, web)
	idleAddr := idle.LocalAddr().String()
	readLine(idle, 5*time.Second)
	hold := dial(t, web)
	readLine(hold, 5*time.Second)
	refusedAddr := dialRefused(t, web)
	checkLine(t, "maxconn", connLineFrom(t, p, refusedAddr), map[string]string{"level": "WARN", "cause": "maxconn", "server": "", "tries": "0"})
	hold.Close()
	checkLine(t, "idle", connLineFrom(t, p, idleAddr), map[string]string{"level": "WARN", "cause": "idle_timeout", "bytes_out": "2"})
	idle.Close()

	// Both servers of a backend refuse: the second is tried (a retry),
	// then no server is left; the connection ends for the refusal.
	failedAddr := dialRefused(t, dead)
	fl := connLineFrom(t, p, failedAddr)
	checkLine(t, "connect failed", fl, map[string]string{"level": "WARN", "cause": "connect_failed",
		"frontend": "dead", "backend": "gone", "tries": "2"})
	if !strings.Contains(fl["err"], "connection refused") {
		t.Errorf("connect failure logged without its reason: err=%q", fl["err"])
	}

	// Wait for the hold connection's end to be counted, then compare.
	if !eventually(5*time.Second, func() bool {
		return scrapeMetrics(t, maddr)[`rsp_connections_active`] == 0
	}) {
		t.Fatalf("connections still active: %v", scrapeMetrics(t, maddr)[`rsp_connections_active`])
	}
	after := scrapeMetrics(t, maddr)
	want := map[string]float64{
		`rsp_frontend_bytes_in_total{frontend="web"}`:                                  n + 3,
		`rsp_frontend_bytes_out_total{frontend="web"}`:                                 n + 2 + 5 + 2 + 2,
		`rsp_server_bytes_in_total{backend="app",server="a"}`:                          n + 3,
		`rsp_server_bytes_out_total{backend="app",server="a"}`:                         n + 2 + 5 + 2 + 2,
		`rsp_frontend_connections_accepted_total{frontend="web"}`:                      5,
		`rsp_frontend_connections_accepted_total{frontend="dead"}`:                     1,
		`rsp_frontend_connections_ended_total{cause="client_close",frontend="web"}`:    2, // clean and hold
		`rsp_frontend_connections_ended_total{cause="client_reset",frontend="web"}`:    1,
		`rsp_frontend_connections_ended_total{cause="idle_timeout",frontend="web"}`:    1,
		`rsp_frontend_connections_ended_total{cause="maxconn",frontend="web"}`:         1,
		`rsp_frontend_connections_ended_total{cause="server_close",frontend="web"}`:    0,
		`rsp_frontend_connections_ended_total{cause="connect_failed",frontend="dead"}`: 1,
		`rsp_server_connect_attempts_total{backend="app",server="a"}`:                  4,
		`rsp_server_connections_total{backend="app",server="a"}`:                       4,
		`rsp_server_connect_failures_total{backend="gone",server="x"}`:                 1,
		`rsp_server_connect_attempts_total{backend="gone",server="x"}`:                 1,
		`rsp_server_connect_failures_total{backend="gone",server="y"}`:                 1,
		`rsp_server_connect_attempts_total{backend="gone",server="y"}`:                 1,
		`rsp_backend_connect_duration_seconds{backend="app"}_count`:                    4,
		`rsp_frontend_connections_active{frontend="web"}`:                              0,
	}
	for key, w := range want {
		if d := delta(t, before, after, key); d != w {
			t.Errorf("%s moved by %v, want %v", key, d, w)
		}
	}
	if r := delta(t, before, after, `rsp_server_connect_retries_total{backend="gone",server="x"}`) +
		delta(t, before, after, `rsp_server_connect_retries_total{backend="gone",server="y"}`); r != 1 {
		t.Errorf("retries moved by %v, want 1 (the first server failed, the second was tried)", r)
	}
	total := delta(t, before, after, `rsp_relayed_bytes_total{method="splice"}`) + delta(t, before, after, `rsp_relayed_bytes_total{method="copy"}`)
	if wantTotal := float64(2*n + 3 + 2 + 5 + 2 + 2); total != wantTotal {
		t.Errorf("relayed bytes splice+copy moved by %v, want %v", total, wantTotal)
	}
	if mode == "copy" && delta(t, before, after, `rsp_relayed_bytes_total{method="splice"}`) != 0 {
		t.Errorf("the copy relay counted spliced bytes")
	}
	if mode == "splice" && delta(t, before, after, `rsp_relayed_bytes_total{method="splice"}`) < 2*n {
		t.Errorf("the splice relay counted %v spliced bytes, want at least %d", delta(t, before, after, `rsp_relayed_bytes_total{method="splice"}`), 2*n)
	}
	for _, k := range []string{"process_open_fds", "process_max_fds", "rsp_pipes_open", "rsp_pipe_size_bytes", `rsp_config_reloads_total{result="success"}`} {
		if _, ok := after[k]; !ok {
			t.Errorf("no %s in the scrape", k)
		}
	}
	if mode == "splice" {
		if _, ok := after[`rsp_event_loop_busy_seconds_total{loop="0"}`]; !ok {
			t.Errorf("no event-loop busy time in the scrape")
		}
		if after["rsp_pipe_size_bytes"] <= 0 {
			t.Errorf("rsp_pipe_size_bytes = %v", after["rsp_pipe_size_bytes"])
		}
	}

	// Drained: a connection that ends on its own while rsp shuts down.
	// Another stays open meanwhile, so that rsp is still there to scrape.
	d1, d2 := dial(t, web), dial(t, web)
	readLine(d1, 5*time.Second)
	readLine(d2, 5*time.Second)
	drainedAddr := d1.LocalAddr().String()
	p.signal(syscall.SIGTERM)
	if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "stopping: no new connections") }) {
		t.Fatal("rsp did not start draining")
	}
	d1.CloseWrite()
	io.Copy(io.Discard, d1)
	d1.Close()
	checkLine(t, "drained", connLineFrom(t, p, drainedAddr), map[string]string{"level": "INFO", "cause": "drained"})
	if v := scrapeMetrics(t, maddr)[`rsp_frontend_connections_ended_total{cause="drained",frontend="web"}`]; v != 1 {
		t.Errorf("drained connections = %v, want 1", v)
	}
	d2.Close()
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("rsp exited %d", code)
	}
}

// dialRefused connects to addr from a known local address and requires
// the connection reset without a byte (at once: maybe before the dial
// returns). It returns the local address.
func dialRefused(t *testing.T, addr string) string {
	t.Helper()
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3), Port: freePort(t)}
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: local}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if !isReset(err) {
			t.Fatalf("dial %s: %v, want it reset", addr, err)
		}
		return local.String()
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("client refused by rsp: read %d bytes, %v; want a reset", n, err)
	}
	return local.String()
}

// readFull reads n bytes from c or fails the test.
func readFull(t *testing.T, c net.Conn, n int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	c.SetReadDeadline(time.Time{})
}

// TestConnLogJSON: with log_format = "json" every line, the connection
// log's included, is one JSON object with the same fields.
func TestConnLogJSON(t *testing.T) {
	srv := newIDServer(t, "a")
	cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
log_format = "json"
conn_log = "all"
[frontend.web]
listen = "127.0.0.1:0"
backend = "app"
[backend.app.server.a]
address = %q
`, srv.addr))
	p := launch(t, exec.Command(rspBin, "-config", cfg))
	var addr string
	if !eventually(10*time.Second, func() bool {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "rsp started" {
				addr = strings.Split(fmt.Sprint(m["listen"]), ",")[0]
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no JSON start line:\n%s", p.stderr.String())
	}
	c := dial(t, addr)
	readLine(c, 5*time.Second)
	c.Write([]byte("hello"))
	readFull(t, c, 5)
	c.CloseWrite()
	io.Copy(io.Discard, c)
	local := c.LocalAddr().String()
	c.Close()
	checkLine(t, "json", connLineFrom(t, p, local), map[string]string{"cause": "client_close", "bytes_in": "5", "bytes_out": "7", "server": "a"})
	for _, line := range strings.Split(strings.TrimSpace(p.stderr.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("not a JSON line: %q", line)
		}
	}
}
