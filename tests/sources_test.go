package tests

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// connectFrom connects to addr from local IP from and reads the greeting;
// it reports whether rsp served the connection (false: reset).
func connectFrom(t *testing.T, addr, from string) (net.Conn, bool) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if isReset(err) {
			return nil, false
		}
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	if _, err := readLine(c, 5*time.Second); err != nil {
		c.Close()
		if !isReset(err) {
			t.Fatalf("from %s: %v, want a greeting or a reset", from, err)
		}
		return nil, false
	}
	return c, true
}

// TestSourceLimits: per-address and per-prefix connection limits and a
// per-address rate refuse, with a reset and cause source_limit, exactly
// the connections beyond them, IPv4 and IPv6, both relays; what is
// released is given again.
func TestSourceLimits(t *testing.T) {
	srv := newIDServer(t, "a")
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
metrics = "127.0.0.1:0"
[frontend.addr]
listen = ["127.0.0.1:0", "[::1]:0"]
backend = "app"
per_source_maxconn = 2
[frontend.prefix]
listen = "127.0.0.1:0"
backend = "app"
per_prefix_maxconn = 3
source_prefix_v4 = 24
[frontend.rate]
listen = "127.0.0.1:0"
backend = "app"
per_source_rate = 0.5
per_source_burst = 3
%s`, mode, servers("app", []*idServer{srv}, nil)))
			p := startRsp(t, "-config", cfg)
			listen := map[string][]string{}
			for _, m := range listeningRE.FindAllStringSubmatch(p.stderr.String(), -1) {
				listen[m[1]] = append(listen[m[1]], m[2])
			}
			var v4, v6 string
			for _, a := range listen["addr"] {
				if a[0] == '[' {
					v6 = a
				} else {
					v4 = a
				}
			}
			maddr := metricsAddr(t, p)
			var held []net.Conn
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			hold := func(addr, from string, want bool, what string) {
				t.Helper()
				c, ok := connectFrom(t, addr, from)
				if ok != want {
					t.Errorf("%s: served %v, want %v", what, ok, want)
				}
				if c != nil {
					held = append(held, c)
				}
			}
			hold(v4, "127.0.0.2", true, "1st from 127.0.0.2")
			hold(v4, "127.0.0.2", true, "2nd from 127.0.0.2")
			hold(v4, "127.0.0.2", false, "3rd from 127.0.0.2 (per_source_maxconn 2)")
			hold(v4, "127.0.0.3", true, "another address")
			hold(v6, "::1", true, "1st from ::1")
			hold(v6, "::1", true, "2nd from ::1")
			hold(v6, "::1", false, "3rd from ::1")
			held[0].Close() // a slot of 127.0.0.2 given back
			held = held[1:]
			if !eventually(5*time.Second, func() bool {
				return scrapeMetrics(t, maddr)[`rsp_frontend_connections_active{frontend="addr"}`] == 4
			}) {
				t.Fatalf("the closed connection still counts as active")
			}
			hold(v4, "127.0.0.2", true, "127.0.0.2 again, after one of its connections closed")

			pre := listen["prefix"][0]
			for i := 1; i <= 3; i++ {
				hold(pre, fmt.Sprintf("127.0.5.%d", i), true, "127.0.5.x within the /24's 3")
			}
			hold(pre, "127.0.5.4", false, "a 4th address of 127.0.5.0/24")
			hold(pre, "127.0.6.1", true, "another /24")

			rate := listen["rate"][0]
			for i := range 3 {
				c, ok := connectFrom(t, rate, "127.0.0.9")
				if !ok {
					t.Errorf("connection %d of a burst of 3: refused", i+1)
				} else {
					c.Close()
				}
			}
			if c, ok := connectFrom(t, rate, "127.0.0.9"); ok {
				c.Close()
				t.Errorf("4th new connection within a second at per_source_rate 0.5, burst 3: served")
			}
			if c, ok := connectFrom(t, rate, "127.0.0.10"); !ok {
				t.Errorf("another address refused by the first's rate")
			} else {
				c.Close()
			}
			want := map[string]float64{"addr": 2, "prefix": 1, "rate": 1}
			if !eventually(5*time.Second, func() bool {
				s := scrapeMetrics(t, maddr)
				for fe, n := range want {
					if s[fmt.Sprintf(`rsp_frontend_connections_ended_total{cause="source_limit",frontend=%q}`, fe)] != n {
						return false
					}
				}
				return true
			}) {
				s := scrapeMetrics(t, maddr)
				for fe, n := range want {
					t.Errorf("frontend %s: %v ended with cause source_limit, want %v", fe, s[fmt.Sprintf(`rsp_frontend_connections_ended_total{cause="source_limit",frontend=%q}`, fe)], n)
				}
			}
		})
	}
}
