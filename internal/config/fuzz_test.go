package config

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"rsp/internal/dns"
	"rsp/internal/splice"
)

// offline answers every name without the network: a host name with
// 127.0.0.1 and ::1, an SRV name with two records of one target.
type offline struct{}

func (offline) LookupIP(context.Context, string) ([]netip.Addr, time.Duration, error) {
	return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}, 30 * time.Second, nil
}

func (o offline) LookupSRV(ctx context.Context, name string) ([]dns.SRV, time.Duration, error) {
	ips, ttl, _ := o.LookupIP(ctx, name)
	return []dns.SRV{{Target: "a." + name, Port: 80, Weight: 5, Addrs: ips}, {Target: "a." + name, Port: 81, Priority: 1, Addrs: ips}}, ttl, nil
}

// FuzzParse: any file gives either a configuration that holds together or
// errors that each name the file (and a line where there is one); never a
// panic.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../packaging/rsp.conf"); err == nil {
		f.Add(string(b))
	}
	f.Add("[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\n[backend.b]\nserver.s = { address = \"[::1]:9\", weight = 0 }\n")
	f.Fuzz(func(t *testing.T, src string) {
		cfg, err := parse("fuzz.conf", src, offlineLookup)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "fuzz.conf:") || len(line) <= len("fuzz.conf: ") {
					t.Fatalf("error line %q does not name the file, or says nothing", line)
				}
			}
			return
		}
		for _, fe := range cfg.Frontends {
			if cfg.Backend(fe.Backend) == nil {
				t.Fatalf("frontend %s routes to missing backend %q", fe.Name, fe.Backend)
			}
			if (len(fe.Listen) == 0) == (fe.Socket == "") {
				t.Fatalf("frontend %s: listen %v and socket %q: want exactly one", fe.Name, fe.Listen, fe.Socket)
			}
			if fe.ConnectTimeout <= 0 || fe.IdleTimeout < 0 || fe.HalfCloseTimeout < 0 ||
				max(fe.ConnectTimeout, fe.IdleTimeout, fe.HalfCloseTimeout) > MaxTimeout {
				t.Fatalf("frontend %s timeouts %v %v %v", fe.Name, fe.ConnectTimeout, fe.IdleTimeout, fe.HalfCloseTimeout)
			}
			checkKeepAlive(t, "frontend "+fe.Name, fe.KeepAlive)
		}
		for _, b := range cfg.Backends {
			checkKeepAlive(t, "backend "+b.Name, b.KeepAlive)
			if len(b.Servers) == 0 {
				t.Fatalf("backend %s has no server", b.Name)
			}
			for _, s := range b.Servers {
				if s.Addr == nil || s.Weight < 0 || s.Weight > MaxWeight || s.MaxConn < 0 {
					t.Fatalf("server %s/%s: %+v", b.Name, s.Name, s)
				}
			}
		}
	})
}

// checkKeepAlive fails t unless ka is what the kernel can take.
func checkKeepAlive(t *testing.T, what string, ka splice.KeepAlive) {
	t.Helper()
	if ka.Idle < 0 || ka.Idle > MaxKeepAlive || ka.Interval != ka.Idle || ka.Count < 0 || ka.Count > MaxKeepAliveCount ||
		ka.UserTimeout < 0 || ka.UserTimeout > MaxTimeout {
		t.Fatalf("%s: keepalive %+v", what, ka)
	}
}
