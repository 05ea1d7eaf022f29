package tests

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// peerServer answers each connection with the address it came from, then
// closes. It listens on addr ("127.0.0.1:0", "[::1]:0").
func peerServer(t *testing.T, network, addr string) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	serveEach(ln, func(c *net.TCPConn) {
		fmt.Fprintf(c, "%s\n", c.RemoteAddr())
		c.Close()
	})
	return ln.Addr().String()
}

// dialFrom connects to addr from local IP from and returns the line the
// server says, or the error (a reset for a refused client).
func dialFrom(addr, from string) (string, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	line, err := readLine(c, 5*time.Second)
	return strings.TrimSpace(line), err
}

// TestAccessControl: a frontend's allow and deny lists refuse clients
// before any server is dialed (reset, cause denied, counted), IPv4 and
// IPv6, in both relays; a backend's source address is the one its
// servers see.
func TestAccessControl(t *testing.T) {
	v4 := peerServer(t, "tcp4", "127.0.0.1:0")
	v6 := peerServer(t, "tcp6", "[::1]:0")
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
metrics = "127.0.0.1:0"
[frontend.four]
listen = "127.0.0.1:0"
backend = "v4"
allow = ["127.0.0.0/8", "::1"]
deny = ["127.0.0.5", "127.0.9.0/24"]
[frontend.six]
listen = "[::1]:0"
backend = "v6"
allow = "2001:db8::/32"
[frontend.sixok]
listen = "[::1]:0"
backend = "v6"
deny = ["2001:db8::/32"]
[backend.v4]
source = "127.0.0.7"
[backend.v4.server.a]
address = %q
[backend.v6]
source = "::1"
[backend.v6.server.a]
address = %q
`, mode, v4, v6))
			p := startRsp(t, "-config", cfg)
			maddr := metricsAddr(t, p)
			before := scrapeMetrics(t, maddr)

			got, err := dialFrom(listeningOn(p, "four"), "127.0.0.2")
			if err != nil || !strings.HasPrefix(got, "127.0.0.7:") {
				t.Errorf("allowed client: server saw %q, %v; want the backend's source 127.0.0.7", got, err)
			}
			for _, from := range []string{"127.0.0.5", "127.0.9.200"} {
				if got, err := dialFrom(listeningOn(p, "four"), from); err == nil || !isReset(err) && got != "" {
					t.Errorf("client %s in deny: got %q, %v; want a reset", from, got, err)
				}
			}
			if got, err := dialFrom(listeningOn(p, "six"), "::1"); err == nil || !isReset(err) && got != "" {
				t.Errorf("IPv6 client outside allow: got %q, %v; want a reset", got, err)
			}
			got, err = dialFrom(listeningOn(p, "sixok"), "::1")
			if err != nil || !strings.HasPrefix(got, "[::1]:") {
				t.Errorf("IPv6 client not in deny: server saw %q, %v", got, err)
			}
			if !eventually(5*time.Second, func() bool {
				after := scrapeMetrics(t, maddr)
				return after[`rsp_frontend_connections_ended_total{cause="denied",frontend="four"}`]-before[`rsp_frontend_connections_ended_total{cause="denied",frontend="four"}`] == 2 &&
					after[`rsp_frontend_connections_ended_total{cause="denied",frontend="six"}`]-before[`rsp_frontend_connections_ended_total{cause="denied",frontend="six"}`] == 1
			}) {
				t.Errorf("denied connections not counted 2 and 1")
			}
			after := scrapeMetrics(t, maddr)
			if n := delta(t, before, after, `rsp_server_connect_attempts_total{backend="v4",server="a"}`); n != 1 {
				t.Errorf("%v connects to the v4 server, want 1: a denied client must not reach a server", n)
			}
			if !eventually(5*time.Second, func() bool {
				for _, l := range connLines(t, p) {
					if strings.HasPrefix(l["client"], "127.0.0.5:") && l["cause"] == "denied" && l["frontend"] == "four" && l["tries"] == "0" {
						return true
					}
				}
				return false
			}) {
				t.Errorf("the denied client was not logged with cause denied")
			}
		})
	}
}

// TestAccessControlConfigErrors: bad prefixes and a source of the wrong
// family are refused with file:line.
func TestAccessControlConfigErrors(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\nallow = [\"10.0.0.0/33\"]\n[backend.b.server.a]\naddress = \"127.0.0.1:1\"\n", "is not a CIDR prefix"},
		{"[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\ndeny = \"example.com\"\n[backend.b.server.a]\naddress = \"127.0.0.1:1\"\n", "is not an IP address or CIDR prefix"},
		{"[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[backend.b]\nsource = \"::1\"\n[backend.b.server.a]\naddress = \"127.0.0.1:1\"\n", "source and servers must be TCP of one family"},
		{"[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[backend.b]\nsource = \"nope\"\n[backend.b.server.a]\naddress = \"127.0.0.1:1\"\n", "is not an IP address"},
	} {
		path := writeConfig(t, "", c.text)
		code, stderr := runRsp(t, exec.Command(rspBin, "check", "-config", path))
		if code != 1 || !strings.Contains(stderr, c.want) || !strings.Contains(stderr, path+":") {
			t.Errorf("rsp check of\n%s: exit %d, %q; want 1 and %q with file:line", c.text, code, stderr, c.want)
		}
	}
}

// TestHealthCheckSource: a backend's health checks connect from its
// source address too, as its clients' connections do, so a server that
// only lets that address in is not seen as down.
func TestHealthCheckSource(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	from := make(chan string, 16)
	serveEach(ln, func(c *net.TCPConn) {
		select {
		case from <- c.RemoteAddr().(*net.TCPAddr).IP.String():
		default:
		}
		c.Close()
	})
	startRsp(t, "-config", writeConfig(t, "", fmt.Sprintf(`
[frontend.f]
listen = "127.0.0.1:0"
backend = "b"
[backend.b]
source = "127.0.0.7"
[backend.b.health]
interval = "100ms"
[backend.b.server.a]
address = %q
`, ln.Addr().String())))
	select {
	case ip := <-from:
		if ip != "127.0.0.7" {
			t.Errorf("a health check came from %s, want the backend's source 127.0.0.7", ip)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no health check reached the server in 10 s")
	}
}
