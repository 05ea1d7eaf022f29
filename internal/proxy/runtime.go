package proxy

import (
	"fmt"
	"strings"

	"rsp/internal/balance"
)

// ServerView is one server of the running configuration, as rsp ctl
// servers shows it and metrics export it.
type ServerView struct {
	Backend      string // the backend's name ("web")
	Server       string // the server's name within it ("a")
	Addr         string // where it is connected to
	State        string // balance.Server.State: up, down, draining, maintenance
	Weight       int    // effective weight, runtime changes included
	Active       int64  // connections picked and not yet ended
	ChecksPassed uint64 // active health checks passed, ever
	ChecksFailed uint64 // active health checks failed, ever
	Backup       bool   // a backup server: used only while no other server can be
}

// Pools returns the running configuration's server pools, in
// configuration order; none before the first Apply or after Close. It
// does not wait for an Apply in progress: until one commits, it returns
// the pools of the configuration before.
func (p *Proxy) Pools() []*balance.Pool {
	if pools := p.running.Load(); pools != nil {
		return *pools
	}
	return nil
}

// Servers returns every server of every backend, backends and servers
// in configuration order.
func (p *Proxy) Servers() []ServerView {
	var out []ServerView
	for _, pl := range p.Pools() {
		for _, s := range pl.Servers() {
			pass, fail := s.Checks()
			out = append(out, ServerView{
				Backend: pl.Name(), Server: s.ShortName(), Addr: s.Addr().String(),
				State: s.State(), Weight: s.Weight(), Active: s.Active(),
				ChecksPassed: pass, ChecksFailed: fail, Backup: s.Backup(),
			})
		}
	}
	return out
}

// Server returns the running server named "BACKEND/SERVER", or an error
// that says which names there are.
func (p *Proxy) Server(name string) (*balance.Server, error) {
	backend, server, ok := strings.Cut(name, "/")
	if !ok || backend == "" || server == "" {
		return nil, fmt.Errorf("bad server name %q: write BACKEND/SERVER, e.g. web/a", name)
	}
	pools := p.Pools()
	for _, pl := range pools {
		if pl.Name() != backend {
			continue
		}
		if s := pl.Server(server); s != nil {
			return s, nil
		}
		var names []string
		for _, s := range pl.Servers() {
			names = append(names, s.ShortName())
		}
		return nil, fmt.Errorf("unknown server %s: backend %s has %s", name, backend, strings.Join(names, ", "))
	}
	var names []string
	for _, pl := range pools {
		names = append(names, pl.Name())
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("unknown server %s: no configuration is running", name)
	}
	return nil, fmt.Errorf("unknown server %s: no backend %s (backends: %s)", name, backend, strings.Join(names, ", "))
}
