package balance

import (
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func tcp(port int) net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port} }

func pool(t *testing.T, alg Algorithm, weights ...int) *Pool {
	t.Helper()
	var sc []ServerConfig
	for i, w := range weights {
		sc = append(sc, ServerConfig{Name: string(rune('a' + i)), Addr: tcp(9000 + i), Weight: w})
	}
	p, err := NewPool("app", alg, sc, Health{}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var client = netip.MustParseAddrPort("127.0.0.1:5000")

// picks picks n times, releasing each pick at once, and counts per server.
func picks(t *testing.T, p *Pool, n int, from func(i int) netip.AddrPort) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		c := client
		if from != nil {
			c = from(i)
		}
		s, err := p.Pick(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		got[s.Name()]++
		s.Release()
	}
	return got
}

func TestRoundRobinWeightsExactAndSmooth(t *testing.T) {
	p := pool(t, RoundRobin, 5, 1, 1)
	var seq []string
	for range 7 {
		s, _ := p.Pick(client, nil)
		seq = append(seq, s.Name()[4:])
		s.Release()
	}
	// Smooth: b and c are interleaved with a, not bunched at the end.
	if got := strings.Join(seq, ""); got != "aabacaa" {
		t.Errorf("sequence %q, want aabacaa", got)
	}
	got := picks(t, pool(t, RoundRobin, 1, 2, 3), 600, nil)
	if got["app/a"] != 100 || got["app/b"] != 200 || got["app/c"] != 300 {
		t.Errorf("weights 1:2:3 over 600 picks gave %v", got)
	}
}

func TestLeastConnPrefersIdle(t *testing.T) {
	p := pool(t, LeastConn, 1, 1, 1)
	var held []*Server
	for range 6 {
		s, _ := p.Pick(client, nil)
		held = append(held, s)
	}
	for _, s := range p.Servers() {
		if s.Active() != 2 {
			t.Errorf("%s has %d active, want 2 (6 held over 3 servers)", s.Name(), s.Active())
		}
	}
	held[0].Release() // one server now has 1
	s, _ := p.Pick(client, nil)
	if s != held[0] {
		t.Errorf("picked %s, want the least loaded %s", s.Name(), held[0].Name())
	}
	// Weighted: a server of weight 2 carries twice the connections.
	p2 := pool(t, LeastConn, 2, 1)
	for range 30 {
		p2.Pick(client, nil)
	}
	if a, b := p2.Servers()[0].Active(), p2.Servers()[1].Active(); a != 20 || b != 10 {
		t.Errorf("weights 2:1 holding 30: %d/%d, want 20/10", a, b)
	}
}

func TestRandomDistribution(t *testing.T) {
	const n = 30000
	got := picks(t, pool(t, Random, 1, 1, 2), n, nil)
	for name, want := range map[string]float64{"app/a": 0.25, "app/b": 0.25, "app/c": 0.5} {
		if share := float64(got[name]) / n; math.Abs(share-want) > 0.03 {
			t.Errorf("%s share %.3f, want %.2f±0.03 (%v)", name, share, want, got)
		}
	}
}

func clientN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 40000)
}

func TestSourceStickyAndConsistent(t *testing.T) {
	p := pool(t, Source, 1, 1, 1, 1)
	const n = 4000
	first := make([]*Server, n)
	for i := range n {
		s, _ := p.Pick(clientN(i), nil)
		first[i] = s
		s.Release()
		again, _ := p.Pick(netip.AddrPortFrom(clientN(i).Addr(), 1234), nil)
		if again != s {
			t.Fatalf("client %d moved from %s to %s on a new source port", i, s.Name(), again.Name())
		}
		again.Release()
	}
	count := map[*Server]int{}
	for _, s := range first {
		count[s]++
	}
	for s, c := range count {
		if share := float64(c) / n; share < 0.15 || share > 0.35 {
			t.Errorf("%s holds %.2f of clients, want about 0.25", s.Name(), share)
		}
	}
	// Remove server d: only d's clients move.
	var sc []ServerConfig
	for i := range 3 {
		sc = append(sc, ServerConfig{Name: string(rune('a' + i)), Addr: tcp(9000 + i), Weight: 1})
	}
	p3, _ := NewPool("app", Source, sc, Health{}, quiet())
	moved := 0
	for i := range n {
		s, _ := p3.Pick(clientN(i), nil)
		if s.Name() != first[i].Name() {
			moved++
			if first[i].Name() != "app/d" {
				t.Fatalf("client %d moved from %s though only app/d was removed", i, first[i].Name())
			}
		}
		s.Release()
	}
	if moved != count[p.Servers()[3]] {
		t.Errorf("%d clients moved, want exactly d's %d", moved, count[p.Servers()[3]])
	}
}

func TestDrainedAndFullSkipped(t *testing.T) {
	for _, alg := range []Algorithm{RoundRobin, LeastConn, Random, Source} {
		t.Run(alg.String(), func(t *testing.T) {
			p, _ := NewPool("app", alg, []ServerConfig{
				{Name: "a", Addr: tcp(1), Weight: 1, MaxConn: 2},
				{Name: "b", Addr: tcp(2), Weight: 0},
				{Name: "c", Addr: tcp(3), Weight: 1, MaxConn: 1},
			}, Health{}, quiet())
			got := map[string]int{}
			for range 3 {
				s, err := p.Pick(client, nil)
				if err != nil {
					t.Fatal(err)
				}
				got[s.Name()]++
			}
			if got["app/a"] != 2 || got["app/c"] != 1 || got["app/b"] != 0 {
				t.Errorf("got %v, want a:2 c:1 and none on drained b", got)
			}
			_, err := p.Pick(client, nil)
			if !errors.Is(err, ErrNoServer) || !strings.Contains(err.Error(), "2 full (maxconn), 1 drained") {
				t.Errorf("all full: err %v", err)
			}
		})
	}
}

func TestTriedSkipped(t *testing.T) {
	p := pool(t, RoundRobin, 1, 1)
	a, _ := p.Pick(client, nil)
	b, err := p.Pick(client, []*Server{a})
	if err != nil || b == a {
		t.Fatalf("retry picked %v, %v; want the other server", b, err)
	}
	if _, err := p.Pick(client, []*Server{a, b}); err == nil || !strings.Contains(err.Error(), "2 failed to connect") {
		t.Errorf("all tried: err %v", err)
	}
}

func TestPassiveEjectionAndReadmit(t *testing.T) {
	var sc []ServerConfig
	sc = append(sc, ServerConfig{Name: "a", Addr: tcp(1), Weight: 1}, ServerConfig{Name: "b", Addr: tcp(2), Weight: 1})
	p, _ := NewPool("app", RoundRobin, sc, Health{EjectAfter: 2, EjectTime: 50 * time.Millisecond}, quiet())
	a := p.Servers()[0]
	a.Connected(errors.New("refused"))
	a.Connected(nil) // a success resets the count
	a.Connected(errors.New("refused"))
	if !a.Up() {
		t.Fatal("ejected after non-consecutive failures")
	}
	a.Connected(errors.New("refused"))
	if a.Up() {
		t.Fatal("not ejected after 2 consecutive failures")
	}
	for range 10 {
		if s, _ := p.Pick(client, nil); s == a {
			t.Fatal("picked an ejected server")
		} else {
			s.Release()
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for !a.Up() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !a.Up() {
		t.Fatal("ejected server not readmitted after EjectTime")
	}
}

func TestActiveChecksRiseFall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr()
	p, _ := NewPool("app", RoundRobin, []ServerConfig{{Name: "a", Addr: addr, Weight: 1}},
		Health{Interval: 20 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 2}, quiet())
	p.Start()
	defer p.Close()
	s := p.Servers()[0]
	wait := func(up bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for s.Up() != up && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if s.Up() != up {
			t.Fatalf("server up=%v, want %v", s.Up(), up)
		}
	}
	wait(true)
	ln.Close()
	wait(false)
	if _, err := p.Pick(client, nil); !errors.Is(err, ErrNoServer) || !strings.Contains(err.Error(), "1 down") {
		t.Errorf("pick with the only server down: %v", err)
	}
	ln2, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Skipf("cannot rebind %s: %v", addr, err)
	}
	defer ln2.Close()
	wait(true)
}

func TestInheritKeepsState(t *testing.T) {
	old := pool(t, RoundRobin, 1, 1)
	old.Servers()[0].setDown(byEjection, "test")
	s, _ := old.Pick(client, nil) // b, active 1
	p := pool(t, LeastConn, 1, 1, 1)
	p.Inherit(old)
	if p.Servers()[0].Up() || p.Servers()[1].Active() != 1 {
		t.Errorf("inherited state: a up=%v, b active=%d", p.Servers()[0].Up(), p.Servers()[1].Active())
	}
	s.Release()
	if p.Servers()[1].Active() != 0 {
		t.Error("release on the old pool's server not seen by the new pool")
	}
}

// TestInheritWithoutChecks: a reload that removes active checks (the new
// pool has none) leaves no server down for good. Inherit changes nothing
// (the old pool may keep serving if the reload is undone); Start brings a
// server down by checks up at once, and gives one ejected while checks
// were on (no readmit pending) its rest, then tries it again. A pool that
// keeps checks keeps the state as it is.
func TestInheritWithoutChecks(t *testing.T) {
	withChecks := Health{Interval: time.Hour, EjectAfter: 1}
	mk := func(h Health) *Pool {
		t.Helper()
		p, err := NewPool("app", RoundRobin, []ServerConfig{{Name: "a", Addr: tcp(9000), Weight: 1}, {Name: "b", Addr: tcp(9001), Weight: 1}}, h, quiet())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	old := mk(withChecks)
	a, b := old.Servers()[0], old.Servers()[1]
	a.setDown(byCheck, "test")
	b.Connected(errors.New("refused")) // ejected; checks would bring it back
	if a.Up() || b.Up() {
		t.Fatal("servers not down")
	}

	kept := mk(withChecks)
	kept.Inherit(old)
	kept.Start()
	if kept.Servers()[0].Up() || kept.Servers()[1].Up() {
		t.Error("a pool that keeps active checks changed the inherited state")
	}

	p := mk(Health{EjectAfter: 1, EjectTime: 50 * time.Millisecond})
	p.Inherit(old)
	if p.Servers()[0].Up() || p.Servers()[1].Up() || a.Up() || b.Up() {
		t.Fatal("Inherit changed the shared state before Start")
	}
	p.Start()
	if !p.Servers()[0].Up() || !a.Up() {
		t.Error("server down by checks still down in a pool without checks")
	}
	if p.Servers()[1].Up() {
		t.Error("ejected server up before its rest")
	}
	deadline := time.Now().Add(3 * time.Second)
	for !p.Servers()[1].Up() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !p.Servers()[1].Up() {
		t.Error("server ejected while checks were on never tried again without them")
	}
}

// TestReadmitCancelled: a server brought up before its readmit fires
// (by health checks, say) and then taken down by checks stays down: the
// old ejection's readmit does not bring it back.
func TestReadmitCancelled(t *testing.T) {
	p, err := NewPool("app", RoundRobin, []ServerConfig{{Name: "a", Addr: tcp(9000), Weight: 1}},
		Health{EjectAfter: 1, EjectTime: 50 * time.Millisecond}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	s := p.Servers()[0]
	s.Connected(errors.New("refused"))
	s.setUp("test")
	s.setDown(byCheck, "test")
	time.Sleep(150 * time.Millisecond) // the readmit would have fired by now
	if s.Up() {
		t.Error("an earlier ejection's readmit brought up a server down by checks")
	}
}

func TestParseAlgorithm(t *testing.T) {
	for _, a := range []Algorithm{RoundRobin, LeastConn, Random, Source} {
		if got, err := ParseAlgorithm(a.String()); err != nil || got != a {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", a.String(), got, err)
		}
	}
	if _, err := ParseAlgorithm("fastest"); err == nil || !strings.Contains(err.Error(), "roundrobin, leastconn, random, source") {
		t.Errorf("bad name: %v", err)
	}
}

// TestOldPoolConnectAfterReload: a connect picked from a pool with active
// checks that fails after a reload to a pool without them is judged by
// the new policy: the server is ejected and readmitted after the new
// pool's EjectTime, not left down for good (nothing would check it).
func TestOldPoolConnectAfterReload(t *testing.T) {
	servers := []ServerConfig{{Name: "a", Addr: tcp(9000), Weight: 1}}
	old, err := NewPool("app", RoundRobin, servers, Health{Interval: time.Hour, EjectAfter: 1}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	old.Start()
	picked := old.Servers()[0] // a connect in flight across the reload
	p, err := NewPool("app", RoundRobin, servers, Health{EjectAfter: 1, EjectTime: 50 * time.Millisecond}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.Inherit(old)
	old.Close()
	p.Start()
	picked.Connected(errors.New("refused"))
	if p.Servers()[0].Up() {
		t.Fatal("a failed connect with eject_after 1 did not eject the server")
	}
	deadline := time.Now().Add(3 * time.Second)
	for !p.Servers()[0].Up() {
		if time.Now().After(deadline) {
			t.Fatal("server ejected by a connect from the old pool never readmitted under the new pool's policy")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
