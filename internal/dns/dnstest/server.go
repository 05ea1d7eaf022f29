// Package dnstest runs a loopback authoritative DNS server for tests: set
// names on it, point a dns.Client (or rsp) at its address, change the names
// while the test runs, and count the queries that came.
//
// Typical usage:
//
//	srv, err := dnstest.Start("127.0.0.1:0")
//	if err != nil { ... }
//	defer srv.Close()
//	srv.SetIP("app.test", time.Minute, netip.MustParseAddr("10.0.0.1"))
//	c := &dns.Client{Servers: []string{srv.Addr()}}
//
// UDP packets are answered one at a time by one goroutine; each TCP
// connection has its own.
package dnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"rsp/internal/dns"
)

const (
	idleTimeout = 5 * time.Second // a TCP connection without a query for this long is closed
	maxUDP      = 1232            // the EDNS0 size rsp's client offers; larger UDP replies are truncated
	maxCNAME    = 8               // CNAME hops followed into the answer, so a loop ends
	listenTries = 10              // UDP ports tried until TCP's same port is free too
)

// Server answers A, AAAA and SRV queries for the names set on it, over UDP
// and TCP on one loopback port. Its methods may be called while it serves.
type Server struct {
	udp net.PacketConn
	tcp net.Listener
	wg  sync.WaitGroup // the serving goroutines

	mu       sync.Mutex
	zone     map[string]*records // by key(name)
	fail     map[string]bool
	failAAAA map[string]bool
	queries  map[string]int
	truncate bool
	conns    map[net.Conn]bool
	closed   bool
}

// records are one name's data. A name with a CNAME has no other data.
type records struct {
	ips      []netip.Addr
	ipTTL    uint32
	srvs     []dns.SRV
	srvTTL   uint32
	cname    string
	cnameTTL uint32
}

// Start serves on addr, e.g. "127.0.0.1:0": UDP on a free port, and TCP on
// the same port.
func Start(addr string) (*Server, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dnstest: address %q: %w", addr, err)
	}
	for try := 1; ; try++ {
		udp, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("dnstest: %w", err)
		}
		tcp, err := net.Listen("tcp", udp.LocalAddr().String())
		if err == nil {
			s := &Server{udp: udp, tcp: tcp, zone: map[string]*records{}, fail: map[string]bool{}, failAAAA: map[string]bool{},
				queries: map[string]int{}, conns: map[net.Conn]bool{}}
			s.wg.Add(2)
			go s.serveUDP()
			go s.acceptTCP()
			return s, nil
		}
		udp.Close()
		if port != "0" || try == listenTries {
			return nil, fmt.Errorf("dnstest: TCP on the UDP port: %w", err)
		}
	}
}

// Addr returns the "127.0.0.1:PORT" the server answers on.
func (s *Server) Addr() string { return s.udp.LocalAddr().String() }

// SetIP replaces name's A and AAAA records. Names are case-insensitive, with
// or without the trailing dot. With no ips, name exists without addresses.
func (s *Server) SetIP(name string, ttl time.Duration, ips ...netip.Addr) {
	s.set(name, func(r *records) { r.ips, r.ipTTL = slices.Clone(ips), secs(ttl) })
}

// SetSRV replaces name's SRV records. The reply's additional section carries
// the A and AAAA records (with the same ttl) of each SRV's Addrs; targets
// without Addrs are for the client to look up, e.g. among names set by SetIP.
func (s *Server) SetSRV(name string, ttl time.Duration, srvs ...dns.SRV) {
	s.set(name, func(r *records) { r.srvs, r.srvTTL = slices.Clone(srvs), secs(ttl) })
}

// SetCNAME makes name an alias of target; the answer carries the CNAME, then
// target's records.
func (s *Server) SetCNAME(name, target string, ttl time.Duration) {
	s.set(name, func(r *records) { r.cname, r.cnameTTL = strings.TrimSuffix(target, "."), secs(ttl) })
}

func (s *Server) set(name string, f func(*records)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.zone[key(name)]
	if r == nil {
		r = &records{}
		s.zone[key(name)] = r
	}
	f(r)
}

// Remove forgets name and its SetFail; it then answers NXDOMAIN.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.zone, key(name))
	delete(s.fail, key(name))
}

// SetFail makes queries for name get SERVFAIL, while fail is true.
func (s *Server) SetFail(name string, fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[key(name)] = fail
}

// SetFailAAAA makes AAAA queries for name get SERVFAIL, while fail is
// true, as some broken servers do; A queries are answered.
func (s *Server) SetFailAAAA(name string, fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failAAAA[key(name)] = fail
}

// SetTruncate makes UDP replies carry no records and TC=1, while on is true,
// so that clients must ask again over TCP.
func (s *Server) SetTruncate(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.truncate = on
}

// Queries returns how many queries (any type, UDP and TCP) asked for name so far.
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[key(name)]
}

// Close stops serving, and returns when the serving goroutines have ended.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := errors.Join(s.udp.Close(), s.tcp.Close())
	s.wg.Wait()
	return err
}

func (s *Server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for { // until Close
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		if reply := s.answer(buf[:n], true); reply != nil {
			s.udp.WriteTo(reply, from)
		}
	}
}

func (s *Server) acceptTCP() {
	defer s.wg.Done()
	for { // until Close
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveTCP(c)
	}
}

// serveTCP answers length-prefixed queries on c until EOF, an error, Close,
// or idleTimeout without a query.
func (s *Server) serveTCP(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	for {
		c.SetDeadline(time.Now().Add(idleTimeout))
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		reply := s.answer(q, false)
		if reply == nil {
			return
		}
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(reply))), reply...)); err != nil {
			return
		}
	}
}

// answer returns the reply to query q, or nil when q is not a query.
func (s *Server) answer(q []byte, udp bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	question, err := p.Question()
	if err != nil {
		return nil
	}
	name := key(question.Name.String())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries[name]++
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired},
		Questions: []dnsmessage.Question{question},
	}
	switch {
	case s.fail[name], s.failAAAA[name] && question.Type == dnsmessage.TypeAAAA:
		m.RCode = dnsmessage.RCodeServerFailure
	case s.zone[name] == nil:
		m.RCode = dnsmessage.RCodeNameError
	default:
		m.Answers, m.Additionals = s.lookup(question)
	}
	reply, err := m.Pack()
	if udp && (s.truncate || len(reply) > maxUDP) {
		m.Truncated, m.Answers, m.Additionals = true, nil, nil
		reply, err = m.Pack()
	}
	if err != nil {
		return nil
	}
	return reply
}

// lookup returns the answer and additional records for q. s.mu is held.
func (s *Server) lookup(q dnsmessage.Question) (ans, extra []dnsmessage.Resource) {
	owner := q.Name.String()
	for range maxCNAME + 1 {
		r := s.zone[key(owner)]
		if r == nil {
			return ans, extra
		}
		if r.cname != "" {
			ans = append(ans, rr(owner, r.cnameTTL, &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(r.cname + ".")}))
			owner = r.cname + "."
			continue
		}
		switch q.Type {
		case dnsmessage.TypeA, dnsmessage.TypeAAAA:
			for _, ip := range r.ips {
				if ip.Unmap().Is4() == (q.Type == dnsmessage.TypeA) {
					ans = append(ans, addrRR(owner, r.ipTTL, ip))
				}
			}
		case dnsmessage.TypeSRV:
			added := map[string]bool{} // a target's addresses, once for all its ports
			for _, srv := range r.srvs {
				target := strings.TrimSuffix(srv.Target, ".") + "."
				ans = append(ans, rr(owner, r.srvTTL, &dnsmessage.SRVResource{
					Priority: srv.Priority, Weight: srv.Weight, Port: srv.Port, Target: dnsmessage.MustNewName(target)}))
				if len(srv.Addrs) > 0 && !added[key(target)] {
					added[key(target)] = true
					for _, ip := range srv.Addrs {
						extra = append(extra, addrRR(target, r.srvTTL, ip))
					}
				}
			}
		}
		return ans, extra
	}
	return ans, extra
}

func addrRR(name string, ttl uint32, ip netip.Addr) dnsmessage.Resource {
	if ip.Unmap().Is4() {
		return rr(name, ttl, &dnsmessage.AResource{A: ip.Unmap().As4()})
	}
	return rr(name, ttl, &dnsmessage.AAAAResource{AAAA: ip.As16()})
}

// rr makes a resource record; name must be a valid domain name, as the names
// given to a Server's setters must be.
func rr(name string, ttl uint32, body dnsmessage.ResourceBody) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: ttl},
		Body:   body,
	}
}

func key(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

func secs(d time.Duration) uint32 { return uint32(d / time.Second) }
