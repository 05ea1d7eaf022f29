package tests

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"rsp/internal/proxyproto"
)

// proxyServer reads a PROXY header from each connection, answers one line
// "SRC DST" (what the header said), then echoes the rest.
func proxyServer(t *testing.T, network, addr string) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	serveEach(ln, serveProxied)
	return ln.Addr().String()
}

func serveProxied(c *net.TCPConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(c, proxyproto.MaxLen)
	for n := 1; ; n++ {
		b, perr := br.Peek(n)
		h, size, err := proxyproto.Parse(b)
		if errors.Is(err, proxyproto.ErrIncomplete) && perr == nil {
			continue
		}
		if err != nil {
			fmt.Fprintf(c, "bad header: %v\n", err)
			return
		}
		br.Discard(size)
		fmt.Fprintf(c, "%s %s v%d\n", h.Source, h.Dst, h.Version)
		break
	}
	io.Copy(c, br)
	c.CloseWrite()
}

// TestSendProxy: send_proxy = "v1" or "v2" tells each server the real
// client and the address it connected to, before its bytes, which follow
// intact; IPv4 and IPv6, both relays.
func TestSendProxy(t *testing.T) {
	v4 := proxyServer(t, "tcp4", "127.0.0.1:0")
	v6 := proxyServer(t, "tcp6", "[::1]:0")
	for _, mode := range relayModes {
		for _, version := range []string{"v1", "v2"} {
			t.Run(mode+"/"+version, func(t *testing.T) {
				cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
[frontend.four]
listen = "127.0.0.1:0"
backend = "v4"
[frontend.six]
listen = "[::1]:0"
backend = "v6"
[backend.v4]
send_proxy = %q
[backend.v4.server.a]
address = %q
[backend.v6]
send_proxy = %q
[backend.v6.server.a]
address = %q
`, mode, version, v4, version, v6))
				p := startRsp(t, "-config", cfg)
				for _, c := range []struct{ frontend, from string }{{"four", "127.0.0.2"}, {"six", "::1"}} {
					d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.from)}}
					conn, err := d.Dial("tcp", listeningOn(p, c.frontend))
					if err != nil {
						t.Fatal(err)
					}
					line, err := readLine(conn, 5*time.Second)
					want := fmt.Sprintf("%s %s %s\n", conn.LocalAddr(), conn.RemoteAddr(), version)
					if err != nil || line != want {
						t.Errorf("%s: server was told %q (%v), want %q", c.frontend, line, err, want)
					}
					got := make(chan digest, 1)
					go func() { d, _ := receive(conn); got <- d }()
					sent, err := send(conn, 3, 1<<20)
					if err != nil {
						t.Fatal(err)
					}
					conn.(*net.TCPConn).CloseWrite()
					if d := <-got; d != sent {
						t.Errorf("%s: echo after the header: got %v, sent %v", c.frontend, d, sent)
					}
					conn.Close()
				}
				if strings.Contains(p.stderr.String(), "bad header") {
					t.Error("a server read a bad header")
				}
			})
		}
	}
}

// TestAcceptProxy: a frontend with accept_proxy_from takes the client's
// address from the PROXY header of a trusted proxy (v1 and v2) and uses
// it for the access list, the server's own header and the log; the
// header itself is not forwarded. An untrusted sender, a malformed,
// missing, truncated or late header: reset, cause bad_header, nothing
// forwarded. Both relays.
func TestAcceptProxy(t *testing.T) {
	srv := proxyServer(t, "tcp4", "127.0.0.1:0")
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
conn_log = "all"
[frontend.edge]
listen = "127.0.0.1:0"
backend = "app"
accept_proxy_from = ["127.0.0.2", "::1"]
allow = ["192.0.2.0/24"]
connect_timeout = "500ms"
[backend.app]
send_proxy = "v2"
[backend.app.server.a]
address = %q
`, mode, srv))
			p := startRsp(t, "-config", cfg)
			from := func(ip string) net.Conn {
				d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
				c, err := d.Dial("tcp", p.addr)
				if err != nil {
					if isReset(err) {
						return nil // refused before the dial returned
					}
					t.Fatal(err)
				}
				return c
			}
			dst := netip.MustParseAddrPort(p.addr)
			for _, v := range []proxyproto.Version{proxyproto.V1, proxyproto.V2} {
				c := from("127.0.0.2")
				client := netip.MustParseAddrPort(fmt.Sprintf("192.0.2.%d:4%d000", v, v))
				c.Write(proxyproto.Append(nil, v, client, dst))
				line, err := readLine(c, 5*time.Second)
				if want := fmt.Sprintf("%s %s v2\n", client, dst); err != nil || line != want {
					t.Errorf("v%d: the server was told %q (%v), want %q", v, line, err, want)
				}
				got := make(chan digest, 1)
				go func() { d, _ := receive(c); got <- d }()
				sent, _ := send(c, uint64(v), 256<<10)
				c.(*net.TCPConn).CloseWrite()
				if d := <-got; d != sent {
					t.Errorf("v%d: bytes after the header: got %v, sent %v", v, d, sent)
				}
				c.Close()
				l := connLineFrom(t, p, client.String())
				if l["cause"] != "client_close" || l["bytes_in"] != strconv.Itoa(256<<10) {
					t.Errorf("v%d: log line %v", v, l)
				}
			}
			refused := func(what string, c net.Conn, write []byte, closeWrite bool) {
				t.Helper()
				if c == nil {
					return
				}
				if write != nil {
					if _, err := c.Write(write); isReset(err) {
						c.Close() // reset already: the write took the error a read would see
						return
					}
				}
				if closeWrite {
					c.(*net.TCPConn).CloseWrite()
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(make([]byte, 64))
				if n != 0 || !isReset(err) {
					t.Errorf("%s: read %d bytes, %v; want a reset and nothing forwarded", what, n, err)
				}
				c.Close()
			}
			refused("a header naming a client outside allow", from("127.0.0.2"),
				proxyproto.Append(nil, proxyproto.V2, netip.MustParseAddrPort("[2001:db8::1]:5"), dst), false)
			refused("a malformed header", from("127.0.0.2"), []byte("PROXY TCP4 nonsense\r\n"), false)
			refused("no header", from("127.0.0.2"), []byte("GET / HTTP/1.0\r\n\r\n"), false)
			refused("a truncated header", from("127.0.0.2"), []byte("PROXY TCP4 192.0.2.1"), true)
			refused("an untrusted sender", from("127.0.0.3"),
				proxyproto.Append(nil, proxyproto.V1, netip.MustParseAddrPort("192.0.2.9:5"), dst), false)
			start := time.Now()
			refused("a header that never comes", from("127.0.0.2"), nil, false)
			if d := time.Since(start); d < 400*time.Millisecond || d > 3*time.Second {
				t.Errorf("a silent client was reset after %v, want the connect timeout (500ms)", d)
			}
			if !eventually(5*time.Second, func() bool {
				n := 0
				for _, l := range connLines(t, p) {
					if l["cause"] == "bad_header" {
						n++
					}
				}
				return n == 5
			}) {
				t.Errorf("want 5 connections ended with cause bad_header:\n%s", p.stderr.String())
			}
			if !strings.Contains(p.stderr.String(), "cause=denied") {
				t.Errorf("the header's client outside allow was not denied")
			}
			// The truncated header ended at its FIN, not at the timeout.
			if !slices.ContainsFunc(connLines(t, p), func(l logLine) bool { return strings.Contains(l["err"], "truncated") }) {
				t.Errorf("no bad_header line says truncated: a header cut by FIN waited for the timeout:\n%s", p.stderr.String())
			}
		})
	}
}

// TestDrainEndsHeaderWait: a client still expected to send its PROXY
// header (or ClientHello) when the drain times out is reset then, in both
// relays, not left to its own timeout nor closed with a clean end.
func TestDrainEndsHeaderWait(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startRsp(t, "-config", writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
drain_timeout = "300ms"
[frontend.edge]
listen = "127.0.0.1:0"
backend = "app"
accept_proxy_from = "127.0.0.0/8"
connect_timeout = "60s"
[frontend.tls]
listen = "127.0.0.1:0"
backend = "app"
sni_timeout = "60s"
[frontend.tls.sni]
"a.test" = "app"
[backend.app.server.a]
address = "127.0.0.1:1"
`, mode)))
			var conns []net.Conn
			for _, fe := range []string{"edge", "tls"} {
				// Silent: with bytes unread, closing would reset anyway.
				conns = append(conns, dial(t, listeningOn(p, fe)))
			}
			time.Sleep(100 * time.Millisecond) // accepted and waiting
			p.signal(syscall.SIGTERM)
			if code := p.wait(10 * time.Second); code != 0 {
				t.Errorf("rsp exited %d", code)
			}
			for i, c := range conns {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(make([]byte, 16))
				if n != 0 || !isReset(err) {
					t.Errorf("client %d waiting in its header at the drain's end: read %d, %v; want a reset", i, n, err)
				}
				c.Close()
			}
		})
	}
}
