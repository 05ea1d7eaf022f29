package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// ednsSize is the UDP payload size offered in EDNS0: the DNS flag day 2020
// value, which fits any path MTU without IP fragmentation.
const ednsSize = 1232

// maxCNAME bounds the CNAME chain followed within one answer, so a loop
// between names ends.
const maxCNAME = 8

// query asks cf's servers for fqdn's records of type t and returns the first
// reply that settles the question: NOERROR or NXDOMAIN. As glibc does, it
// makes cf.attempts rounds over the servers in order, each try with its own
// socket and cf.timeout.
func (cf *config) query(ctx context.Context, fqdn string, t dnsmessage.Type) (*dnsmessage.Message, error) {
	what := typeName(t) + " " + strings.TrimSuffix(fqdn, ".")
	name, err := dnsmessage.NewName(fqdn)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", what, err)
	}
	q := dnsmessage.Question{Name: name, Type: t, Class: dnsmessage.ClassINET}
	// One random ID per question; each try also gets a fresh random source
	// port, so a late reply to an earlier try cannot arrive on this one.
	id := uint16(rand.Uint32())
	pkt, err := newQuery(id, q)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", what, err)
	}
	fails := make(errList, len(cf.servers))
	timeouts := make([]int, len(cf.servers))
	for range cf.attempts {
		for i, server := range cf.servers {
			msg, err := exchange(ctx, server, pkt, id, q, cf.timeout)
			var ne net.Error
			var oe *net.OpError
			switch {
			case err == nil && (msg.RCode == dnsmessage.RCodeSuccess || msg.RCode == dnsmessage.RCodeNameError):
				return msg, nil
			case err == nil:
				err = fmt.Errorf("server answered %s", rcodeName(msg.RCode))
			case ctxDone(ctx) != nil:
				return nil, fmt.Errorf("query %s: %w", what, ctxDone(ctx))
			case errors.As(err, &ne) && ne.Timeout():
				timeouts[i]++
				err = fmt.Errorf("timeout after %d %s", timeouts[i], plural(timeouts[i], "attempt"))
			case errors.As(err, &oe):
				// The server is named below; the local address, a new
				// random port each try, would make every failure read
				// as a new one.
				err = oe.Err
			}
			fails[i] = fmt.Errorf("at %s: %w", server, err)
		}
	}
	return nil, fmt.Errorf("query %s %w", what, fails)
}

// newQuery packs a query for q with RD=1 and an EDNS0 OPT record, after two
// bytes left for the length prefix that TCP needs.
func newQuery(id uint16, q dnsmessage.Question) ([]byte, error) {
	var opt dnsmessage.ResourceHeader
	if err := opt.SetEDNS0(ednsSize, dnsmessage.RCodeSuccess, false); err != nil {
		return nil, err
	}
	m := dnsmessage.Message{
		Header:      dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions:   []dnsmessage.Question{q},
		Additionals: []dnsmessage.Resource{{Header: opt, Body: &dnsmessage.OPTResource{}}},
	}
	return m.AppendPack(make([]byte, 2, 2+512))
}

// exchange sends pkt to server over UDP and returns the reply; a truncated
// reply is asked again over TCP, of the same server.
func exchange(ctx context.Context, server string, pkt []byte, id uint16, q dnsmessage.Question, timeout time.Duration) (*dnsmessage.Message, error) {
	msg, err := roundTrip(ctx, "udp", server, pkt, id, q, timeout)
	if err == nil && msg.Truncated {
		msg, err = roundTrip(ctx, "tcp", server, pkt, id, q, timeout)
	}
	return msg, err
}

// roundTrip sends pkt over a new connection and reads until the reply to it
// comes, the timeout passes or ctx ends.
func roundTrip(ctx context.Context, network, server string, pkt []byte, id uint16, q dnsmessage.Question, timeout time.Duration) (*dnsmessage.Message, error) {
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	// A cancelled ctx wakes a blocked read by moving the deadline to the past.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if network == "tcp" {
		binary.BigEndian.PutUint16(pkt, uint16(len(pkt)-2))
		if _, err := conn.Write(pkt); err != nil {
			return nil, err
		}
		var n [2]byte
		if _, err := io.ReadFull(conn, n[:]); err != nil {
			return nil, err
		}
		buf := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return nil, err
		}
		if msg := match(buf, id, q); msg != nil {
			return msg, nil
		}
		return nil, errors.New("malformed reply over TCP, or not to our query")
	}

	if _, err := conn.Write(pkt[2:]); err != nil {
		return nil, err
	}
	buf := make([]byte, math.MaxUint16)
	for { // ends with the reply or at the deadline: each Read returns by then
		n, err := conn.Read(buf)
		if err != nil {
			return nil, err
		}
		if msg := match(buf[:n], id, q); msg != nil {
			return msg, nil
		}
		// Malformed, late, or spoofed: not our reply, so keep waiting for it.
	}
}

// match parses b and returns it if it is a response to query id asking q.
func match(b []byte, id uint16, q dnsmessage.Question) *dnsmessage.Message {
	var m dnsmessage.Message
	if m.Unpack(b) != nil || !m.Response || m.ID != id || len(m.Questions) != 1 {
		return nil
	}
	a := m.Questions[0]
	if a.Type != q.Type || a.Class != q.Class || !strings.EqualFold(a.Name.String(), q.Name.String()) {
		return nil
	}
	return &m
}

// records returns msg's answers of type t for fqdn, following the CNAME
// chain that the server put in the answer section, and the smallest TTL of
// the records used; or a *NotFoundError.
func records(msg *dnsmessage.Message, fqdn string, t dnsmessage.Type) ([]dnsmessage.Resource, uint32, error) {
	nf := &NotFoundError{Name: strings.TrimSuffix(fqdn, "."), Type: typeName(t), nxdomain: msg.RCode == dnsmessage.RCodeNameError}
	if nf.nxdomain {
		return nil, 0, nf
	}
	name, ttl := fqdn, uint32(math.MaxUint32)
	for range maxCNAME + 1 {
		var rrs []dnsmessage.Resource
		next, nextTTL := "", uint32(0)
		for _, rr := range msg.Answers {
			h := rr.Header
			if h.Class != dnsmessage.ClassINET || !strings.EqualFold(h.Name.String(), name) {
				continue
			}
			if h.Type == t {
				rrs = append(rrs, rr)
				ttl = min(ttl, h.TTL)
			} else if c, ok := rr.Body.(*dnsmessage.CNAMEResource); ok && next == "" {
				next, nextTTL = c.CNAME.String(), h.TTL
			}
		}
		if len(rrs) > 0 {
			return rrs, ttl, nil
		}
		if next == "" {
			break
		}
		name, ttl = next, min(ttl, nextTTL)
	}
	return nil, 0, nf
}

// ctxDone is ctx.Err(), but also reports a deadline that has passed before
// ctx's own timer noticed: a socket deadline set to it may fire first.
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// errList is the last failure at each server, on one line.
type errList []error

func (l errList) Error() string {
	s := make([]string, 0, len(l))
	for _, err := range l {
		if err != nil {
			s = append(s, err.Error())
		}
	}
	return strings.Join(s, "; ")
}

func (l errList) Unwrap() []error { return l }

func typeName(t dnsmessage.Type) string {
	switch t {
	case dnsmessage.TypeA:
		return "A"
	case dnsmessage.TypeAAAA:
		return "AAAA"
	case dnsmessage.TypeSRV:
		return "SRV"
	}
	return "type " + strconv.Itoa(int(t))
}

func rcodeName(r dnsmessage.RCode) string {
	names := [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"}
	if int(r) < len(names) {
		return names[r]
	}
	return "RCODE " + strconv.Itoa(int(r))
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
