package balance

import (
	"bytes"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
)

var algorithms = []Algorithm{RoundRobin, LeastConn, Random, Source}

// TestAdminOutOfRotation: a server drained or in maintenance by rsp ctl,
// or set to weight 0 at run time, gets no new connection from any
// algorithm (source hashing included: its clients fall through to the
// next server); made ready again, it gets them again.
func TestAdminOutOfRotation(t *testing.T) {
	for _, alg := range algorithms {
		for _, c := range []struct {
			name       string
			out, back  func(s *Server)
			wantState  string
			wantErrTxt string
		}{
			{"drain", func(s *Server) { s.SetAdmin(Drain) }, func(s *Server) { s.SetAdmin(Ready) }, StateDraining, "drained (rsp ctl)"},
			{"maint", func(s *Server) { s.SetAdmin(Maint) }, func(s *Server) { s.SetAdmin(Ready) }, StateMaintenance, "in maintenance"},
			{"weight0", func(s *Server) { s.SetWeight(0) }, func(s *Server) { s.SetWeight(1) }, StateDraining, "drained (weight 0)"},
		} {
			t.Run(alg.String()+"/"+c.name, func(t *testing.T) {
				p := pool(t, alg, 1, 1, 1)
				b := p.Server("b")
				if got := picks(t, p, 600, clientN); got["app/b"] == 0 {
					t.Fatalf("b never picked while ready: %v", got)
				}
				c.out(b)
				if b.State() != c.wantState {
					t.Errorf("state %q, want %q", b.State(), c.wantState)
				}
				if got := picks(t, p, 600, clientN); got["app/b"] != 0 || got["app/a"] == 0 || got["app/c"] == 0 {
					t.Errorf("b out of rotation, yet picks %v", got)
				}
				c.out(p.Server("a"))
				c.out(p.Server("c"))
				if _, err := p.Pick(client, nil); !errors.Is(err, ErrNoServer) || !strings.Contains(err.Error(), "3 "+c.wantErrTxt) {
					t.Errorf("all out: %v, want 3 %s", err, c.wantErrTxt)
				}
				c.back(p.Server("a"))
				c.back(p.Server("c"))
				c.back(b)
				if b.State() != StateUp {
					t.Errorf("state %q after ready, want up", b.State())
				}
				if got := picks(t, p, 600, clientN); got["app/b"] == 0 {
					t.Errorf("b never picked once ready again: %v", got)
				}
			})
		}
	}
}

// TestRuntimeWeight: a weight set at run time takes the server's share
// in every algorithm at once.
func TestRuntimeWeight(t *testing.T) {
	const n = 8000
	for _, alg := range algorithms {
		t.Run(alg.String(), func(t *testing.T) {
			p := pool(t, alg, 1, 1)
			a := p.Server("a")
			if was, err := a.SetWeight(3); err != nil || was != 1 {
				t.Fatalf("SetWeight(3) = %d, %v; want 1, nil", was, err)
			}
			if a.Weight() != 3 || a.ConfigWeight() != 1 {
				t.Errorf("weight %d (config %d), want 3 (1)", a.Weight(), a.ConfigWeight())
			}
			var share float64
			if alg == LeastConn {
				for range 40 {
					p.Pick(client, nil) // held
				}
				share = float64(a.Active()) / 40
			} else {
				share = float64(picks(t, p, n, clientN)["app/a"]) / n
			}
			if math.Abs(share-0.75) > 0.04 {
				t.Errorf("a's share %.3f at weights 3:1, want 0.75", share)
			}
		})
	}
}

// TestRuntimeWeightSourceConsistent: a weight change moves only the
// changed server's share of source-hashed clients, and changing it back
// restores every client's server.
func TestRuntimeWeightSourceConsistent(t *testing.T) {
	p := pool(t, Source, 1, 1, 1)
	const n = 3000
	before := make([]*Server, n)
	for i := range n {
		before[i], _ = p.Pick(clientN(i), nil)
		before[i].Release()
	}
	c := p.Server("c")
	c.SetWeight(2)
	for i := range n {
		s, _ := p.Pick(clientN(i), nil)
		s.Release()
		if s != before[i] && s != c {
			t.Fatalf("client %d moved from %s to %s, not to the heavier c", i, before[i].Name(), s.Name())
		}
	}
	c.SetWeight(1)
	for i := range n {
		s, _ := p.Pick(clientN(i), nil)
		s.Release()
		if s != before[i] {
			t.Fatalf("client %d on %s after the weight came back, was %s", i, s.Name(), before[i].Name())
		}
	}
}

// TestRuntimeWeightRace: weights change while picks run (go test -race).
func TestRuntimeWeightRace(t *testing.T) {
	for _, alg := range algorithms {
		p := pool(t, alg, 1, 1, 1)
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := range 200 {
				p.Server("b").SetWeight(i % 4)
				p.Server("c").SetAdmin(Admin(i % 3))
			}
		})
		for range 2 {
			wg.Go(func() {
				for i := range 2000 {
					if s, err := p.Pick(clientN(i), nil); err == nil {
						s.Release()
					}
				}
			})
		}
		wg.Wait()
	}
}

// reload builds a pool with the given configured weights that inherits
// from old, and starts it, as a reload does.
func reload(t *testing.T, old *Pool, log *slog.Logger, weights ...int) *Pool {
	t.Helper()
	var sc []ServerConfig
	for i, w := range weights {
		sc = append(sc, ServerConfig{Name: string(rune('a' + i)), Addr: tcp(9000 + i), Weight: w})
	}
	p, err := NewPool("app", old.alg, sc, Health{}, log)
	if err != nil {
		t.Fatal(err)
	}
	p.Inherit(old)
	old.Close()
	p.Start()
	t.Cleanup(p.Close)
	return p
}

// TestAdminSurvivesReload: drain and maint set at run time survive a
// reload that keeps the server's name and address; a server whose
// address changed starts ready.
func TestAdminSurvivesReload(t *testing.T) {
	old := pool(t, RoundRobin, 1, 1, 1)
	old.Server("a").SetAdmin(Maint)
	old.Server("b").SetAdmin(Drain)
	p := reload(t, old, quiet(), 1, 1, 1)
	if a, b := p.Server("a"), p.Server("b"); a.Admin() != Maint || b.Admin() != Drain || a.State() != StateMaintenance {
		t.Errorf("after reload: a %v (%s), b %v; want maint, drain", a.Admin(), a.State(), b.Admin())
	}
	if got := picks(t, p, 10, nil); got["app/c"] != 10 {
		t.Errorf("picks after reload %v, want all on c", got)
	}
	moved, err := NewPool("app", RoundRobin, []ServerConfig{{Name: "a", Addr: tcp(9100), Weight: 1}}, Health{}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	moved.Inherit(p)
	if moved.Server("a").Admin() != Ready {
		t.Error("a server whose address changed kept the old address's maint")
	}
}

// TestRuntimeWeightVersusFile: a runtime weight survives reloads while
// the file keeps the server's weight; a file that changes the weight
// wins (logged), and the runtime weight does not come back when the file
// later returns to the old value.
func TestRuntimeWeightVersusFile(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	old := pool(t, RoundRobin, 1, 1)
	old.Server("a").SetWeight(4)

	p := reload(t, old, log, 1, 1) // file unchanged
	if w := p.Server("a").Weight(); w != 4 {
		t.Fatalf("weight %d after a reload that kept the file's weight, want the runtime 4", w)
	}
	if got := picks(t, p, 50, nil); got["app/a"] != 40 {
		t.Errorf("picks %v, want 40 of 50 on a (weights 4:1)", got)
	}

	// Before Start, a new pool whose file changed the weight uses the
	// file's, and the old one (which may keep serving) its runtime one.
	next, err := NewPool("app", RoundRobin, []ServerConfig{{Name: "a", Addr: tcp(9000), Weight: 2}, {Name: "b", Addr: tcp(9001), Weight: 1}}, Health{}, log)
	if err != nil {
		t.Fatal(err)
	}
	next.Inherit(p)
	if p.Server("a").Weight() != 4 || next.Server("a").Weight() != 2 {
		t.Errorf("before Start: old %d, new %d; want 4, 2", p.Server("a").Weight(), next.Server("a").Weight())
	}
	p.Close()
	next.Start()
	t.Cleanup(next.Close)
	if !strings.Contains(buf.String(), "runtime weight dropped") || !strings.Contains(buf.String(), "runtime_weight=4") {
		t.Errorf("dropping the runtime weight was not logged:\n%s", buf.String())
	}
	back := reload(t, next, log, 1, 1) // the file returns to 1
	if w := back.Server("a").Weight(); w != 1 {
		t.Errorf("weight %d after the file returned to 1, want 1 (the runtime 4 was dropped)", w)
	}

	// Setting the file's own weight ends the override: a later file
	// change is simply taken.
	back.Server("b").SetWeight(3)
	back.Server("b").SetWeight(1)
	if again := reload(t, back, log, 1, 5); again.Server("b").Weight() != 5 {
		t.Errorf("b weight %d, want the file's 5", again.Server("b").Weight())
	}
}

func TestSetWeightRange(t *testing.T) {
	p := pool(t, RoundRobin, 1)
	for _, n := range []int{-1, MaxWeight + 1} {
		if _, err := p.Server("a").SetWeight(n); err == nil || !strings.Contains(err.Error(), "out of range: use 0 (drain) to 256") {
			t.Errorf("SetWeight(%d): %v", n, err)
		}
	}
	if _, err := p.Server("a").SetWeight(MaxWeight); err != nil || p.Server("a").Weight() != MaxWeight {
		t.Errorf("SetWeight(%d): %v, weight %d", MaxWeight, err, p.Server("a").Weight())
	}
}

// TestChangeLogged: each change by rsp ctl is one Info line naming the
// server, what changed, from and to, and the caller's attributes; a
// setting that changes nothing logs nothing.
func TestChangeLogged(t *testing.T) {
	var buf bytes.Buffer
	p, err := NewPool("app", RoundRobin, []ServerConfig{{Name: "a", Addr: tcp(1), Weight: 1}}, Health{}, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Server("a")
	if was := a.SetAdmin(Drain, "uid", 0); was != Ready {
		t.Errorf("SetAdmin returned %v, want ready", was)
	}
	a.SetAdmin(Drain, "uid", 0)
	a.SetWeight(7, "uid", 0)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got:\n%s", buf.String())
	}
	for i, want := range []string{
		`level=INFO msg="server state changed by rsp ctl" server=app/a setting=admin from=ready to=drain uid=0`,
		`level=INFO msg="server state changed by rsp ctl" server=app/a setting=weight from=1 to=7 uid=0`,
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: %s\nwant %s", i, lines[i], want)
		}
	}
}

// TestStatePrecedence: maintenance > draining > down > up.
func TestStatePrecedence(t *testing.T) {
	p := pool(t, RoundRobin, 1)
	s := p.Server("a")
	steps := []struct {
		do   func()
		want string
	}{
		{func() {}, StateUp},
		{func() { s.setDown(byCheck, "test") }, StateDown},
		{func() { s.SetWeight(0) }, StateDraining},
		{func() { s.SetWeight(1); s.SetAdmin(Drain) }, StateDraining},
		{func() { s.SetAdmin(Maint) }, StateMaintenance},
		{func() { s.SetAdmin(Ready) }, StateDown},
		{func() { s.setUp("test") }, StateUp},
	}
	for i, st := range steps {
		st.do()
		if got := s.State(); got != st.want {
			t.Errorf("step %d: state %q, want %q", i, got, st.want)
		}
	}
}

// TestCheckCounts: every active check result is counted, in maintenance
// too, and the counts carry over a reload.
func TestCheckCounts(t *testing.T) {
	old := pool(t, RoundRobin, 1)
	s := old.Server("a")
	s.SetAdmin(Maint)
	for _, err := range []error{nil, nil, errors.New("refused"), nil, errors.New("refused")} {
		s.checkResult(err)
	}
	if pass, fail := s.Checks(); pass != 3 || fail != 2 {
		t.Errorf("checks %d passed %d failed, want 3, 2", pass, fail)
	}
	p := reload(t, old, quiet(), 1)
	if pass, fail := p.Server("a").Checks(); pass != 3 || fail != 2 {
		t.Errorf("after reload: %d passed %d failed, want 3, 2", pass, fail)
	}
}

func TestPoolServerByShortName(t *testing.T) {
	p := pool(t, RoundRobin, 1, 1)
	if s := p.Server("b"); s == nil || s.ShortName() != "b" || s.Name() != "app/b" || s.Pool() != p {
		t.Errorf("Server(b) = %v", s)
	}
	if p.Server("app/b") != nil || p.Server("x") != nil {
		t.Error("Server found a name that is not a short name of the pool")
	}
}

func TestAdminString(t *testing.T) {
	for a, want := range map[Admin]string{Ready: "ready", Drain: "drain", Maint: "maint", 7: "Admin(7)"} {
		if a.String() != want {
			t.Errorf("%d: %q, want %q", int(a), a.String(), want)
		}
	}
}
