// Package dns is a small DNS stub resolver that reports the TTLs of the
// records it returns, so that rsp's service discovery can re-resolve backend
// names when they expire (Go's net.Resolver hides TTLs).
//
// Typical usage:
//
//	var c dns.Client // reads /etc/resolv.conf and /etc/hosts
//	addrs, ttl, err := c.LookupIP(ctx, "app.example.com")
//	srvs, ttl, err := c.LookupSRV(ctx, "_http._tcp.example.com")
//	var nf *dns.NotFoundError
//	if errors.As(err, &nf) { ... } // the name, or records of that type, do not exist
//
// A lookup reads the hosts file (for addresses), then asks the name servers
// of resolv.conf for each name its search list and ndots make of the host,
// as glibc does. A query goes over UDP with a random ID from a random port,
// and again over TCP when the reply is truncated. Servers are tried in order,
// in rounds of Attempts, each try waiting Timeout at most.
//
// The package knows the DNS protocol and resolv.conf; it knows nothing of
// backends, balancing or how often to look again.
package dns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Client asks DNS servers for A, AAAA and SRV records and reports their TTLs.
// The zero Client reads /etc/resolv.conf and /etc/hosts. A Client may be used
// by several goroutines at once.
type Client struct {
	Servers    []string      // "host:port" of name servers; empty: the nameserver lines of ResolvConf (port 53), else "127.0.0.1:53"
	ResolvConf string        // default "/etc/resolv.conf": nameserver, search, domain, options ndots:N timeout:N attempts:N
	HostsFile  string        // default "/etc/hosts"; "-" reads none
	Timeout    time.Duration // per query attempt; 0: resolv.conf's timeout, else 2s
	Attempts   int           // tries per server; 0: resolv.conf's attempts, else 2
}

// HostsTTL is the TTL reported for names found in the hosts file, and for IP
// literals, which have none.
const HostsTTL = 30 * time.Second

// NotFoundError says that a name does not exist (NXDOMAIN), or has no
// records of the type asked (NODATA).
type NotFoundError struct {
	Name string // the name as asked
	Type string // the records asked: "A or AAAA", "SRV"

	nxdomain bool // every name tried answered NXDOMAIN
}

func (e *NotFoundError) Error() string {
	if e.nxdomain {
		return e.Name + " does not exist (NXDOMAIN)"
	}
	return "no " + e.Type + " records for " + e.Name
}

// SRV is one SRV record, its target resolved.
type SRV struct {
	Target   string // host name, without the trailing dot
	Port     uint16
	Priority uint16
	Weight   uint16
	// Addrs are the target's addresses: from the additional section when
	// the server gave them, else looked up with LookupIP.
	Addrs []netip.Addr
}

// LookupIP returns host's IPv4 then IPv6 addresses, and the smallest TTL
// among the records that gave them. An IP literal, or a name in the hosts
// file, is answered without asking DNS and with HostsTTL. It is success when
// one of A and AAAA has records and the other has none (NXDOMAIN or NODATA);
// when neither has, the error is a *NotFoundError; when either query fails
// otherwise, the lookup fails.
func (c *Client) LookupIP(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, HostsTTL, nil
	}
	addrs, err := hostsLookup(c.HostsFile, strings.TrimSuffix(host, "."))
	if err != nil || len(addrs) > 0 {
		return addrs, HostsTTL, err
	}
	cf, err := c.config()
	if err != nil {
		return nil, 0, err
	}
	var ttl uint32
	err = cf.search(ctx, host, "A or AAAA", func(fqdn string) error {
		addrs, ttl, err = cf.lookupIP(ctx, fqdn)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return addrs, seconds(ttl), nil
}

// partialError is the failure of one address family of a name whose
// other family has records: the name exists, so a search list must not
// move on to another name.
type partialError struct{ err error }

func (e *partialError) Error() string { return e.err.Error() }
func (e *partialError) Unwrap() error { return e.err }

// addrResult is what a query for one address family gave.
type addrResult struct {
	addrs []netip.Addr
	ttl   uint32
	err   error
}

// lookupIP asks for fqdn's A and AAAA records at once.
func (cf *config) lookupIP(ctx context.Context, fqdn string) ([]netip.Addr, uint32, error) {
	v4c := make(chan addrResult, 1)
	go askAddrs(ctx, cf, fqdn, dnsmessage.TypeA, v4c)
	v6 := cf.addrs(ctx, fqdn, dnsmessage.TypeAAAA)
	v4 := <-v4c
	var nf4, nf6 *NotFoundError
	notFound4, notFound6 := errors.As(v4.err, &nf4), errors.As(v6.err, &nf6)
	switch {
	// A failure of one family fails the lookup even if the other
	// answered: returning half the addresses would remove the servers of
	// the other family until the next lookup.
	case v4.err != nil && !notFound4 && v6.err == nil:
		return nil, 0, &partialError{v4.err}
	case v6.err != nil && !notFound6 && v4.err == nil:
		return nil, 0, &partialError{v6.err}
	case v4.err != nil && !notFound4:
		return nil, 0, v4.err
	case v6.err != nil && !notFound6:
		return nil, 0, v6.err
	case v4.err == nil || v6.err == nil: // records came for at least one family
		ttl := uint32(math.MaxUint32)
		for _, r := range []addrResult{v4, v6} {
			if r.err == nil {
				ttl = min(ttl, r.ttl)
			}
		}
		return append(v4.addrs, v6.addrs...), ttl, nil
	}
	return nil, 0, &NotFoundError{Name: nf4.Name, Type: "A or AAAA", nxdomain: nf4.nxdomain && nf6.nxdomain}
}

// askAddrs sends cf.addrs' result to out; it is the A half of lookupIP.
func askAddrs(ctx context.Context, cf *config, fqdn string, t dnsmessage.Type, out chan<- addrResult) {
	out <- cf.addrs(ctx, fqdn, t)
}

// addrs asks for fqdn's records of type t (A or AAAA) and returns their addresses.
func (cf *config) addrs(ctx context.Context, fqdn string, t dnsmessage.Type) addrResult {
	msg, err := cf.query(ctx, fqdn, t)
	if err != nil {
		return addrResult{err: err}
	}
	rrs, ttl, err := records(msg, fqdn, t)
	r := addrResult{ttl: ttl, err: err}
	for _, rr := range rrs {
		r.addrs = appendAddr(r.addrs, rr.Body)
	}
	return r
}

// LookupSRV returns name's SRV records sorted by priority, then weight
// descending, then target, then port; and the smallest TTL of the SRV
// records and the address records used. A target that has no addresses is
// returned with none; a target that cannot be looked up fails the lookup.
func (c *Client) LookupSRV(ctx context.Context, name string) ([]SRV, time.Duration, error) {
	cf, err := c.config()
	if err != nil {
		return nil, 0, err
	}
	var msg *dnsmessage.Message
	var rrs []dnsmessage.Resource
	var ttl uint32
	err = cf.search(ctx, name, "SRV", func(fqdn string) (err error) {
		if msg, err = cf.query(ctx, fqdn, dnsmessage.TypeSRV); err == nil {
			rrs, ttl, err = records(msg, fqdn, dnsmessage.TypeSRV)
		}
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	srvs := make([]SRV, 0, len(rrs))
	for _, rr := range rrs {
		r := rr.Body.(*dnsmessage.SRVResource)
		if t := r.Target.String(); t != "." { // "." means "no such service here" (RFC 2782)
			srvs = append(srvs, SRV{Target: strings.TrimSuffix(t, "."), Port: r.Port, Priority: r.Priority, Weight: r.Weight})
		}
	}
	if len(srvs) == 0 {
		return nil, 0, &NotFoundError{Name: name, Type: "SRV"}
	}
	slices.SortFunc(srvs, func(a, b SRV) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(b.Weight, a.Weight),
			strings.Compare(a.Target, b.Target), cmp.Compare(a.Port, b.Port))
	})
	// Each target once (one host often serves several ports), a few at a
	// time: a pool of many targets is asked in about the time of one.
	type found struct {
		addrs []netip.Addr
		ttl   uint32
		err   error
	}
	resolved := make(map[string]*found)
	for i := range srvs {
		resolved[strings.ToLower(srvs[i].Target)] = &found{}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelTargets)
	for target, f := range resolved { // each goroutine fills its own found
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			f.addrs, f.ttl, f.err = c.targetAddrs(ctx, msg, target)
		})
	}
	wg.Wait()
	for i := range srvs {
		f := resolved[strings.ToLower(srvs[i].Target)]
		if f.err != nil {
			return nil, 0, fmt.Errorf("SRV %s: target %s: %w", name, srvs[i].Target, f.err)
		}
		srvs[i].Addrs = f.addrs
		ttl = min(ttl, f.ttl)
	}
	return srvs, seconds(ttl), nil
}

// maxParallelTargets bounds the SRV targets asked at once.
const maxParallelTargets = 8

// targetAddrs returns an SRV target's addresses: those in msg's additional
// section when it holds both families, else LookupIP's. A target without
// addresses has none, and does not lower the TTL.
func (c *Client) targetAddrs(ctx context.Context, msg *dnsmessage.Message, target string) ([]netip.Addr, uint32, error) {
	var v4, v6 []netip.Addr
	ttl := uint32(math.MaxUint32)
	for _, rr := range msg.Additionals {
		if rr.Header.Class != dnsmessage.ClassINET || !strings.EqualFold(rr.Header.Name.String(), target+".") {
			continue
		}
		switch rr.Header.Type {
		case dnsmessage.TypeA:
			v4 = appendAddr(v4, rr.Body)
		case dnsmessage.TypeAAAA:
			v6 = appendAddr(v6, rr.Body)
		default:
			continue
		}
		ttl = min(ttl, rr.Header.TTL)
	}
	glue := append(v4, v6...)
	if len(v4) > 0 && len(v6) > 0 {
		return glue, ttl, nil
	}
	// Glue of one family only may be all the target has, or half of it:
	// ask. If the answer fails or has nothing, the glue is kept.
	addrs, d, err := c.LookupIP(ctx, target+".")
	var nf *NotFoundError
	switch {
	case err == nil && len(addrs) > 0:
		return addrs, min(ttl, uint32(d/time.Second)), nil
	case len(glue) > 0:
		return glue, ttl, nil
	case errors.As(err, &nf):
		return nil, ttl, nil
	}
	return nil, 0, err
}

// appendAddr appends the address in an A or AAAA record, unless it is there.
func appendAddr(addrs []netip.Addr, body dnsmessage.ResourceBody) []netip.Addr {
	var a netip.Addr
	switch b := body.(type) {
	case *dnsmessage.AResource:
		a = netip.AddrFrom4(b.A)
	case *dnsmessage.AAAAResource:
		a = netip.AddrFrom16(b.AAAA)
	}
	if !a.IsValid() || slices.Contains(addrs, a) {
		return addrs
	}
	return append(addrs, a)
}

// search calls try with each name that host stands for (see candidates)
// until one has records. NXDOMAIN and NODATA move on to the next name; so
// does any other failure, which is kept and, when no name has records,
// returned rather than a *NotFoundError, so that a failing server does not
// read as "no such name" (as glibc and Go move on past a SERVFAIL). A name
// that has records of one family while the other fails ends the search
// with that failure: it exists, and a later name (a search domain's
// wildcard) must not stand in for it.
func (cf *config) search(ctx context.Context, host, what string, try func(fqdn string) error) error {
	if strings.TrimSuffix(host, ".") == "" {
		return fmt.Errorf("look up %s: empty name", what)
	}
	var failed error
	nxdomain := true
	for _, fqdn := range cf.candidates(host) {
		err := try(fqdn)
		var nf *NotFoundError
		var partial *partialError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &nf):
			nxdomain = nxdomain && nf.nxdomain
		case errors.As(err, &partial), ctx.Err() != nil:
			return err
		case failed == nil:
			failed = err
		}
	}
	if failed != nil {
		return failed
	}
	return &NotFoundError{Name: host, Type: what, nxdomain: nxdomain}
}

func seconds(ttl uint32) time.Duration { return time.Duration(ttl) * time.Second }
