// Package proxyproto writes and reads the PROXY protocol header (HAProxy's
// v1 text and v2 binary forms) that carries a client's address to a
// server behind a proxy.
//
// Typical usage:
//
//	hdr := proxyproto.Append(nil, proxyproto.V2, client, local) // before the first byte to a server
//	...
//	h, n, err := proxyproto.Parse(peeked) // on bytes peeked from a client
//	if err == proxyproto.ErrIncomplete { wait for more }
//	// consume n bytes; h.Source is the real client
//
// It works on byte slices, never on connections, so that an event loop
// can peek a header without blocking and consume exactly its length.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Version is a PROXY protocol version.
type Version int

// The versions.
const (
	V1 Version = 1 // text: "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
	V2 Version = 2 // binary, with a 12-byte signature
)

// ParseVersion reads "v1" or "v2".
func ParseVersion(s string) (Version, error) {
	switch s {
	case "v1":
		return V1, nil
	case "v2":
		return V2, nil
	}
	return 0, fmt.Errorf("unknown PROXY protocol version %q: use \"v1\" or \"v2\"", s)
}

// MaxLen is the most bytes a header may take: a v1 line is at most 107
// bytes; a v2 header is 16 bytes and its declared length, which rsp
// bounds to leave room for TLVs (the specification allows 65,535).
const MaxLen = 16 + 520

// sig2 opens every v2 header.
var sig2 = [12]byte{'\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n'}

// Append appends the header that tells a server a connection came from
// src to dst (the address the client connected to). Addresses that are
// not both IP (a Unix client) give a header with no address: v1
// "UNKNOWN", v2 LOCAL. An IPv4 and an IPv6 address (a client named by a
// PROXY header of the other family than the listener's) go as IPv6, the
// IPv4 one IPv4-mapped (::ffff:192.0.2.1), so the client still shows.
func Append(b []byte, v Version, src, dst netip.AddrPort) []byte {
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	known := s.IsValid() && d.IsValid()
	if known && s.Is4() != d.Is4() {
		s, d = netip.AddrFrom16(s.As16()), netip.AddrFrom16(d.As16())
	}
	if v == V1 {
		if !known {
			return append(b, "PROXY UNKNOWN\r\n"...)
		}
		fam := "TCP4"
		if s.Is6() {
			fam = "TCP6"
		}
		b = append(b, "PROXY "...)
		b = append(b, fam...)
		b = append(b, ' ')
		b = s.AppendTo(b)
		b = append(b, ' ')
		b = d.AppendTo(b)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(src.Port()), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(dst.Port()), 10)
		return append(b, "\r\n"...)
	}
	b = append(b, sig2[:]...)
	if !known {
		return append(b, 0x20, 0x00, 0, 0) // LOCAL, UNSPEC, no address
	}
	if s.Is4() {
		b = append(b, 0x21, 0x11, 0, 12) // PROXY, TCP over IPv4
		a4, d4 := s.As4(), d.As4()
		b = append(b, a4[:]...)
		b = append(b, d4[:]...)
	} else {
		b = append(b, 0x21, 0x21, 0, 36) // PROXY, TCP over IPv6
		a16, d16 := s.As16(), d.As16()
		b = append(b, a16[:]...)
		b = append(b, d16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// Header is what a parsed header says.
type Header struct {
	Version Version
	// Local is true for a header that carries no client (v2 LOCAL, a
	// health check by the proxy in front; v1 UNKNOWN): the connection's
	// own addresses stand.
	Local       bool
	Source, Dst netip.AddrPort
}

// ErrIncomplete says the bytes so far are a valid beginning of a header:
// read more.
var ErrIncomplete = errors.New("PROXY header incomplete")

// ErrNotProxy says the bytes do not begin with a PROXY header.
var ErrNotProxy = errors.New("no PROXY protocol header")

// Parse reads a header at the start of b. It returns the header and its
// length, ErrIncomplete if b is a proper prefix of one, ErrNotProxy if b
// cannot begin one, or another error for a malformed header.
func Parse(b []byte) (Header, int, error) {
	switch {
	case len(b) == 0:
		return Header{}, 0, ErrIncomplete
	case b[0] == 'P':
		return parseV1(b)
	case b[0] == '\r':
		return parseV2(b)
	}
	return Header{}, 0, ErrNotProxy
}

func parseV1(b []byte) (Header, int, error) {
	const prefix = "PROXY "
	if n := min(len(b), len(prefix)); !bytes.Equal(b[:n], []byte(prefix[:n])) {
		return Header{}, 0, ErrNotProxy
	}
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		if len(b) >= 107 {
			return Header{}, 0, errors.New("PROXY v1 header longer than 107 bytes")
		}
		if bytes.IndexByte(b, '\n') >= 0 {
			return Header{}, 0, errors.New("PROXY v1 header ends without CRLF")
		}
		return Header{}, 0, ErrIncomplete
	}
	if end+2 > 107 {
		return Header{}, 0, errors.New("PROXY v1 header longer than 107 bytes")
	}
	f := bytes.Split(b[len(prefix):end], []byte(" "))
	h := Header{Version: V1}
	if len(f) >= 1 && string(f[0]) == "UNKNOWN" {
		h.Local = true
		return h, end + 2, nil
	}
	if len(f) != 5 || (string(f[0]) != "TCP4" && string(f[0]) != "TCP6") {
		return Header{}, 0, fmt.Errorf("PROXY v1 header %q: want TCP4|TCP6 SRC DST SPORT DPORT", b[:end])
	}
	src, err1 := netip.ParseAddr(string(f[1]))
	dst, err2 := netip.ParseAddr(string(f[2]))
	sp, err3 := parsePort(f[3])
	dp, err4 := parsePort(f[4])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return Header{}, 0, fmt.Errorf("PROXY v1 header %q: %v", b[:end], err)
	}
	v4 := string(f[0]) == "TCP4"
	if src.Is4() != v4 || dst.Is4() != v4 || src.Zone() != "" || dst.Zone() != "" {
		return Header{}, 0, fmt.Errorf("PROXY v1 header %q: addresses do not match %s", b[:end], f[0])
	}
	// An IPv4-mapped address (TCP6 ::ffff:192.0.2.1) is the IPv4 client
	// it maps, for ACLs, limits and hashing alike.
	h.Source, h.Dst = netip.AddrPortFrom(src.Unmap(), sp), netip.AddrPortFrom(dst.Unmap(), dp)
	return h, end + 2, nil
}

// parsePort reads a decimal port without sign or leading zeros.
func parsePort(b []byte) (uint16, error) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, fmt.Errorf("bad port %q", b)
	}
	n, err := strconv.ParseUint(string(b), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", b)
	}
	return uint16(n), nil
}

func parseV2(b []byte) (Header, int, error) {
	if n := min(len(b), len(sig2)); !bytes.Equal(b[:n], sig2[:n]) {
		return Header{}, 0, ErrNotProxy
	}
	if len(b) < 16 {
		return Header{}, 0, ErrIncomplete
	}
	if b[12]>>4 != 2 {
		return Header{}, 0, fmt.Errorf("PROXY v2 header: version %d", b[12]>>4)
	}
	cmd, fam := b[12]&0xf, b[13]
	size := int(binary.BigEndian.Uint16(b[14:16]))
	if 16+size > MaxLen {
		return Header{}, 0, fmt.Errorf("PROXY v2 header: %d bytes of addresses and TLVs, more than rsp takes (%d)", size, MaxLen-16)
	}
	if len(b) < 16+size {
		return Header{}, 0, ErrIncomplete
	}
	h := Header{Version: V2}
	body := b[16 : 16+size]
	switch cmd {
	case 0: // LOCAL
		h.Local = true
		return h, 16 + size, nil
	case 1: // PROXY
	default:
		return Header{}, 0, fmt.Errorf("PROXY v2 header: unknown command %d", cmd)
	}
	switch fam {
	case 0x11: // TCP over IPv4
		if size < 12 {
			return Header{}, 0, fmt.Errorf("PROXY v2 header: %d bytes for IPv4 addresses, want 12", size)
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
	case 0x21: // TCP over IPv6
		if size < 36 {
			return Header{}, 0, fmt.Errorf("PROXY v2 header: %d bytes for IPv6 addresses, want 36", size)
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])).Unmap(), binary.BigEndian.Uint16(body[32:34]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])).Unmap(), binary.BigEndian.Uint16(body[34:36]))
	default:
		// UNSPEC, UDP or Unix addresses: nothing rsp can use as a
		// client address; the connection's own stands.
		h.Local = true
	}
	return h, 16 + size, nil
}
