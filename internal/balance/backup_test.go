package balance

import (
	"bytes"
	"errors"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"
	"time"
)

// backupPool is primaries a and b (weight 1, maxconn 1) and backups c
// (weight 1) and d (weight 2), logging into log; EjectAfter 1 so that one
// failed connect ejects a server (EjectTime an hour: it stays out until
// the test brings it back).
func backupPool(t *testing.T, alg Algorithm, log *bytes.Buffer) *Pool {
	t.Helper()
	p, err := NewPool("app", alg, []ServerConfig{
		{Name: "a", Addr: tcp(9000), Weight: 1, MaxConn: 1},
		{Name: "b", Addr: tcp(9001), Weight: 1, MaxConn: 1},
		{Name: "c", Addr: tcp(9002), Weight: 1, Backup: true},
		{Name: "d", Addr: tcp(9003), Weight: 2, Backup: true},
	}, Health{EjectAfter: 1, EjectTime: time.Hour}, slog.New(slog.NewTextHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// picksTried is picks with tried passed to every Pick.
func picksTried(t *testing.T, p *Pool, n int, tried []*Server) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		s, err := p.Pick(clientN(i), tried)
		if err != nil {
			t.Fatal(err)
		}
		got[s.ShortName()]++
		s.Release()
	}
	return got
}

const (
	toBackups   = `msg="all primary servers unavailable; using backup servers" backend=app`
	toPrimaries = `msg="primary servers available again" backend=app`
)

// TestBackupOnlyWhenPrimariesCannot: for every algorithm and every way a
// primary can be out of reach (down by checks, ejected by failed
// connects, drained, in maintenance, of weight 0, full, already tried),
// backups take no connection while a primary can, take them all while
// none can, and give way as soon as one can again; connections live on
// a backup carry on. A switch is logged once each way when no primary is
// in rotation; overflow (full) and retries (tried) log nothing.
func TestBackupOnlyWhenPrimariesCannot(t *testing.T) {
	type outFunc func(p *Pool) (tried []*Server)
	cases := []struct {
		name     string
		out      outFunc // takes a and b out of reach
		back     outFunc // brings a back; b stays out
		switches bool    // logged as a switch
	}{
		{"down", func(p *Pool) []*Server {
			p.Server("a").setDown(byCheck, "test")
			p.Server("b").setDown(byCheck, "test")
			return nil
		}, func(p *Pool) []*Server { p.Server("a").setUp("test"); return nil }, true},
		{"ejected", func(p *Pool) []*Server {
			p.Server("a").Connected(errors.New("refused"))
			p.Server("b").Connected(errors.New("refused"))
			return nil
		}, func(p *Pool) []*Server { p.Server("a").setUp("test"); return nil }, true},
		{"drain", func(p *Pool) []*Server {
			p.Server("a").SetAdmin(Drain)
			p.Server("b").SetAdmin(Drain)
			return nil
		}, func(p *Pool) []*Server { p.Server("a").SetAdmin(Ready); return nil }, true},
		{"maint", func(p *Pool) []*Server {
			p.Server("a").SetAdmin(Maint)
			p.Server("b").SetAdmin(Maint)
			return nil
		}, func(p *Pool) []*Server { p.Server("a").SetAdmin(Ready); return nil }, true},
		{"weight0", func(p *Pool) []*Server {
			p.Server("a").SetWeight(0)
			p.Server("b").SetWeight(0)
			return nil
		}, func(p *Pool) []*Server { p.Server("a").SetWeight(1); return nil }, true},
		{"full", func(p *Pool) []*Server {
			for range 2 { // maxconn 1 each: one on a, one on b, held
				if s, err := p.Pick(client, nil); err != nil || s.backup {
					t.Fatalf("filling the primaries picked %v, %v", s, err)
				}
			}
			return nil
		}, func(p *Pool) []*Server { p.Server("a").Release(); return nil }, false},
		{"tried", func(p *Pool) []*Server {
			return []*Server{p.Server("a"), p.Server("b")}
		}, func(p *Pool) []*Server { return []*Server{p.Server("b")} }, false},
	}
	for _, alg := range algorithms {
		for _, c := range cases {
			t.Run(alg.String()+"/"+c.name, func(t *testing.T) {
				var log bytes.Buffer
				p := backupPool(t, alg, &log)
				const n = 300
				if got := picksTried(t, p, n, nil); got["a"] == 0 || got["b"] == 0 || got["a"]+got["b"] != n {
					t.Fatalf("all primaries in: %v, want every pick on a and b", got)
				}

				tried := c.out(p)
				got := picksTried(t, p, n, tried)
				if got["c"] == 0 || got["d"] == 0 || got["c"]+got["d"] != n {
					t.Errorf("no primary can: %v, want every pick on c and d", got)
				}
				if alg == RoundRobin && (got["c"] != n/3 || got["d"] != 2*n/3) {
					t.Errorf("roundrobin over backups of weights 1:2: %v, want c:%d d:%d", got, n/3, 2*n/3)
				}
				if n := strings.Count(log.String(), toBackups); !c.switches && n != 0 || c.switches && n != 1 {
					t.Errorf("switch to backups logged %d times, want %v:\n%s", n, c.switches, log.String())
				}
				live, err := p.Pick(client, tried) // a connection that stays on a backup
				if err != nil || !live.Backup() {
					t.Fatalf("pick with no primary: %v, %v; want a backup", live, err)
				}

				tried = c.back(p)
				if got := picksTried(t, p, n, tried); got["a"] != n {
					t.Errorf("a back: %v, want every pick on a", got)
				}
				if n := strings.Count(log.String(), toPrimaries); !c.switches && n != 0 || c.switches && n != 1 {
					t.Errorf("switch back logged %d times, want %v:\n%s", n, c.switches, log.String())
				}
				if live.Active() != 1 {
					t.Errorf("backup %s has %d active once a primary is back, want its live 1", live.Name(), live.Active())
				}
				live.Release()
			})
		}
	}
}

// TestBackupTierBalanced: among the backups the pool's algorithm applies
// as it would to a pool of the backups alone: the same servers for the
// same source-hashed clients (the primaries do not shift the backups'
// ring), weights for roundrobin and random, connections per weight for
// leastconn.
func TestBackupTierBalanced(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg.String(), func(t *testing.T) {
			var log bytes.Buffer
			p := backupPool(t, alg, &log)
			p.Server("a").setDown(byCheck, "test")
			p.Server("b").setDown(byCheck, "test")
			alone, err := NewPool("app", alg, []ServerConfig{
				{Name: "c", Addr: tcp(9002), Weight: 1},
				{Name: "d", Addr: tcp(9003), Weight: 2},
			}, Health{}, quiet())
			if err != nil {
				t.Fatal(err)
			}
			const n = 3000
			switch alg {
			case Source, RoundRobin:
				for i := range n {
					s, err := p.Pick(clientN(i), nil)
					if err != nil {
						t.Fatal(err)
					}
					want, _ := alone.Pick(clientN(i), nil)
					if s.ShortName() != want.ShortName() {
						t.Fatalf("pick %d went to %s, a pool of the backups alone gives %s", i, s.Name(), want.Name())
					}
					s.Release()
					want.Release()
				}
			case LeastConn:
				for range 30 {
					p.Pick(client, nil) // held
				}
				if c, d := p.Server("c").Active(), p.Server("d").Active(); c != 10 || d != 20 {
					t.Errorf("leastconn over backups 1:2 holding 30: c:%d d:%d, want 10/20", c, d)
				}
			case Random:
				got := picksTried(t, p, n, nil)
				if share := float64(got["d"]) / n; math.Abs(share-2.0/3) > 0.04 {
					t.Errorf("random over backups 1:2: d's share %.3f, want 0.67 (%v)", share, got)
				}
			}
		})
	}
}

// TestBackupNoServer: the error says why no primary and why no backup
// could take the connection; a pool without backups says what it always
// did, and one of backups alone says only why no backup could.
func TestBackupNoServer(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg.String(), func(t *testing.T) {
			var log bytes.Buffer
			p := backupPool(t, alg, &log)
			p.Server("a").setDown(byCheck, "test")
			p.Server("b").SetAdmin(Maint)
			p.Server("c").Connected(errors.New("refused")) // passive ejection applies to backups
			d := p.Server("d")
			_, err := p.Pick(client, []*Server{d})
			want := "backend app: no server available: 1 down, 1 in maintenance; backup servers: 1 down, 1 failed to connect"
			if !errors.Is(err, ErrNoServer) || err.Error() != want {
				t.Errorf("err %v\nwant %s", err, want)
			}

			only, err := NewPool("app", alg, []ServerConfig{{Name: "c", Addr: tcp(9002), Weight: 1, Backup: true}}, Health{}, quiet())
			if err != nil {
				t.Fatal(err)
			}
			if got := picks(t, only, 10, clientN); got["app/c"] != 10 {
				t.Errorf("a pool of one backup: %v, want every pick on it", got)
			}
			only.Server("c").SetWeight(0)
			_, err = only.Pick(client, nil)
			if want := "backend app: no server available: backup servers: 1 drained (weight 0)"; err == nil || err.Error() != want {
				t.Errorf("err %v\nwant %s", err, want)
			}
		})
	}
}

// TestBackupActiveChecks: active health checks take a backup down and
// bring it back, as they do a primary.
func TestBackupActiveChecks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr()
	ln.Close() // nothing listens: checks fail
	p, err := NewPool("app", RoundRobin, []ServerConfig{
		{Name: "a", Addr: tcp(9000), Weight: 0},
		{Name: "c", Addr: addr, Weight: 1, Backup: true},
	}, Health{Interval: 20 * time.Millisecond, Fall: 1, Rise: 1}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	c := p.Server("c")
	deadline := time.Now().Add(3 * time.Second)
	for c.Up() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	_, err = p.Pick(client, nil)
	if want := "1 drained (weight 0); backup servers: 1 down"; err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Fatalf("backup failing its checks: pick err %v, want one ending %q", err, want)
	}
	ln2, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Skipf("cannot rebind %s: %v", addr, err)
	}
	defer ln2.Close()
	for !c.Up() && time.Now().Before(deadline.Add(3*time.Second)) {
		time.Sleep(5 * time.Millisecond)
	}
	if s, err := p.Pick(client, nil); err != nil || s != c {
		t.Errorf("backup passing its checks again: pick %v, %v; want c", s, err)
	}
}

// TestBackupSwitchSurvivesReload: a pool that inherits from one on its
// backups logs no switch of its own, and logs the way back.
func TestBackupSwitchSurvivesReload(t *testing.T) {
	var log bytes.Buffer
	old := backupPool(t, RoundRobin, &log)
	old.Server("a").Connected(errors.New("refused")) // ejected for an hour
	old.Server("b").Connected(errors.New("refused"))
	if s, err := old.Pick(client, nil); err != nil || !s.Backup() {
		t.Fatalf("pick %v, %v; want a backup", s, err)
	}
	p := backupPool(t, RoundRobin, &log)
	p.Inherit(old)
	old.Close()
	p.Start()
	defer p.Close()
	if s, err := p.Pick(client, nil); err != nil || !s.Backup() {
		t.Fatalf("after reload: pick %v, %v; want a backup", s, err)
	}
	if n := strings.Count(log.String(), toBackups); n != 1 {
		t.Errorf("switch to backups logged %d times over a reload, want once:\n%s", n, log.String())
	}
	p.Server("b").setUp("test")
	if s, err := p.Pick(client, nil); err != nil || s != p.Server("b") {
		t.Fatalf("b up: pick %v, %v; want b", s, err)
	}
	if n := strings.Count(log.String(), toPrimaries); n != 1 {
		t.Errorf("switch back logged %d times, want once:\n%s", n, log.String())
	}
}

// TestPickAllocs: Pick allocates nothing, on the primaries or on the
// backups, for any algorithm.
func TestPickAllocs(t *testing.T) {
	for _, alg := range algorithms {
		var log bytes.Buffer
		p := backupPool(t, alg, &log)
		pick := func() {
			s, err := p.Pick(client, nil)
			if err != nil {
				t.Fatal(err)
			}
			s.Release()
		}
		if n := testing.AllocsPerRun(200, pick); n != 0 {
			t.Errorf("%s: %.1f allocations a pick on the primaries, want 0", alg, n)
		}
		p.Server("a").setDown(byCheck, "test")
		p.Server("b").setDown(byCheck, "test")
		pick() // logs the switch
		if n := testing.AllocsPerRun(200, pick); n != 0 {
			t.Errorf("%s: %.1f allocations a pick on the backups, want 0", alg, n)
		}
	}
}

// BenchmarkPick is a pick and release among four servers, with and
// without two backups besides.
func BenchmarkPick(b *testing.B) {
	for _, alg := range algorithms {
		for _, backups := range []bool{false, true} {
			var sc []ServerConfig
			for i := range 4 {
				sc = append(sc, ServerConfig{Name: string(rune('a' + i)), Addr: tcp(9000 + i), Weight: 1})
			}
			name := alg.String()
			if backups {
				name += "/backups"
				sc = append(sc, ServerConfig{Name: "x", Addr: tcp(9100), Weight: 1, Backup: true},
					ServerConfig{Name: "y", Addr: tcp(9101), Weight: 1, Backup: true})
			}
			p, err := NewPool("app", alg, sc, Health{}, quiet())
			if err != nil {
				b.Fatal(err)
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					s, _ := p.Pick(clientN(i), nil)
					s.Release()
					i++
				}
			})
		}
	}
}
