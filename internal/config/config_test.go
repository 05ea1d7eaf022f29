package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"rsp/internal/balance"
	"rsp/internal/dns"
	"rsp/internal/splice"
)

// TestExampleConfig loads the annotated example shipped in packaging/.
func TestExampleConfig(t *testing.T) {
	cfg, err := Load("../../packaging/rsp.conf")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Frontends) != 1 || len(cfg.Backends) != 1 {
		t.Fatalf("frontends %d backends %d", len(cfg.Frontends), len(cfg.Backends))
	}
	fe := cfg.Frontends[0]
	if fe.Name != "web" || fe.Backend != "app" || fe.Socket != "web" || len(fe.Listen) != 0 || fe.IdleTimeout != 5*time.Minute ||
		fe.ConnectTimeout != 5*time.Second || fe.HalfCloseTimeout != 0 {
		t.Errorf("frontend %+v", fe)
	}
	b := cfg.Backend("app")
	if b.Balance != balance.RoundRobin || b.Retries != 2 || b.Health.Interval != 2*time.Second ||
		b.Health.Rise != 2 || b.Health.Fall != 3 || len(b.Servers) != 2 || b.Servers[1].Weight != 2 {
		t.Errorf("backend %+v", b)
	}
	if cfg.Relay != "splice" || cfg.DrainTimeout != 30*time.Second || cfg.LogLevel != "info" {
		t.Errorf("global %+v", cfg)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("min.conf", `
[frontend.f]
listen = ":8080"
backend = "b"
[backend.b]
server.s1 = { address = "127.0.0.1:9000" }
server.s2 = { address = "unix:/run/app.sock", weight = 0 }
`)
	if err != nil {
		t.Fatal(err)
	}
	fe, b := cfg.Frontends[0], cfg.Backends[0]
	if fe.ConnectTimeout != DefaultConnectTimeout || fe.IdleTimeout != DefaultIdleTimeout {
		t.Errorf("timeouts %+v", fe)
	}
	if b.Health.Interval != 0 || b.Health.EjectAfter != DefaultEjectAfter || b.Retries != DefaultRetries {
		t.Errorf("health %+v retries %d: want no active checks, passive on", b.Health, b.Retries)
	}
	if b.Servers[0].Addr.String() != "127.0.0.1:9000" || b.Servers[1].Addr.Network() != "unix" || b.Servers[1].Weight != 0 {
		t.Errorf("servers %+v", b.Servers)
	}
}

// TestEphemeralPorts: frontends may share port 0 (each gets its own
// port), but not a fixed one.
func TestEphemeralPorts(t *testing.T) {
	const two = "[frontend.f]\nlisten = %q\nbackend = \"b\"\n[frontend.g]\nlisten = %q\nbackend = \"b\"\n[backend.b]\nserver.s = { address = \"127.0.0.1:9000\" }\n"
	if _, err := Parse("x.conf", fmt.Sprintf(two, "127.0.0.1:0", "127.0.0.1:0")); err != nil {
		t.Errorf("two frontends on port 0: %v", err)
	}
	if _, err := Parse("x.conf", fmt.Sprintf(two, "127.0.0.1:7000", "127.0.0.1:7000")); err == nil {
		t.Error("two frontends on 127.0.0.1:7000 accepted")
	}
}

// TestErrors: every mistake is reported with file:line and what to do.
func TestErrors(t *testing.T) {
	base := "[backend.b]\nserver.s = { address = \"127.0.0.1:9000\" }\n"
	cases := []struct {
		name, src string
		want      []string
	}{
		{"syntax", "[frontend.f\nlisten = 1\n", []string{"x.conf:2:", "table name"}},
		{"unknown key", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\nconect_timeout = \"1s\"\n",
			[]string{"x.conf:6:", `unknown key "conect_timeout" in [frontend.f]`, `did you mean "connect_timeout"`}},
		{"unknown section", base + "[frontends.f]\nlisten = \":1\"\n", []string{"x.conf:3:", `unknown key "frontends"`}},
		{"no frontend", base, []string{"no frontend", "[frontend.NAME]"}},
		{"missing backend", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"nope\"\n",
			[]string{"x.conf:5:", `no backend named "nope"`, "defined: b"}},
		{"no backend key", base + "[frontend.f]\nlisten = \":1\"\n", []string{"x.conf:3:", "has no backend"}},
		{"listen and socket", base + "[frontend.f]\nlisten = \":1\"\nsocket = \"web\"\nbackend = \"b\"\n",
			[]string{"x.conf:5:", "both listen and socket"}},
		{"neither", base + "[frontend.f]\nbackend = \"b\"\n", []string{"x.conf:3:", "no listen or socket"}},
		{"bad listen", base + "[frontend.f]\nlisten = \"nonsense\"\nbackend = \"b\"\n",
			[]string{"x.conf:4:", `listen "nonsense"`, "[HOST]:PORT"}},
		{"listen port", base + "[frontend.f]\nlisten = [\":80\", \":99999\"]\nbackend = \"b\"\n",
			[]string{"x.conf:4:", "listen port 99999 out of range"}},
		{"duplicate listen", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\n[frontend.g]\nlisten = \":1\"\nbackend = \"b\"\n",
			[]string{"x.conf:7:", "listen :1 is also frontend f's"}},
		{"duplicate socket", base + "[frontend.f]\nsocket = \"s\"\nbackend = \"b\"\n[frontend.g]\nsocket = \"s\"\nbackend = \"b\"\n",
			[]string{"x.conf:7:", `socket "s" is also frontend f's`}},
		{"duplicate frontend", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\n[frontend.f]\n",
			[]string{"x.conf:6:", "already been defined"}},
		{"duplicate server", "[backend.b]\nserver.s = { address = \"127.0.0.1:9000\" }\nserver.s = { address = \"127.0.0.1:9001\" }\n",
			[]string{"x.conf:3:"}},
		{"bad duration", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\nidle_timeout = \"soon\"\n",
			[]string{"x.conf:6:", `bad duration "soon"`}},
		{"unitless duration", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\nidle_timeout = 5\n",
			[]string{"x.conf:6:", "with a unit"}},
		{"bad balance", "[backend.b]\nbalance = \"fastest\"\nserver.s = { address = \"127.0.0.1:9000\" }\n",
			[]string{"x.conf:2:", `unknown balance "fastest"`, "leastconn"}},
		{"no servers", "[backend.b]\nbalance = \"source\"\n", []string{"x.conf:1:", "has no server"}},
		{"server no address", "[backend.b]\n[backend.b.server.s]\nweight = 2\n", []string{"x.conf:2:", "s has no address"}},
		{"bad server address", "[backend.b]\n[backend.b.server.s]\naddress = \"example\"\n",
			[]string{"x.conf:3:", `address "example"`, "HOST:PORT"}},
		{"unresolvable", "[backend.b]\n[backend.b.server.s]\naddress = \"no-such-host.invalid:80\"\n",
			[]string{"x.conf:3:", "cannot resolve server host 'no-such-host.invalid'"}},
		{"weight", "[backend.b]\n[backend.b.server.s]\naddress = \"127.0.0.1:1\"\nweight = 300\n",
			[]string{"x.conf:4:", "weight 300 out of range"}},
		{"negative maxconn", "[global]\nmaxconn = -1\n" + base, []string{"x.conf:2:", "maxconn -1 is negative"}},
		{"relay", "[global]\nrelay = \"zerocopy\"\n" + base, []string{"x.conf:2:", `unknown relay "zerocopy"`}},
		{"log level", "[global]\nlog_level = \"loud\"\n" + base, []string{"x.conf:2:", `unknown log_level "loud"`}},
		{"health", "[backend.b]\nserver.s = { address = \"127.0.0.1:9000\" }\n[backend.b.health]\ninterval = \"0s\"\nrise = 0\n",
			[]string{"x.conf:4:", "health interval must be more than 0s", "x.conf:5:", "rise 0"}},
		{"retries", "[backend.b]\nretries = -1\nserver.s = { address = \"127.0.0.1:9000\" }\n", []string{"x.conf:2:", "retries -1 is negative"}},
		{"zero connect timeout", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\nconnect_timeout = \"0s\"\n",
			[]string{"x.conf:6: frontend f: connect_timeout 0s would wait forever: give a duration such as 5s"}},
		{"huge timeout", "[defaults]\nidle_timeout = \"100000h\"\n" + base,
			[]string{"x.conf:2: idle_timeout 100000h0m0s is more than 720h0m0s (30 days)"}},
		{"huge check interval", "[backend.b]\nserver.s = { address = \"127.0.0.1:9000\" }\n[backend.b.health]\ninterval = \"1000h\"\n",
			[]string{"x.conf:4: backend b: health interval 1000h0m0s is more than 720h0m0s"}},
		{"pipe size", "[global]\npipe_size = 4095\n" + base, []string{"x.conf:2: pipe_size 4095 out of range: give bytes from 4096 to 67108864, or 0 for the default"}},
		{"notsent_lowat", "[global]\nnotsent_lowat = -2\n" + base, []string{"x.conf:2: notsent_lowat -2 out of range: give bytes from 4096 to 67108864, 0 for the default (131072), or -1 to keep the kernel's (net.ipv4.tcp_notsent_lowat)"}},
		{"wildcard clash", base + "[frontend.f]\nlisten = \":80\"\nbackend = \"b\"\n[frontend.g]\nlisten = \"0.0.0.0:80\"\nbackend = \"b\"\n",
			[]string{"x.conf:7: frontend g: listen 0.0.0.0:80 clashes with frontend f's listen :80: both bind every IPv4 and IPv6 address on port 80"}},
		{"keepalive", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\ntcp_keepalive = \"500ms\"\ntcp_keepalive_count = 200\ntcp_user_timeout = \"10us\"\n",
			[]string{"x.conf:6: frontend f: tcp_keepalive 500ms: give whole seconds from 1s to 32767s", "x.conf:7: frontend f: tcp_keepalive_count 200 out of range",
				"x.conf:8: frontend f: tcp_user_timeout 10µs is less than 1ms"}},
		{"misplaced key", base + "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\nretries = 1\n",
			[]string{"x.conf:6:", `unknown key "retries" in [frontend.f]: set it in [backend.NAME]`}},
		{"zone", "[backend.b]\nserver.s = { address = \"[fe80::1%nosuchif9]:80\" }\n",
			[]string{"x.conf:2: server b/s: no network interface \"nosuchif9\" on this host (the zone of server fe80::1%nosuchif9)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.conf", tc.src)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestIndexLines(t *testing.T) {
	idx := indexLines(`# comment
[global]   # trailing
maxconn = 5
list = [
  "a = 1",
]
"quoted.key" = 1
[backend."my app".server.x]
address = "h:1" # c
`)
	for path, want := range map[string]int{"global": 2, "global.maxconn": 3, "global.list": 4,
		"global.quoted.key": 7, "backend.my app.server.x.address": 9} {
		if got := idx.line(strings.Split(path, ".")...); got != want {
			t.Errorf("line(%s) = %d, want %d", path, got, want)
		}
	}
	if _, ok := idx["global.a"]; ok {
		t.Error("a line inside a multi-line array was taken for a key")
	}
}

func TestResolveServer(t *testing.T) {
	a, err := ResolveServer(t.Context(), "backend", "unix:/run/x.sock")
	if err != nil || a.Network() != "unix" || a.String() != "/run/x.sock" {
		t.Fatalf("unix backend: %v %v", a, err)
	}
	a, err = ResolveServer(t.Context(), "backend", "[::1]:80")
	if err != nil || a.String() != "[::1]:80" {
		t.Fatalf("ipv6 literal: %v %v", a, err)
	}
	a, err = ResolveServer(t.Context(), "backend", "localhost:80")
	if err != nil || a.Network() != "tcp" {
		t.Fatalf("localhost: %v %v", a, err)
	}
}

// offlineLookup answers the names of examples without the network.
func offlineLookup([]string) Lookup { return offline{} }

// TestReadmeExamples: every TOML example in the README parses.
func TestReadmeExamples(t *testing.T) {
	src, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(src), "```toml\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("no ```toml example in README.md")
	}
	for i, b := range blocks {
		text, _, _ := strings.Cut(b, "```")
		if _, err := parse(fmt.Sprintf("README example %d", i+1), text, offlineLookup); err != nil {
			t.Errorf("README example %d: %v", i+1, err)
		}
	}
}

// TestManPageExample: the example in rsp(8) parses.
func TestManPageExample(t *testing.T) {
	src, err := os.ReadFile("../../docs/rsp.8")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(src), ".SS Example\n.nf\n")
	text, _, ok2 := strings.Cut(rest, ".fi\n")
	if !ok || !ok2 {
		t.Fatal("no example in docs/rsp.8")
	}
	if _, err := parse("rsp.8 example", text, offlineLookup); err != nil {
		t.Error(err)
	}
}

// TestKeepAlive: tcp_keepalive, tcp_keepalive_count and tcp_user_timeout
// default to 15s, the kernel's count and the kernel's user timeout; a
// frontend's apply to its clients, a backend's to its servers, and
// [defaults] to both.
func TestKeepAlive(t *testing.T) {
	cfg, err := Parse("ka.conf", `
[defaults]
tcp_keepalive_count = 4
tcp_user_timeout = "30s"
[frontend.f]
listen = ":1"
backend = "b"
tcp_keepalive = "60s"
[frontend.g]
listen = ":2"
backend = "c"
[backend.b]
tcp_keepalive = "0s"
tcp_user_timeout = "0s"
server.s = { address = "127.0.0.1:9000" }
[backend.c]
tcp_keepalive_count = 2
server.s = { address = "127.0.0.1:9000" }
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what      string
		got, want splice.KeepAlive
	}{
		{"frontend f", cfg.Frontends[0].KeepAlive, splice.KeepAlive{Idle: time.Minute, Interval: time.Minute, Count: 4, UserTimeout: 30 * time.Second}},
		{"frontend g", cfg.Frontends[1].KeepAlive, splice.KeepAlive{Idle: DefaultTCPKeepAlive, Interval: DefaultTCPKeepAlive, Count: 4, UserTimeout: 30 * time.Second}},
		{"backend b", cfg.Backend("b").KeepAlive, splice.KeepAlive{Count: 4}},
		{"backend c", cfg.Backend("c").KeepAlive, splice.KeepAlive{Idle: DefaultTCPKeepAlive, Interval: DefaultTCPKeepAlive, Count: 2, UserTimeout: 30 * time.Second}},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: keepalive %+v, want %+v", tc.what, tc.got, tc.want)
		}
	}
	cfg, err = Parse("min.conf", "[frontend.f]\nlisten = \":1\"\nbackend = \"b\"\n[backend.b]\nserver.s = { address = \"127.0.0.1:9000\" }\n")
	if err != nil {
		t.Fatal(err)
	}
	def := splice.KeepAlive{Idle: 15 * time.Second, Interval: 15 * time.Second}
	if cfg.Frontends[0].KeepAlive != def || cfg.Backends[0].KeepAlive != def {
		t.Errorf("defaults: frontend %+v backend %+v, want %+v", cfg.Frontends[0].KeepAlive, cfg.Backends[0].KeepAlive, def)
	}
}

// TestInterfaceIndex: a zone's interface name is resolved to its index
// without netlink; an unknown name is errNoInterface.
func TestInterfaceIndex(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no interface lo: %v", err)
	}
	if idx, err := interfaceIndex("lo"); err != nil || idx != lo.Index {
		t.Errorf("interfaceIndex(lo) = %d, %v; want %d", idx, err, lo.Index)
	}
	if _, err := interfaceIndex("nosuchif9"); !errors.Is(err, errNoInterface) {
		t.Errorf("interfaceIndex(nosuchif9) = %v, want errNoInterface", err)
	}
	if _, err := interfaceIndex("a-name-longer-than-IFNAMSIZ"); !errors.Is(err, errNoInterface) {
		t.Errorf("interfaceIndex(long name) = %v, want errNoInterface", err)
	}
	want := fmt.Sprint(lo.Index)
	for _, addr := range []string{"[fe80::1%lo]:80", "[fe80::1%" + want + "]:80"} {
		a, err := ResolveServer(t.Context(), "server", addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if ta := a.(*net.TCPAddr); ta.Zone != want || ta.Port != 80 || ta.IP.String() != "fe80::1" {
			t.Errorf("%s resolved to %#v, want zone %q", addr, ta, want)
		}
	}
	_, err = ResolveServer(t.Context(), "backend", "[fe80::1%nosuchif9]:80")
	if err == nil || !strings.Contains(err.Error(), `no network interface "nosuchif9" on this host (the zone of backend fe80::1%nosuchif9)`) {
		t.Errorf("unknown interface: %v", err)
	}
}

// TestListenKey: which listen addresses bind the same socket.
func TestListenKey(t *testing.T) {
	for _, tc := range []struct {
		a, b  string
		clash bool
	}{
		{":80", "0.0.0.0:80", true}, {":80", "[::]:80", true}, {"[::]:80", "127.0.0.1:80", true},
		{"[::1]:80", "[0::1]:80", true}, {"127.0.0.1:80", "[::ffff:127.0.0.1]:80", true}, {"localhost:80", "127.0.0.1:80", true},
		{"127.0.0.1:80", "[::1]:80", false}, {"127.0.0.1:80", "127.0.0.1:81", false}, {":80", ":81", false},
	} {
		if got := listenKey(tc.a).clashes(listenKey(tc.b)); got != tc.clash {
			t.Errorf("%s and %s clash: %v, want %v", tc.a, tc.b, got, tc.clash)
		}
	}
}

// fakeLookup answers from fixed records.
type fakeLookup struct {
	ips map[string][]netip.Addr
	srv map[string][]dns.SRV
}

func (f fakeLookup) LookupIP(_ context.Context, host string) ([]netip.Addr, time.Duration, error) {
	if ips, ok := f.ips[host]; ok {
		return ips, 7 * time.Second, nil
	}
	return nil, 0, &dns.NotFoundError{Name: host, Type: "A"}
}

func (f fakeLookup) LookupSRV(_ context.Context, name string) ([]dns.SRV, time.Duration, error) {
	if r, ok := f.srv[name]; ok {
		return r, 9 * time.Second, nil
	}
	return nil, 0, &dns.NotFoundError{Name: name, Type: "SRV"}
}

// TestNameServers: host names and SRV names become servers: "first" one
// server of the first address, "all" one per address named by it, SRV
// one per address of each target with the record's port and weight
// (the file's weight overriding it), higher priorities as backups; a
// backend source keeps only its family; WithFound swaps one name's
// servers in a copy.
func TestNameServers(t *testing.T) {
	ip := netip.MustParseAddr
	l := fakeLookup{
		ips: map[string][]netip.Addr{"h.test": {ip("10.0.0.1"), ip("10.0.0.2"), ip("2001:db8::1")}},
		srv: map[string][]dns.SRV{"_a._tcp.test": {
			{Target: "x.test", Port: 81, Weight: 5, Addrs: []netip.Addr{ip("10.0.1.1"), ip("2001:db8::2")}},
			{Target: "y.test", Port: 82, Weight: 0, Addrs: []netip.Addr{ip("10.0.1.2")}},
			{Target: "z.test", Port: 83, Priority: 1, Weight: 9, Addrs: []netip.Addr{ip("10.0.1.3")}},
		}},
	}
	src := `
[frontend.f]
listen = "127.0.0.1:0"
backend = "b"
[backend.b.server.first]
address = "h.test:80"
[backend.b.server.all]
address = "h.test:80"
resolve = "all"
resolve_every = "3s"
[backend.b.server.pods]
srv = "_a._tcp.test."
[backend.c]
source = "10.9.9.9"
[backend.c.server.all]
address = "h.test:80"
resolve = "all"
[backend.c.server.pods]
srv = "_a._tcp.test"
weight = 2
`
	cfg, err := parse("n.conf", src, func([]string) Lookup { return l })
	if err != nil {
		t.Fatal(err)
	}
	show := func(b *Backend) string {
		var out []string
		for _, s := range b.Servers {
			out = append(out, fmt.Sprintf("%s=%s/w%d/b%v", s.Name, s.Addr, s.Weight, s.Backup))
		}
		return strings.Join(out, " ")
	}
	want := "all@10.0.0.1:80=10.0.0.1:80/w1/bfalse all@10.0.0.2:80=10.0.0.2:80/w1/bfalse all@[2001:db8::1]:80=[2001:db8::1]:80/w1/bfalse " +
		"first=10.0.0.1:80/w1/bfalse " +
		"pods@10.0.1.1:81=10.0.1.1:81/w5/bfalse pods@10.0.1.2:82=10.0.1.2:82/w1/bfalse pods@10.0.1.3:83=10.0.1.3:83/w9/btrue pods@[2001:db8::2]:81=[2001:db8::2]:81/w5/bfalse"
	if got := show(cfg.Backend("b")); got != want {
		t.Errorf("backend b:\n got %s\nwant %s", got, want)
	}
	want = "all@10.0.0.1:80=10.0.0.1:80/w1/bfalse all@10.0.0.2:80=10.0.0.2:80/w1/bfalse " +
		"pods@10.0.1.1:81=10.0.1.1:81/w2/bfalse pods@10.0.1.2:82=10.0.1.2:82/w2/bfalse pods@10.0.1.3:83=10.0.1.3:83/w2/btrue"
	if got := show(cfg.Backend("c")); got != want {
		t.Errorf("backend c (source 10.9.9.9, weight 2):\n got %s\nwant %s", got, want)
	}
	names := cfg.Names()
	if len(names) != 5 || names[1].Key() != "b/first" || names[0].Every != 3*time.Second || names[0].TTL != 7*time.Second ||
		names[0].Refresh(names[0].TTL) != 3*time.Second || names[1].Refresh(0) != MinResolveEvery || names[2].Name() != "_a._tcp.test" {
		t.Fatalf("names: %+v", names)
	}
	one := []balance.ServerConfig{{Name: "first", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 9), Port: 80}, Weight: 1}}
	next := cfg.WithFound("b/first", one, time.Minute)
	if next == nil || !strings.Contains(show(next.Backend("b")), "first=10.0.0.9:80") || strings.Contains(show(next.Backend("b")), "first=10.0.0.1:80") ||
		!strings.Contains(show(cfg.Backend("b")), "first=10.0.0.1:80") || next.Backend("c") != cfg.Backend("c") {
		t.Errorf("WithFound: new %s; old %s", show(next.Backend("b")), show(cfg.Backend("b")))
	}
	if cfg.WithFound("b/none", one, 0) != nil {
		t.Error("WithFound of an unknown name gave a configuration")
	}
	_, err = parse("n.conf", strings.Replace(src, `"h.test:80"`, `"gone.test:80"`, 1), func([]string) Lookup { return l })
	if err == nil || !strings.Contains(err.Error(), "n.conf:6: server b/first: cannot resolve server host 'gone.test'") {
		t.Errorf("unresolvable name: %v", err)
	}
}

// TestNameServerEdges: addresses given twice are one server; "first"
// keeps its server while the name still gives it; host names are
// checked before DNS is asked; a long TTL is asked again within the
// hour.
func TestNameServerEdges(t *testing.T) {
	ip := netip.MustParseAddr
	l := fakeLookup{ips: map[string][]netip.Addr{
		"dup.test": {ip("127.0.0.11"), ip("::ffff:127.0.0.11"), ip("127.0.0.12")},
		"rot.test": {ip("10.0.0.2"), ip("10.0.0.1")},
	}}
	lookup := func([]string) Lookup { return l }
	cfg, err := parse("e.conf", `
[frontend.f]
listen = "127.0.0.1:0"
backend = "b"
[backend.b.server.d]
address = "dup.test:80"
resolve = "all"
`, lookup)
	if err != nil {
		t.Fatalf("a name giving one address as A and as mapped AAAA: %v", err)
	}
	if got := fmt.Sprint(serverNames(cfg.Backend("b"))); got != "[d@127.0.0.11:80 d@127.0.0.12:80]" {
		t.Errorf("servers %s; want the mapped address once", got)
	}

	n := &NameServer{Backend: "b", Server: balance.ServerConfig{Name: "r", Weight: 1}, Host: "rot.test", Port: 80}
	found, _, err := n.Resolve(t.Context(), l)
	if err != nil || len(found) != 1 || found[0].Addr.String() != "10.0.0.2:80" {
		t.Fatalf("first, nothing found before: %v, %v; want 10.0.0.2:80, the first address", found, err)
	}
	n.Found = []balance.ServerConfig{{Name: "r", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 80}}}
	found, _, err = n.Resolve(t.Context(), l)
	if err != nil || len(found) != 1 || found[0].Addr.String() != "10.0.0.1:80" || found[0].Name != "r" {
		t.Errorf("first, 10.0.0.1 found before and still given: %v, %v; want it kept", found, err)
	}
	n.Found[0].Addr = &net.TCPAddr{IP: net.IPv4(10, 0, 0, 9), Port: 80}
	if found, _, _ = n.Resolve(t.Context(), l); len(found) != 1 || found[0].Addr.String() != "10.0.0.2:80" {
		t.Errorf("first, the address found before is gone: %v; want the first address", found)
	}
	if got := n.Refresh(48 * time.Hour); got != MaxRefresh {
		t.Errorf("Refresh(48h) = %s; want %s", got, MaxRefresh)
	}

	// Errors come in file order, names resolved last or not.
	_, err = parse("e.conf", "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[backend.b.server.r]\naddress = \"gone.test:80\"\n[backend.b.server.w]\naddress = \"127.0.0.1:1\"\nweight = -1\n", lookup)
	if err == nil || !strings.HasPrefix(err.Error(), "e.conf:5:") || !strings.Contains(err.Error(), "\ne.conf:8:") {
		t.Errorf("errors of lines 5 (a name) and 8: %v; want line 5 first", err)
	}

	// A reload keeps the address "first" has while the name gives it.
	running, err := parse("e.conf", "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[backend.b.server.r]\naddress = \"rot.test:80\"\n", lookup)
	if err != nil {
		t.Fatal(err)
	}
	running = running.WithFound("b/r", []balance.ServerConfig{{Name: "r", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 80}, Weight: 1}}, time.Minute)
	reloaded, err := parseAfter("e.conf", "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[backend.b.server.r]\naddress = \"rot.test:80\"\n", lookup, running)
	if err != nil || reloaded.Backend("b").Servers[0].Addr.String() != "10.0.0.1:80" {
		t.Errorf("reload of a first server on 10.0.0.1, still given: %v, %v; want it kept", reloaded.Backend("b").Servers, err)
	}

	for addr, want := range map[string]string{
		`".:80"`:         `has no host: write "HOST:PORT"`,
		`"web..test:80"`: "labels of 1 to 63",
		`"` + strings.Repeat("a", 70) + `.test:80"`: "labels of 1 to 63",
		`"we b.test:80"`:  "not allowed in a DNS name",
		`"[web.test]:80"`: `brackets hold an IPv6 address, not a host name: write "web.test:80"`,
	} {
		_, err := parse("e.conf", "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[backend.b.server.s]\naddress = "+addr+"\n", func([]string) Lookup {
			return fakeLookup{} // any name asked is not found
		})
		if err == nil || !strings.Contains(err.Error(), "e.conf:5: server b/s: address") || !strings.Contains(err.Error(), want) {
			t.Errorf("address %s: %v; want an error at e.conf:5 saying %q", addr, err, want)
		}
	}
}

func serverNames(b *Backend) []string {
	var out []string
	for _, s := range b.Servers {
		out = append(out, s.Name)
	}
	return out
}

// barrierLookup answers once n lookups wait at once, proving that they
// run in parallel; after a bound it answers anyway and says so.
type barrierLookup struct {
	n       int
	arrived chan struct{}
	full    chan struct{}
	late    chan struct{}
}

func (b *barrierLookup) LookupIP(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	b.arrived <- struct{}{}
	if len(b.arrived) == b.n {
		close(b.full)
	}
	select {
	case <-b.full:
	case <-time.After(5 * time.Second):
		select {
		case b.late <- struct{}{}:
		default:
		}
	}
	return []netip.Addr{netip.MustParseAddr("10.0.0.1")}, time.Minute, nil
}

func (b *barrierLookup) LookupSRV(ctx context.Context, name string) ([]dns.SRV, time.Duration, error) {
	return nil, 0, &dns.NotFoundError{Name: name, Type: "SRV"}
}

// TestNamesResolveInParallel: the names of a file are asked at once, so a
// slow DNS delays a start by one lookup, not one per name.
func TestNamesResolveInParallel(t *testing.T) {
	const names = 5
	b := &barrierLookup{n: names, arrived: make(chan struct{}, names), full: make(chan struct{}), late: make(chan struct{}, 1)}
	src := "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n"
	for i := range names {
		src += fmt.Sprintf("[backend.b.server.s%d]\naddress = \"h%d.test:80\"\n", i, i)
	}
	cfg, err := parse("p.conf", src, func([]string) Lookup { return b })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.late:
		t.Fatalf("the %d lookups did not run at once", names)
	default:
	}
	if len(cfg.Backend("b").Servers) != names {
		t.Errorf("servers %v", serverNames(cfg.Backend("b")))
	}
}
