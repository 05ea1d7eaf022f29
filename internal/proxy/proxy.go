// Package proxy runs a configuration on a relay: it opens the frontends'
// listeners (or takes them from the sockets systemd passed), builds the
// backends' server pools, and applies a new configuration in place on
// reload, leaving established connections untouched.
//
// Typical usage:
//
//	p := &proxy.Proxy{Relay: relay, Logger: logger, Systemd: sockets}
//	if err := p.Apply(cfg); err != nil { ... } // first configuration
//	...
//	if err := p.Apply(newCfg); err != nil { ... } // reload: old one keeps serving
//	p.Close()
package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"rsp/internal/activation"
	"rsp/internal/balance"
	"rsp/internal/config"
	"rsp/internal/proxyproto"
	"rsp/internal/splice"
)

// Proxy applies configurations to a started Relay.
type Proxy struct {
	// Relay relays the connections; it must be started.
	Relay *splice.Relay
	// Logger receives server state changes and reload messages.
	Logger *slog.Logger
	// Systemd holds the sockets systemd passed (socket activation). They
	// stay open across reloads, served or not.
	Systemd []activation.Listener
	// Inherited holds the listeners the rsp before this one bound and
	// handed over, by key ("listen ADDR"): Apply serves one instead of
	// binding its address again, so no client is refused meanwhile.
	Inherited map[string]net.Listener

	mu    sync.Mutex
	pools map[string]*balance.Pool
	bound map[string]*bound // by listenerKey
	// limits bound each frontend's connections, by frontend name; kept
	// across reloads so that live connections still count.
	limits map[string]*splice.ConnLimit
	// sources are the frontends' per-source limiters, by frontend name;
	// one whose limits a reload leaves as they were is kept, counts and
	// all.
	sources map[string]*sourceLimiter
	sweeper sweeper // drops the limiters' idle entries while no client comes
	warned  bool    // unused systemd sockets were reported

	// running is the pools in configuration order, for Servers, Server
	// and Pools, which read it without waiting for an Apply in progress.
	running atomic.Pointer[[]*balance.Pool]
}

// bound is a listener being served and the frontend routing it.
type bound struct {
	ln    net.Listener
	fe    *splice.Frontend
	owned bool // bound by rsp (closed when dropped), not systemd's
	name  string
}

// want is a listener the new configuration asks for.
type want struct {
	key   string
	addr  string // to bind, or "" for a systemd socket
	sd    net.Listener
	route *splice.Route
	name  string
}

// Apply makes cfg the running configuration, all or nothing. It builds
// the new pools, binds and serves every new listener, and only then
// commits: kept listeners switch to the new routes, listeners no longer
// configured stop accepting, the old pools give way to the new. If any
// step before the commit fails, what was done is undone (new listeners
// unserved and closed, new pools closed) and the error returned: the
// previous configuration keeps serving, unchanged. A client that reached
// a new listener in the moment before such an undo keeps its connection.
func (p *Proxy) Apply(cfg *config.Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.logger()

	pools := map[string]*balance.Pool{}
	var ordered []*balance.Pool
	closePools := func() {
		for _, pl := range pools {
			pl.Close()
		}
	}
	for _, b := range cfg.Backends {
		pl, err := balance.NewPool(b.Name, b.Balance, b.Servers, b.Health, log)
		if err != nil {
			closePools()
			return err
		}
		pl.Inherit(p.pools[b.Name]) // shares state, changes nothing until Start
		pools[b.Name] = pl
		ordered = append(ordered, pl)
	}

	var wants []want
	taken := map[net.Listener]string{} // systemd socket → the frontend that takes it
	limits := map[string]*splice.ConnLimit{}
	sources := map[string]*sourceLimiter{}
	for _, f := range cfg.Frontends {
		pl := pools[f.Backend]
		b := cfg.Backend(f.Backend)
		if pl == nil || b == nil {
			closePools()
			return fmt.Errorf("%s: frontend %s: no backend named %q", f.Where, f.Name, f.Backend)
		}
		lim := p.limits[f.Name]
		if lim == nil {
			lim = &splice.ConnLimit{} // no limit until committed
		}
		limits[f.Name] = lim
		rt := route(f, b, pl, lim)
		if f.Sources.Enabled() {
			sl := p.sources[f.Name]
			if sl == nil || sl.cfg != f.Sources {
				sl = newSourceLimiter(f.Sources)
			}
			sources[f.Name] = sl
			rt.Sources = sl.l
		}
		if len(f.SNI) > 0 {
			rt.Hello = helloRule(f, rt, cfg, pools) // after every setting it copies
		}
		for _, a := range f.Listen {
			key := "listen " + a
			if config.Ephemeral(a) {
				key += " for " + f.Name // each its own ephemeral port, kept across reloads
			}
			wants = append(wants, want{key: key, addr: a, route: rt, name: f.Name})
		}
		if f.Socket == "" {
			continue
		}
		n := 0
		for i, s := range p.Systemd {
			if f.Socket == config.AnySocket || s.Name == f.Socket {
				if other, ok := taken[s.Listener]; ok {
					closePools()
					return fmt.Errorf("%s: frontends %s and %s both take the systemd socket %q (%s): one socket can route to one frontend; give them different FileDescriptorName= names", f.Where, other, f.Name, s.Name, s.Addr())
				}
				taken[s.Listener] = f.Name
				wants = append(wants, want{key: fmt.Sprintf("systemd %d", i), sd: s.Listener, route: rt, name: f.Name})
				n++
			}
		}
		if n == 0 {
			closePools()
			return p.missingSocket(f)
		}
	}

	// Bind, then serve, what is new before touching what runs, so that
	// an error leaves the running configuration as it was.
	fresh := map[string]*bound{}
	var added []*bound // served, not yet committed
	undo := func() {
		for _, b := range added {
			p.Relay.Unserve(b.ln)
		}
		for _, b := range fresh {
			if b.owned {
				b.ln.Close()
			}
		}
		closePools()
	}
	for _, w := range wants {
		if _, ok := p.bound[w.key]; ok {
			continue
		}
		b := &bound{fe: splice.NewFrontend(w.route), name: w.name, ln: w.sd}
		if ln, ok := p.Inherited[w.key]; ok && w.sd == nil {
			delete(p.Inherited, w.key)
			b.ln, b.owned = ln, true
		} else if w.sd == nil {
			l, err := activation.Listen(w.addr)
			if err != nil {
				undo()
				return fmt.Errorf("frontend %s: %w", w.name, err)
			}
			b.ln, b.owned = l.Listener, true
		}
		fresh[w.key] = b
	}
	next := map[string]*bound{}
	for _, w := range wants {
		b, ok := fresh[w.key]
		if !ok {
			continue
		}
		if err := p.Relay.Serve(b.ln, b.fe); err != nil {
			undo()
			return fmt.Errorf("frontend %s: serve %s: %w", w.name, b.ln.Addr(), err)
		}
		added = append(added, b)
		next[w.key] = b
	}

	// Commit: nothing below fails.
	for _, f := range cfg.Frontends {
		limits[f.Name].SetMax(f.MaxConn)
	}
	p.limits = limits
	p.sources = sources
	p.sweeper.set(sources, p.Relay)
	for _, w := range wants {
		if b, ok := p.bound[w.key]; ok {
			b.fe.Set(w.route)
			b.name = w.name
			next[w.key] = b
		}
	}
	for key, b := range p.bound {
		if _, ok := next[key]; ok {
			continue
		}
		p.Relay.Unserve(b.ln)
		if b.owned {
			b.ln.Close()
		}
		log.Info("stopped listening; its connections go on", "frontend", b.name, "listen", b.ln.Addr().String())
	}
	for _, b := range added {
		log.Info("listening", "frontend", b.name, "listen", b.ln.Addr().String())
	}
	// The old pools' checks stop before the new pools' start, so that
	// no old check changes a shared server state the new pool settled.
	for _, pl := range p.pools {
		pl.Close()
	}
	p.bound, p.pools = next, pools
	for _, pl := range pools {
		pl.Start()
	}
	p.running.Store(&ordered)
	if !p.warned {
		p.warned = true
		for _, s := range p.Systemd {
			if _, ok := taken[s.Listener]; !ok {
				log.Warn("systemd passed a socket no frontend uses; set socket = \""+s.Name+"\" in a frontend",
					"socket", s.Name, "listen", s.Addr().String())
			}
		}
	}
	return nil
}

// route is where frontend f's new connections go: to backend b's pool
// pl, with f's timeouts, connection limit lim and client keepalive, and
// b's retries and server keepalive.
func route(f *config.Frontend, b *config.Backend, pl *balance.Pool, lim *splice.ConnLimit) *splice.Route {
	rt := &splice.Route{
		Name: f.Name, Backend: b.Name, Picker: picker{pl}, Limit: lim,
		ConnectTimeout: f.ConnectTimeout, IdleTimeout: f.IdleTimeout,
		HalfCloseTimeout: f.HalfCloseTimeout, Retries: b.Retries,
		ClientKeepAlive: f.KeepAlive, ServerKeepAlive: b.KeepAlive,
		Source: b.Source,
	}
	if v := b.SendProxy; v != 0 {
		rt.Preamble = func(client, local netip.AddrPort) []byte { return proxyproto.Append(nil, v, client, local) }
	}
	if from := f.AcceptProxyFrom; len(from) > 0 {
		rt.Header = &splice.HeaderRule{
			Trusted: func(a netip.Addr) bool {
				a = a.Unmap()
				for _, p := range from {
					if p.Contains(a) {
						return true
					}
				}
				return false
			},
			Parse:  parseProxyHeader,
			MaxLen: proxyproto.MaxLen,
		}
	}
	if len(f.Allow) > 0 || len(f.Deny) > 0 {
		rt.ACL = &splice.ACL{Allow: f.Allow, Deny: f.Deny} // nil costs nothing per connection
	}
	return rt
}

// parseProxyHeader reads a PROXY protocol header for the relay.
func parseProxyHeader(b []byte) (netip.AddrPort, int, error) {
	h, n, err := proxyproto.Parse(b)
	switch {
	case errors.Is(err, proxyproto.ErrIncomplete):
		return netip.AddrPort{}, 0, splice.ErrHeaderIncomplete
	case err != nil:
		return netip.AddrPort{}, 0, err
	case h.Local:
		return netip.AddrPort{}, n, nil
	}
	return h.Source, n, nil
}

// missingSocket explains a frontend naming a socket systemd did not pass.
func (p *Proxy) missingSocket(f *config.Frontend) error {
	if len(p.Systemd) == 0 {
		return fmt.Errorf("%s: frontend %s: socket %q was not passed by systemd (rsp was not socket-activated); start rsp from its .socket unit, or use listen = \"[HOST]:PORT\"", f.Where, f.Name, f.Socket)
	}
	var names []string
	for _, s := range p.Systemd {
		if !slices.Contains(names, s.Name) {
			names = append(names, s.Name)
		}
	}
	return fmt.Errorf("%s: frontend %s: systemd passed no socket named %q (passed: %s); set FileDescriptorName=%s in the .socket unit or fix the name", f.Where, f.Name, f.Socket, strings.Join(names, ", "), f.Socket)
}

// Owned returns the listeners rsp bound itself (not systemd's), by key,
// for a hand-over to the next process.
func (p *Proxy) Owned() map[string]net.Listener {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]net.Listener{}
	for key, b := range p.bound {
		if b.owned {
			out[key] = b.ln
		}
	}
	return out
}

// Resume returns the route and server for a connection handed over by
// the rsp before this one, its server counted: the running frontend and
// server of those names, or, where the configuration no longer has
// them, a bare route and a server that only names itself. A connection
// handed over before it was connected (Pending) gets its frontend's
// route and no server: it is routed as a new client is. Where its
// frontend is gone, the bare route has no server, and it is reset.
func (p *Proxy) Resume(fc splice.FrozenConn) (*splice.Route, splice.Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rt := &splice.Route{Name: fc.Frontend, Backend: fc.Backend}
	for _, b := range p.bound {
		if b.name == fc.Frontend {
			rt = b.fe.Route()
			break
		}
	}
	if fc.Pending {
		return rt, nil
	}
	if pl := p.pools[fc.Backend]; pl != nil {
		if s := pl.Server(strings.TrimPrefix(fc.Server, fc.Backend+"/")); s != nil {
			s.Hold()
			return rt, s
		}
	}
	return rt, goneServer(fc.Server)
}

// goneServer is a server that the configuration no longer has, of a
// connection handed over: it only names itself.
type goneServer string

func (g goneServer) Addr() net.Addr  { return nil }
func (g goneServer) Name() string    { return string(g) }
func (g goneServer) Connected(error) {}
func (g goneServer) Release()        {}

// Addrs returns the addresses being listened on, by frontend.
func (p *Proxy) Addrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, b := range p.bound {
		out = append(out, b.ln.Addr().String())
	}
	slices.Sort(out)
	return out
}

// Close stops health checks and closes the listeners rsp bound itself.
// Call it after the relay stopped accepting.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pl := range p.pools {
		pl.Close()
	}
	for _, b := range p.bound {
		if b.owned {
			b.ln.Close()
		}
	}
	p.bound, p.pools = nil, nil
	p.running.Store(nil)
	p.sweeper.stop()
}

// ServeAgain gives every listener to the relay again, after a hand-over
// that did not happen (splice.Relay.Unfreeze).
func (p *Proxy) ServeAgain() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, b := range p.bound {
		errs = append(errs, p.Relay.Serve(b.ln, b.fe))
	}
	return errors.Join(errs...)
}

// CloseHandedOver closes the proxy once the next process holds its
// listeners: the files of Unix listeners stay, since they are its now.
func (p *Proxy) CloseHandedOver() {
	p.mu.Lock()
	for _, b := range p.bound {
		if ul, ok := b.ln.(*net.UnixListener); ok && b.owned {
			ul.SetUnlinkOnClose(false)
		}
	}
	p.mu.Unlock()
	p.Close()
}

func (p *Proxy) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

// picker lets the relay pick from a balance.Pool.
type picker struct{ pool *balance.Pool }

func (pk picker) Pick(client netip.AddrPort, tried []splice.Target) (splice.Target, error) {
	var ts []*balance.Server
	for _, t := range tried {
		ts = append(ts, t.(*balance.Server))
	}
	s, err := pk.pool.Pick(client, ts)
	if err != nil {
		return nil, err
	}
	return s, nil
}
