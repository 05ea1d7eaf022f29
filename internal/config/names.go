package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"rsp/internal/balance"
	"rsp/internal/dns"
)

// MinResolveEvery bounds how often a name is asked again, whatever its
// TTL (DNS answers with TTL 0 are common behind service registries).
const MinResolveEvery = time.Second

// resolveTimeout bounds one resolution of one name.
const resolveTimeout = 10 * time.Second

// MaxRefresh bounds how long an answer is kept when its TTL is longer
// (a day is common), so that a change behind a long TTL is seen within
// the hour.
const MaxRefresh = time.Hour

// Lookup finds the addresses behind host names and SRV names, with how
// long each answer holds; *dns.Client is the one rsp uses.
type Lookup interface {
	LookupIP(ctx context.Context, host string) ([]netip.Addr, time.Duration, error)
	LookupSRV(ctx context.Context, name string) ([]dns.SRV, time.Duration, error)
}

// NameServer is a server given by a host name (address = "HOST:PORT")
// or by an SRV name (srv = "_app._tcp.example.com"): DNS gives its
// addresses when the file loads and again while rsp runs.
type NameServer struct {
	Backend string
	// Server is the entry's name, weight, maxconn and backup; its Addr
	// is unset.
	Server balance.ServerConfig
	Host   string // the address's host name; "" with SRV
	Port   int
	SRV    string
	// All makes every address a server (resolve = "all", and always
	// with SRV); otherwise the first address is the one server.
	All bool
	// Every is resolve_every: how often to ask again; 0 follows the
	// answer's TTL.
	Every time.Duration
	// Where is "file:line" of the server's section, for logs.
	Where string
	// Found is what the last resolution gave; TTL is how long it holds.
	Found []balance.ServerConfig
	TTL   time.Duration

	weightSet bool       // the file sets weight: it overrides SRV weights
	family    netip.Addr // the backend's source: only its family may be dialed
}

// Key names the entry as "backend/server".
func (n *NameServer) Key() string { return n.Backend + "/" + n.Server.Name }

// Name is what DNS is asked: the SRV name or the host name.
func (n *NameServer) Name() string {
	if n.SRV != "" {
		return n.SRV
	}
	return n.Host
}

// Refresh is how long to keep an answer of time to live ttl before
// asking again: resolve_every if set, else ttl within MinResolveEvery
// and MaxRefresh.
func (n *NameServer) Refresh(ttl time.Duration) time.Duration {
	if n.Every > 0 {
		return n.Every
	}
	return min(max(ttl, MinResolveEvery), MaxRefresh)
}

// Resolve asks DNS now and returns the servers the entry stands for, in
// name order, and how long the answer holds. It fails rather than
// return no server. With resolve = "first", the server found before
// (n.Found) stays while the name still gives its address, so a DNS
// server that rotates its answers does not move the server at each
// lookup; otherwise the first address is the server.
func (n *NameServer) Resolve(ctx context.Context, l Lookup) ([]balance.ServerConfig, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	if n.SRV != "" {
		return n.resolveSRV(ctx, l)
	}
	ips, ttl, err := l.LookupIP(ctx, n.Host)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot resolve server host '%s': %w", n.Host, err)
	}
	var out []balance.ServerConfig
	for _, ip := range ips {
		// An address given twice (A 10.0.0.1 and AAAA ::ffff:10.0.0.1)
		// is one server.
		if sc, ok := n.server(ip, uint16(n.Port), n.Server.Weight, n.Server.Backup); ok && !slices.ContainsFunc(out, sameName(sc)) {
			out = append(out, sc)
		}
	}
	if !n.All && len(out) > 0 {
		pick := out[0]
		if len(n.Found) == 1 {
			for _, sc := range out {
				if sc.Addr.String() == n.Found[0].Addr.String() {
					pick = sc
				}
			}
		}
		pick.Name = n.Server.Name
		return []balance.ServerConfig{pick}, ttl, nil
	}
	return n.found(out, ttl)
}

// sameName matches the servers named as sc is.
func sameName(sc balance.ServerConfig) func(balance.ServerConfig) bool {
	return func(o balance.ServerConfig) bool { return o.Name == sc.Name }
}

// resolveSRV turns SRV records into servers: each address of each
// target at the record's port. The records of the lowest priority are
// the servers; those of any other priority are backups. The record's
// weight is the server's, unless the file sets one.
func (n *NameServer) resolveSRV(ctx context.Context, l Lookup) ([]balance.ServerConfig, time.Duration, error) {
	recs, ttl, err := l.LookupSRV(ctx, n.SRV)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot resolve SRV name '%s': %w", n.SRV, err)
	}
	var out []balance.ServerConfig
	for _, r := range recs {
		w := n.Server.Weight
		if !n.weightSet {
			w = min(max(int(r.Weight), 1), MaxWeight)
		}
		backup := n.Server.Backup || r.Priority != recs[0].Priority
		for _, ip := range r.Addrs {
			if sc, ok := n.server(ip, r.Port, w, backup); ok && !slices.ContainsFunc(out, sameName(sc)) {
				out = append(out, sc)
			}
		}
	}
	return n.found(out, ttl)
}

// server is the entry's server at ip:port, named "NAME@IP:PORT"; false
// when ip is of the other family than the backend's source.
func (n *NameServer) server(ip netip.Addr, port uint16, weight int, backup bool) (balance.ServerConfig, bool) {
	ip = ip.Unmap()
	if n.family.IsValid() && ip.Is4() != n.family.Is4() {
		return balance.ServerConfig{}, false
	}
	ap := netip.AddrPortFrom(ip, port)
	return balance.ServerConfig{
		Name: n.Server.Name + "@" + ap.String(), Addr: net.TCPAddrFromAddrPort(ap),
		Weight: weight, MaxConn: n.Server.MaxConn, Backup: backup,
	}, true
}

// found returns out sorted by name, or an error if it is empty.
func (n *NameServer) found(out []balance.ServerConfig, ttl time.Duration) ([]balance.ServerConfig, time.Duration, error) {
	if len(out) == 0 {
		what := "addresses"
		if n.family.IsValid() {
			what = "addresses of the backend's source family"
		}
		return nil, 0, fmt.Errorf("'%s' gives no %s", n.Name(), what)
	}
	slices.SortFunc(out, func(a, b balance.ServerConfig) int { return strings.Compare(a.Name, b.Name) })
	return out, ttl, nil
}

// SameServers reports whether a and b are the same servers: names,
// addresses, weights, limits and roles.
func SameServers(a, b []balance.ServerConfig) bool {
	return slices.EqualFunc(a, b, func(x, y balance.ServerConfig) bool {
		return x.Name == y.Name && x.Addr.String() == y.Addr.String() && x.Weight == y.Weight && x.MaxConn == y.MaxConn && x.Backup == y.Backup
	})
}

// WithFound returns a copy of c in which the name server of key gives
// found, holding for ttl; c itself is left as it is. It returns nil if
// c has no such entry.
func (c *Config) WithFound(key string, found []balance.ServerConfig, ttl time.Duration) *Config {
	for bi, b := range c.Backends {
		for ni, n := range b.Names {
			if n.Key() != key {
				continue
			}
			nn := *n
			nn.Found, nn.TTL = found, ttl
			nb := *b
			nb.Names = slices.Clone(b.Names)
			nb.Names[ni] = &nn
			nb.expand()
			out := *c
			out.Backends = slices.Clone(c.Backends)
			out.Backends[bi] = &nb
			return &out
		}
	}
	return nil
}

// nameServer returns c's name server of key, or nil (c may be nil).
func (c *Config) nameServer(key string) *NameServer {
	if c == nil {
		return nil
	}
	for _, n := range c.Names() {
		if n.Key() == key {
			return n
		}
	}
	return nil
}

// Names returns every name server of every backend.
func (c *Config) Names() []*NameServer {
	var out []*NameServer
	for _, b := range c.Backends {
		out = append(out, b.Names...)
	}
	return out
}

// expand sets b.Servers to its servers given by address and those its
// name servers found, in name order.
func (b *Backend) expand() {
	b.Servers = slices.Clone(b.static)
	for _, n := range b.Names {
		b.Servers = append(b.Servers, n.Found...)
	}
	slices.SortFunc(b.Servers, func(x, y balance.ServerConfig) int { return strings.Compare(x.Name, y.Name) })
}

// checkHostName checks that s can be a DNS name: dot-separated labels
// of 1 to 63 letters, digits, '-' or '_', 253 bytes at most.
func checkHostName(s string) error {
	if s == "" || len(s) > 253 {
		return errors.New("give a DNS name such as \"_app._tcp.example.com\"")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("a DNS name is labels of 1 to 63 characters separated by single dots")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%q is not allowed in a DNS name", r)
			}
		}
	}
	return nil
}
