package config

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"rsp/internal/balance"
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
		if _, err := Parse(fmt.Sprintf("README example %d", i+1), text); err != nil {
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
	if _, err := Parse("rsp.8 example", text); err != nil {
		t.Error(err)
	}
}
