package bench

import (
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// serve runs handle for each connection on a loopback listener.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go acceptLoop(ln, handle)
	return ln.Addr().String()
}

// TestIntegrityCatchesLoss: a "proxy" that drops one byte in the middle of
// each stream must show as corrupted, and the real echo backend as clean.
func TestIntegrityCatchesLoss(t *testing.T) {
	backend := serve(t, serveBackendConn)
	src := &sources{}
	bad, err := integrity(src, backend, 8, 1<<20)
	if err != nil || bad != 0 {
		t.Fatalf("direct echo: %d corrupted, %v", bad, err)
	}
	lossy := serve(t, func(c net.Conn) {
		defer c.Close()
		b, err := net.Dial("tcp", backend)
		if err != nil {
			return
		}
		defer b.Close()
		go func() {
			io.Copy(c, b)
			c.(*net.TCPConn).CloseWrite()
		}()
		io.CopyN(b, c, 4096)
		io.CopyN(io.Discard, c, 1) // the lost byte
		io.Copy(b, c)
		b.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, b)
	})
	bad, err = integrity(src, lossy, 8, 1<<20)
	if bad != 8 {
		t.Fatalf("lossy proxy: %d of 8 reported corrupted (err %v), want 8", bad, err)
	}
}

// TestWorkloadsMoveWhatTheySay: upload, download, round trips, new
// connections and server-closed HTTP exchanges against the backend report
// counts that match.
func TestWorkloadsMoveWhatTheySay(t *testing.T) {
	backend := serve(t, serveBackendConn)
	src := &sources{}
	if _, err := upload(src, backend, 2, 8<<20); err != nil {
		t.Fatalf("upload: %v", err)
	}
	if _, err := download(src, backend, 2, 8<<20); err != nil {
		t.Fatalf("download: %v", err)
	}
	lat, err := roundTrips(src, backend, 2, 100e6)
	if err != nil || len(lat) == 0 {
		t.Fatalf("round trips: %d, %v", len(lat), err)
	}
	n, err := newConns(src, backend, 2, 100e6)
	if err != nil || n == 0 {
		t.Fatalf("new connections: %d, %v", n, err)
	}
	// The server closes first: a client that closed first, or a proxy
	// that cut the response, would not get the whole of it before EOF.
	n, err = closedByServer(src, backend, 2, 100e6)
	if err != nil || n == 0 {
		t.Fatalf("server-closed exchanges: %d, %v", n, err)
	}
	conns, err := openIdle(src, backend, 20)
	defer closeAll(conns)
	if err != nil || len(conns) != 20 {
		t.Fatalf("idle: %d of 20, %v", len(conns), err)
	}
}

func TestMarkdownRatiosAndChart(t *testing.T) {
	rs := []Result{
		{Workload: wUp1, Contender: "direct", Unit: "Gbit/s", Values: []float64{10, 12, 11}},
		{Workload: wUp1, Contender: "rsp splice", Unit: "Gbit/s", Values: []float64{8, 7, 9}},
		{Workload: "integrity", Contender: "rsp splice", Unit: "corrupted", Values: []float64{0}, Note: "ok"},
	}
	md := Markdown(rs)
	if !strings.Contains(md, "| upload, 1 stream | rsp splice | 8 Gbit/s | 3: 7–9 | 0.73 |") {
		t.Fatalf("median/spread/ratio row wrong:\n%s", md)
	}
	svg := SVG(rs)
	if !strings.HasPrefix(svg, "<svg") || !strings.Contains(svg, "rsp splice") || !strings.Contains(svg, "0.73") {
		t.Fatalf("chart lacks the rsp bar:\n%s", svg)
	}
}

// TestCostsPerUnit: CPU time per unit of work (the proxy's, the
// endpoints', and both together), the kernel's share of the proxy's, and
// no proxy rows where there is no proxy (direct).
func TestCostsPerUnit(t *testing.T) {
	c := newCosts(wRR64, "µs/rt")
	proxy := cpuTimes{user: 100 * time.Millisecond, sys: 300 * time.Millisecond}
	ends := cpuTimes{user: 200 * time.Millisecond, sys: 400 * time.Millisecond}
	c.add(proxy, ends, 20000, 1e-6)
	c.add(cpuTimes{}, ends, 0, 1e-6) // a run that did no work counts for nothing
	for _, want := range []struct {
		r    Result
		v    float64
		unit string
	}{{c.proxy, 20, "µs/rt"}, {c.ends, 30, "µs/rt"}, {c.all, 50, "µs/rt"}, {c.kernel, 75, "%"}} {
		if len(want.r.Values) != 1 || math.Abs(want.r.Values[0]-want.v) > 1e-9 || want.r.Unit != want.unit {
			t.Errorf("%s: %v %s, want [%v] %s", want.r.Workload, want.r.Values, want.r.Unit, want.v, want.unit)
		}
	}
	if rs := c.results(false); len(rs) != 2 || rs[0].Workload != wRR64+wEndCPU || rs[1].Workload != wRR64+wAllCPU {
		t.Errorf("without a proxy: %d rows (%v), want the client+backend row and the sum", len(rs), rs)
	}
	if rs := c.results(true); len(rs) != 4 {
		t.Errorf("with a proxy: %d rows, want 4", len(rs))
	}
	md := Markdown([]Result{
		{Workload: wRR64 + wEndCPU, Contender: "direct", Unit: "µs/rt", Values: []float64{30}},
		{Workload: wRR64 + wEndCPU, Contender: "rsp splice", Unit: "µs/rt", Values: []float64{36}},
	})
	if !strings.Contains(md, "| 36 µs/rt | 1: 36–36 |  |") {
		t.Errorf("a cost row must not get a ratio to direct:\n%s", md)
	}
}

// TestCPUOfSelf: this process's CPU time grows while it computes.
func TestCPUOfSelf(t *testing.T) {
	before := cpuOf("self")
	deadline := time.Now().Add(2 * time.Second)
	x := 0
	for cpuOf("self").sub(before).user < 30*time.Millisecond && time.Now().Before(deadline) {
		for i := range 1 << 20 {
			x += i
		}
	}
	if got := cpuOf("self").sub(before); got.user+got.sys < 30*time.Millisecond {
		t.Fatalf("CPU time after 2 s of computing: %v (x=%d)", got, x)
	}
}

// TestRoundsPoolInTurn: with rounds, contenders take turns forwards then
// backwards, and each figure pools every round's runs under its first
// place; a note that differs in a later round (a failure after an "ok")
// is kept with its round's number.
func TestRoundsPoolInTurn(t *testing.T) {
	for round, want := range [][]int{{0, 1, 2}, {2, 1, 0}, {0, 1, 2}, {2, 1, 0}} {
		if got := roundOrder(3, round); !slices.Equal(got, want) {
			t.Errorf("round %d: %v, want %v", round, got, want)
		}
	}

	var out []Result
	out = pool(out, []Result{
		{Workload: wUp1, Contender: "a", Values: []float64{10, 11}},
		{Workload: wIntegr, Contender: "a", Values: []float64{0}, Note: "ok"},
	}, 0)
	out = pool(out, []Result{
		{Workload: wUp1, Contender: "a", Values: []float64{12}},
		{Workload: wIntegr, Contender: "a", Values: []float64{0}, Note: "ok"},
		{Workload: wRR1, Contender: "a", Note: "refused"},
	}, 1)
	out = pool(out, []Result{
		{Workload: wIntegr, Contender: "a", Values: []float64{3}, Note: "FAILED: bytes lost or changed"},
		{Workload: wRR1, Contender: "a", Values: []float64{7}},
		{Workload: wUp1, Contender: "b", Values: []float64{5}},
	}, 2)
	want := []Result{
		{Workload: wUp1, Contender: "a", Values: []float64{10, 11, 12}},
		{Workload: wIntegr, Contender: "a", Values: []float64{0, 0, 3}, Note: "ok; round 3: FAILED: bytes lost or changed"},
		{Workload: wRR1, Contender: "a", Values: []float64{7}, Note: "round 2: refused"},
		{Workload: wUp1, Contender: "b", Values: []float64{5}},
	}
	if len(out) != len(want) {
		t.Fatalf("pooled %d figures, want %d: %+v", len(out), len(want), out)
	}
	for i := range want {
		if out[i].Workload != want[i].Workload || out[i].Contender != want[i].Contender ||
			!slices.Equal(out[i].Values, want[i].Values) || out[i].Note != want[i].Note {
			t.Errorf("figure %d: %+v, want %+v", i, out[i], want[i])
		}
	}
}

// TestOneLoopContender: "rsp splice 1 loop" starts the same relay as
// "rsp splice" with GOMAXPROCS=1 in its environment (one event loop),
// and "rsp splice" without it. A stand-in for rsp announces its
// environment and arguments in place of its address.
func TestOneLoopContender(t *testing.T) {
	stub := filepath.Join(t.TempDir(), "rsp")
	script := "#!/bin/sh\necho \"msg=\\\"rsp started\\\" listen=g${GOMAXPROCS}_$(echo \"$@\" | tr ' ' '_')\" >&2\nexec cat\n"
	if err := os.WriteFile(stub, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOMAXPROCS", "")
	o := &Options{Rsp: stub}
	args := "_-listen_127.0.0.9:0_-backend_127.0.0.1:7_-relay_splice_-idle-timeout_0"
	for _, c := range []struct {
		name  string
		start func(*Options, string, string) (*process, error)
		want  string
	}{
		{"rsp splice 1 loop", startRspOneLoop, "g1" + args},
		{"rsp splice", rspStarter("splice"), "g" + args},
	} {
		p, err := c.start(o, "127.0.0.1:7", "127.0.0.9")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		p.stop()
		if p.addr != c.want {
			t.Errorf("%s started with %q; want %q", c.name, p.addr, c.want)
		}
	}
	found := false
	for _, c := range contenders(o) {
		found = found || c.Name == "rsp splice 1 loop"
	}
	if !found {
		t.Error(`no contender "rsp splice 1 loop"`)
	}
}
