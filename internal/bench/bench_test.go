package bench

import (
	"io"
	"net"
	"strings"
	"testing"
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

// TestWorkloadsMoveWhatTheySay: upload, download, round trips and new
// connections against the backend report counts that match.
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
