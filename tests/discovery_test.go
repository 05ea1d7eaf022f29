package tests

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"rsp/internal/dns"
	"rsp/internal/dns/dnstest"
)

// startDNS starts a loopback DNS server for the test.
func startDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	d, err := dnstest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// idServersOnePort starts an idServer on each address of ips, all on one
// port, named by names; it returns them and the port.
func idServersOnePort(t *testing.T, names []string, ips []string) ([]*idServer, int) {
	t.Helper()
	for range 20 {
		var out []*idServer
		port := 0
		ok := true
		for i, ip := range ips {
			s := &idServer{name: names[i]}
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
			s.start(t, ln.Addr().String())
			t.Cleanup(s.kill)
			port = ln.Addr().(*net.TCPAddr).Port
			out = append(out, s)
		}
		if ok {
			return out, port
		}
		for _, s := range out {
			s.kill()
		}
	}
	t.Fatalf("found no port free on all of %v", ips)
	return nil, 0
}

// waitLog waits until rsp's log holds want count times or more.
func waitLog(t *testing.T, p *proc, want string, count int) {
	t.Helper()
	if !eventually(15*time.Second, func() bool { return strings.Count(p.stderr.String(), want) >= count }) {
		t.Fatalf("rsp did not log %q %d times:\n%s", want, count, p.stderr.String())
	}
}

// echoes checks that c, a connection through rsp to an idServer, still
// carries bytes both ways.
func echoes(t *testing.T, c net.Conn, what string) {
	t.Helper()
	msg := "still here " + what + "\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	line, err := readLine(c, 5*time.Second)
	if err != nil || line != msg {
		t.Fatalf("%s: echo %q, %v; want %q", what, line, err, msg)
	}
}

// TestDiscoveryAll: resolve = "all" makes every A and AAAA record of a
// host name a server; as the records change (TTL 1 s), servers join and
// leave as on a reload: a vanished server takes no new connection and
// keeps its live ones. A failing DNS keeps the last servers found, is
// logged once, and recovery is logged.
func TestDiscoveryAll(t *testing.T) {
	d := startDNS(t)
	_, port := idServersOnePort(t, []string{"a", "b", "c"}, []string{"127.0.0.2", "127.0.0.3", "::1"})
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	d.SetIP("app.test", time.Second, ip("127.0.0.2"))
	conf := fmt.Sprintf("[global]\nresolvers = [%q]\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\n[backend.app.server.web]\naddress = \"app.test:%d\"\nresolve = \"all\"\n", d.Addr(), port)
	p := startRsp(t, "-config", writeConfig(t, "", conf))

	if got := tally(t, p.addr, 6); got["a"] != 6 {
		t.Fatalf("with one A record, connections went to %v, want all 6 to a", got)
	}

	// Two more records, one of each family: three servers.
	d.SetIP("app.test", time.Second, ip("127.0.0.2"), ip("127.0.0.3"), ip("::1"))
	waitLog(t, p, "servers changed by DNS", 1)
	if got := tally(t, p.addr, 9); got["a"] != 3 || got["b"] != 3 || got["c"] != 3 {
		t.Fatalf("with records for a, b and c, 9 connections went %v, want 3 each (round robin)", got)
	}
	if !strings.Contains(p.stderr.String(), "web@[::1]:") {
		t.Errorf("the log names no server web@[::1]:PORT:\n%s", p.stderr.String())
	}

	// a's record goes: a keeps its live connection, takes no new one.
	var held net.Conn
	for range 3 {
		name, c := which(t, p.addr, "")
		if name == "a" {
			held = c
			break
		}
		c.Close()
	}
	if held == nil {
		t.Fatal("no connection reached a in 3 tries of round robin")
	}
	defer held.Close()
	d.SetIP("app.test", time.Second, ip("127.0.0.3"), ip("::1"))
	waitLog(t, p, "servers changed by DNS", 2)
	if got := tally(t, p.addr, 8); got["a"] != 0 || got["b"] != 4 || got["c"] != 4 {
		t.Fatalf("after a's record went, 8 connections went %v, want b:4 c:4", got)
	}
	echoes(t, held, "a's connection after a left DNS")

	// DNS fails: the last servers keep serving; the failure is logged
	// once however often it is retried (1 s, 2 s, ...), and so is the
	// recovery.
	d.SetFail("app.test", true)
	asked := d.Queries("app.test")
	waitLog(t, p, "server name does not resolve", 1)
	if !eventually(10*time.Second, func() bool { return d.Queries("app.test") >= asked+6 }) {
		t.Fatalf("rsp asked DNS %d times in 10 s after the failure, want retries", d.Queries("app.test")-asked)
	}
	if n := strings.Count(p.stderr.String(), "server name does not resolve"); n != 1 {
		t.Errorf("the failure was logged %d times, want once", n)
	}
	if got := tally(t, p.addr, 4); got["b"] != 2 || got["c"] != 2 {
		t.Fatalf("while DNS fails, 4 connections went %v, want b:2 c:2 (the last servers found)", got)
	}
	d.SetFail("app.test", false)
	waitLog(t, p, "server name resolves again", 1)
	echoes(t, held, "a's connection at the end")
	p.signal(syscall.SIGTERM)
	held.Close()
	p.wait(5 * time.Second)
}

// TestDiscoveryFirst: a host name with resolve = "first" (the default)
// is one server, of the name's first address; when the record changes,
// the same server moves to the new address.
func TestDiscoveryFirst(t *testing.T) {
	d := startDNS(t)
	_, port := idServersOnePort(t, []string{"a", "b"}, []string{"127.0.0.2", "127.0.0.3"})
	d.SetIP("one.test", time.Second, netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"))
	conf := fmt.Sprintf("[global]\nresolvers = %q\n[frontend.f]\nlisten = \"[::1]:0\"\nbackend = \"app\"\n[backend.app.server.web]\naddress = \"one.test:%d\"\n", d.Addr(), port)
	p := startRsp(t, "-config", writeConfig(t, "", conf))
	if got := tally(t, p.addr, 4); got["a"] != 4 {
		t.Fatalf("first of 127.0.0.2, 127.0.0.3: 4 connections went %v, want all to a", got)
	}
	d.SetIP("one.test", time.Second, netip.MustParseAddr("127.0.0.3"))
	waitLog(t, p, "servers changed by DNS", 1)
	if got := tally(t, p.addr, 4); got["b"] != 4 {
		t.Fatalf("after the record moved to 127.0.0.3, 4 connections went %v, want all to b", got)
	}
	if !strings.Contains(p.stderr.String(), `added=web@127.0.0.3:`) {
		t.Errorf("the change does not log the server web at its new address:\n%s", p.stderr.String())
	}
}

// TestDiscoverySRV: SRV records give servers, ports and weights; records
// of a higher priority are backups; resolve_every asks again whatever
// the TTL; a change applies like a reload.
func TestDiscoverySRV(t *testing.T) {
	d := startDNS(t)
	a, b, c := newIDServer(t, "a"), newIDServer(t, "b"), newIDServer(t, "c")
	portOf := func(s *idServer) uint16 { return uint16(s.ln.Addr().(*net.TCPAddr).Port) }
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	d.SetIP("a.svc.test", time.Hour, lo...)
	d.SetIP("b.svc.test", time.Hour, lo...)
	const name = "_app._tcp.svc.test"
	d.SetSRV(name, time.Hour,
		dns.SRV{Target: "a.svc.test", Port: portOf(a), Weight: 1, Addrs: lo}, // IPv4 glue only: asked too
		dns.SRV{Target: "b.svc.test", Port: portOf(b), Weight: 3},            // address by its own lookup
		dns.SRV{Target: "a.svc.test", Port: portOf(c), Priority: 1, Weight: 1, Addrs: lo})
	conf := fmt.Sprintf("[global]\nresolvers = [%q]\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app.server.pool]\nsrv = %q\nresolve_every = \"1s\"\n", d.Addr(), name)
	p := startRsp(t, "-config", writeConfig(t, "", conf))
	if got := tally(t, p.addr, 40); got["a"] != 10 || got["b"] != 30 || got["c"] != 0 {
		t.Fatalf("SRV weights 1:3 with c of priority 1: 40 connections went %v, want a:10 b:30 c:0", got)
	}
	asked := d.Queries(name)
	if !eventually(10*time.Second, func() bool { return d.Queries(name) >= asked+2 }) {
		t.Fatalf("with TTL 1 h and resolve_every 1s, rsp asked %d times in 10 s, want at least 2", d.Queries(name)-asked)
	}
	// Only c is left, at priority 1: it is the lowest, so c is a server,
	// not a backup.
	d.SetSRV(name, time.Hour, dns.SRV{Target: "a.svc.test", Port: portOf(c), Priority: 1, Weight: 1, Addrs: lo})
	waitLog(t, p, "servers changed by DNS", 1)
	if got := tally(t, p.addr, 5); got["c"] != 5 {
		t.Fatalf("with only c's record, 5 connections went %v, want all to c", got)
	}
}

// TestDiscoveryErrors: mistakes in the name keys are refused with the
// file's line and what to do; a name that does not resolve when rsp
// starts stops it with the server and the name.
func TestDiscoveryErrors(t *testing.T) {
	d := startDNS(t)
	d.SetIP("x.test", time.Hour, netip.MustParseAddr("127.0.0.1"))
	head := fmt.Sprintf("[global]\nresolvers = [%q]\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app.server.web]\n", d.Addr())
	for _, tc := range []struct{ body, want string }{
		{"address = \"nowhere.test:80\"\n", "server app/web: cannot resolve server host 'nowhere.test'"},
		{"srv = \"_x._tcp.nowhere.test\"\n", "server app/web: cannot resolve SRV name '_x._tcp.nowhere.test'"},
		{"address = \"127.0.0.1:80\"\nresolve = \"all\"\n", "resolve and resolve_every apply to host names only"},
		{"address = \"x.test:80\"\nresolve = \"every\"\n", "unknown resolve \"every\""},
		{"address = \"x.test:80\"\nresolve_every = \"10ms\"\n", "resolve_every 10ms is below 1s"},
		{"address = \"x.test:80\"\nsrv = \"_x._tcp.test\"\n", "has both address and srv"},
		{"srv = \"_x._tcp..test\"\n", "labels of 1 to 63 characters"},
	} {
		path := writeConfig(t, "", head+tc.body)
		p := launch(t, exec.Command(rspBin, "-config", path))
		if code := p.wait(20 * time.Second); code != 2 {
			t.Errorf("%q: exit %d, want 2", tc.body, code)
		}
		if out := p.stderr.String(); !strings.Contains(out, tc.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("%q: stderr %q, want one line holding %q", tc.body, out, tc.want)
		}
	}
}
