package proxy

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"rsp/internal/balance"
	"rsp/internal/config"
	"rsp/internal/splice"
)

const runtimeConf = `
[frontend.f]
listen = "127.0.0.1:0"
backend = "web"
[frontend.g]
listen = "127.0.0.1:0"
backend = "api"
[backend.web]
server.a = { address = "127.0.0.1:9", weight = 2 }
server.b = { address = "127.0.0.1:10" }
[backend.api]
server.x = { address = "127.0.0.1:11" }
`

// applied runs conf on a started copy relay and returns the proxy.
func applied(t *testing.T, conf string) *Proxy {
	t.Helper()
	cfg, err := config.Parse("runtime.conf", conf)
	if err != nil {
		t.Fatal(err)
	}
	r := &splice.Relay{Mode: splice.ModeCopy, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Shutdown(context.Background()) })
	p := &Proxy{Relay: r, Logger: r.Logger}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// TestServersView: Servers lists every backend's servers in
// configuration order with their live state; a reload keeps what rsp
// ctl set; Close leaves none.
func TestServersView(t *testing.T) {
	p := applied(t, runtimeConf)
	cfg, _ := config.Parse("runtime.conf", runtimeConf)
	var want []string
	for _, b := range cfg.Backends {
		for _, s := range b.Servers {
			want = append(want, b.Name+"/"+s.Name)
		}
	}
	got := p.Servers()
	if len(got) != len(want) {
		t.Fatalf("servers %+v, want %v", got, want)
	}
	for i, v := range got {
		if v.Backend+"/"+v.Server != want[i] || v.State != balance.StateUp {
			t.Errorf("server %d: %+v, want %s up", i, v, want[i])
		}
	}
	s, err := p.Server("web/a")
	if err != nil {
		t.Fatal(err)
	}
	s.SetAdmin(balance.Drain)
	s.SetWeight(7)
	cfg2, _ := config.Parse("runtime.conf", runtimeConf)
	if err := p.Apply(cfg2); err != nil {
		t.Fatal(err)
	}
	for _, v := range p.Servers() {
		if v.Backend == "web" && v.Server == "a" && (v.State != balance.StateDraining || v.Weight != 7 || v.Addr != "127.0.0.1:9") {
			t.Errorf("after reload: %+v, want draining, weight 7", v)
		}
	}
	if len(p.Pools()) != 2 {
		t.Errorf("%d pools, want 2", len(p.Pools()))
	}
	p.Close()
	if len(p.Servers()) != 0 || len(p.Pools()) != 0 {
		t.Error("servers listed after Close")
	}
}

func TestServerByName(t *testing.T) {
	p := applied(t, runtimeConf)
	if s, err := p.Server("api/x"); err != nil || s.Name() != "api/x" {
		t.Errorf("api/x: %v, %v", s, err)
	}
	for name, want := range map[string]string{
		"web/x": "unknown server web/x: backend web has a, b",
		"db/a":  "unknown server db/a: no backend db (backends: ",
		"web":   `bad server name "web": write BACKEND/SERVER, e.g. web/a`,
		"/a":    `bad server name "/a"`,
	} {
		_, err := p.Server(name)
		if err == nil || len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
			t.Errorf("Server(%q): %v, want %q", name, err, want)
		}
	}
	var none Proxy
	if _, err := none.Server("web/a"); err == nil || err.Error() != "unknown server web/a: no configuration is running" {
		t.Errorf("no configuration: %v", err)
	}
}
