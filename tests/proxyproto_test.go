package tests

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
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
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveProxied(c)
		}
	}()
	return ln.Addr().String()
}

func serveProxied(c net.Conn) {
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
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
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
				listen := map[string]string{}
				for _, m := range listeningRE.FindAllStringSubmatch(p.stderr.String(), -1) {
					listen[m[1]] = m[2]
				}
				for _, c := range []struct{ frontend, from string }{{"four", "127.0.0.2"}, {"six", "::1"}} {
					d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.from)}}
					conn, err := d.Dial("tcp", listen[c.frontend])
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
