package control

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"rsp/internal/balance"
	"rsp/internal/proxy"
	"rsp/internal/splice"
)

// fakeRuntime is a Runtime over real pools.
type fakeRuntime struct{ pools []*balance.Pool }

func (f *fakeRuntime) Servers() []proxy.ServerView {
	var out []proxy.ServerView
	for _, p := range f.pools {
		for _, s := range p.Servers() {
			pass, fail := s.Checks()
			out = append(out, proxy.ServerView{Backend: p.Name(), Server: s.ShortName(), Addr: s.Addr().String(),
				State: s.State(), Weight: s.Weight(), Active: s.Active(), ChecksPassed: pass, ChecksFailed: fail})
		}
	}
	return out
}

func (f *fakeRuntime) Server(name string) (*balance.Server, error) {
	for _, p := range f.pools {
		for _, s := range p.Servers() {
			if s.Name() == name {
				return s, nil
			}
		}
	}
	return nil, errors.New("unknown server " + name)
}

// fakeConns is a Conns that records kills.
type fakeConns struct {
	list   []splice.ConnInfo
	killed []string
}

func (f *fakeConns) Conns() []splice.ConnInfo { return f.list }

func (f *fakeConns) Kill(server string) int {
	f.killed = append(f.killed, server)
	n := 0
	for _, c := range f.list {
		if c.Server == server {
			n++
		}
	}
	return n
}

func newPool(t *testing.T, name string, servers ...string) *balance.Pool {
	t.Helper()
	var sc []balance.ServerConfig
	for i, s := range servers {
		sc = append(sc, balance.ServerConfig{Name: s, Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 8000 + i}, Weight: 1})
	}
	p, err := balance.NewPool(name, balance.RoundRobin, sc, balance.Health{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fixture is Commands on a web pool (a, b) and an api pool (x), with
// two connections to web/a and one connecting, logging into log.
func fixture(t *testing.T) (*Commands, *fakeRuntime, *fakeConns, *bytes.Buffer) {
	t.Helper()
	rt := &fakeRuntime{pools: []*balance.Pool{newPool(t, "web", "a", "b"), newPool(t, "api", "x")}}
	conns := &fakeConns{list: []splice.ConnInfo{
		{ID: 12, Client: netip.MustParseAddrPort("[2001:db8::1]:40000"), Frontend: "https", Server: "web/a", Duration: 3*time.Minute + 7*time.Second + 300*time.Millisecond, BytesIn: 100, BytesOut: 2000},
		{ID: 3, Client: netip.MustParseAddrPort("192.0.2.7:5555"), Frontend: "https", Server: "web/a", Duration: 1234 * time.Millisecond, BytesIn: 5, BytesOut: 6},
		{ID: 40, Frontend: "local", Duration: 45 * time.Millisecond},
	}}
	var log bytes.Buffer
	return &Commands{Runtime: rt, Conns: conns, Logger: slog.New(slog.NewTextHandler(&log, nil))}, rt, conns, &log
}

func run(t *testing.T, c *Commands, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := c.Handle(Peer{UID: 1000, PID: 42}, args, &out)
	return out.String(), err
}

func TestServersCommand(t *testing.T) {
	c, rt, _, _ := fixture(t)
	rt.pools[0].Server("b").SetAdmin(balance.Maint)
	rt.pools[0].Server("a").SetWeight(5)
	out, err := run(t, c, "servers")
	if err != nil {
		t.Fatal(err)
	}
	want := `SERVER  ADDR           STATE        WEIGHT  ACTIVE  CHECKS_PASSED  CHECKS_FAILED
web/a   10.0.0.1:8000  up           5       0       0              0
web/b   10.0.0.1:8001  maintenance  1       0       0              0
api/x   10.0.0.1:8000  up           1       0       0              0
`
	if out != want {
		t.Errorf("servers:\n%s\nwant:\n%s", out, want)
	}
}

func TestConnsCommand(t *testing.T) {
	c, _, _, _ := fixture(t)
	out, err := run(t, c, "conns")
	if err != nil {
		t.Fatal(err)
	}
	want := `ID  CLIENT               FRONTEND  SERVER  AGE   BYTES_IN  BYTES_OUT
3   192.0.2.7:5555       https     web/a   1.2s  5         6
12  [2001:db8::1]:40000  https     web/a   3m7s  100       2000
40  unix                 local     -       45ms  0         0
`
	if out != want {
		t.Errorf("conns:\n%s\nwant:\n%s", out, want)
	}
}

// TestChangeCommands: drain, maint, ready and weight change the server,
// say what changed, and log it with the command and the peer's uid.
func TestChangeCommands(t *testing.T) {
	c, rt, conns, log := fixture(t)
	a := rt.pools[0].Server("a")
	for _, step := range []struct {
		args  []string
		out   string
		admin balance.Admin
	}{
		{[]string{"drain", "web/a"}, "web/a: ready -> drain\n", balance.Drain},
		{[]string{"drain", "web/a"}, "web/a: already drain\n", balance.Drain},
		{[]string{"maint", "web/a"}, "web/a: drain -> maint\n", balance.Maint},
		{[]string{"ready", "web/a"}, "web/a: maint -> ready\n", balance.Ready},
		{[]string{"maint", "web/a", "-kill"}, "web/a: ready -> maint\nweb/a: reset 2 connections\n", balance.Maint},
		{[]string{"maint", "-kill", "web/b"}, "web/b: ready -> maint\nweb/b: reset 0 connections\n", balance.Maint},
		{[]string{"weight", "web/a", "7"}, "web/a: weight 1 -> 7\n", balance.Maint},
	} {
		out, err := run(t, c, step.args...)
		if err != nil || out != step.out {
			t.Errorf("%v: %q, %v; want %q", step.args, out, err, step.out)
		}
		if a.Admin() != step.admin {
			t.Errorf("%v: a is %v, want %v", step.args, a.Admin(), step.admin)
		}
	}
	if a.Weight() != 7 {
		t.Errorf("weight %d, want 7", a.Weight())
	}
	if strings.Join(conns.killed, ",") != "web/a,web/b" {
		t.Errorf("killed %v, want web/a then web/b", conns.killed)
	}
	if !strings.Contains(log.String(), `msg="connections reset by rsp ctl" server=web/a reset=2 command="maint web/a -kill" uid=1000`) {
		t.Errorf("kill not logged with command and uid:\n%s", log)
	}
}

// TestChangeLoggedWithPeer: a change is logged by the pool's logger with
// the command and the peer's uid.
func TestChangeLoggedWithPeer(t *testing.T) {
	var log bytes.Buffer
	p, err := balance.NewPool("web", balance.RoundRobin, []balance.ServerConfig{{Name: "a", Addr: &net.TCPAddr{Port: 1}, Weight: 1}}, balance.Health{}, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := &Commands{Runtime: &fakeRuntime{pools: []*balance.Pool{p}}, Conns: &fakeConns{}}
	if _, err := run(t, c, "drain", "web/a"); err != nil {
		t.Fatal(err)
	}
	if want := `msg="server state changed by rsp ctl" server=web/a setting=admin from=ready to=drain command="drain web/a" uid=1000`; !strings.Contains(log.String(), want) {
		t.Errorf("log:\n%s\nwant %s", log.String(), want)
	}
}

func TestCommandErrors(t *testing.T) {
	c, _, _, _ := fixture(t)
	for _, tc := range []struct {
		args  []string
		err   string
		usage bool
	}{
		{nil, "no command given", true},
		{[]string{"stats"}, `unknown command "stats": use servers, conns, drain, maint, ready, weight, help`, true},
		{[]string{"drain"}, "drain: missing server; usage: drain B/S", true},
		{[]string{"drain", "a"}, `drain: server "a" is not written BACKEND/SERVER; usage: drain B/S`, true},
		{[]string{"drain", "web/a", "now"}, `drain: unexpected argument "now"`, true},
		{[]string{"servers", "x"}, `servers: unexpected argument "x"`, true},
		{[]string{"maint", "web/a", "-force"}, `maint: unexpected argument "-force"; usage: maint B/S [-kill]`, true},
		{[]string{"weight", "web/a"}, "weight: missing weight; usage: weight B/S N", true},
		{[]string{"weight", "web/a", "300"}, `weight: weight "300" is not a whole number from 0 to 256`, true},
		{[]string{"weight", "web/a", "x"}, `weight: weight "x" is not a whole number`, true},
		{[]string{"drain", "web/zz"}, "unknown server web/zz", false},
	} {
		_, err := run(t, c, tc.args...)
		var ue *UsageError
		if err == nil || !strings.HasPrefix(err.Error(), tc.err) || errors.As(err, &ue) != tc.usage {
			t.Errorf("%q: %v (usage %v), want %q (usage %v)", tc.args, err, errors.As(err, &ue), tc.err, tc.usage)
		}
		if tc.usage && CheckArgs(tc.args) == nil {
			t.Errorf("CheckArgs(%q) passed", tc.args)
		}
	}
	for _, ok := range [][]string{{"servers"}, {"maint", "web/a", "--kill"}, {"weight", "b/s", "0"}, {"help"}} {
		if err := CheckArgs(ok); err != nil {
			t.Errorf("CheckArgs(%q): %v", ok, err)
		}
	}
}

func TestHelp(t *testing.T) {
	c, _, _, _ := fixture(t)
	out, err := run(t, c, "help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"commands:\n", "  servers ", "  maint B/S [-kill]  ", "  weight B/S N  ", "0 to 256", "BACKEND/SERVER"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
	if u := Usage(); u != "servers | conns | drain B/S | maint B/S [-kill] | ready B/S | weight B/S N | help" {
		t.Errorf("Usage() = %q", u)
	}
}

// TestCommandsOverSocket: the commands answer through a real socket as
// they do in process.
func TestCommandsOverSocket(t *testing.T) {
	c, rt, _, _ := fixture(t)
	_, path := serve(t, c)
	var out bytes.Buffer
	if err := Do(path, []string{"weight", "api/x", "0"}, &out); err != nil || out.String() != "api/x: weight 1 -> 0\n" {
		t.Errorf("weight: %q, %v", out.String(), err)
	}
	if s, _ := rt.Server("api/x"); s.State() != balance.StateDraining {
		t.Errorf("api/x is %s, want draining", s.State())
	}
	if err := Do(path, []string{"ready", "web/zz"}, &out); err == nil || err.Error() != "unknown server web/zz" {
		t.Errorf("unknown server: %v", err)
	}
	if err := Do(path, []string{"nope"}, &out); err == nil || !strings.HasPrefix(err.Error(), `unknown command "nope"`) {
		t.Errorf("unknown command: %v", err)
	}
}
