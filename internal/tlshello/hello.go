// Package tlshello reads the server name and ALPN protocols from a TLS
// ClientHello at the start of a byte stream, without terminating TLS, so
// that a proxy can route a connection by name and then relay every byte
// of it, the hello included, untouched.
//
// Typical usage:
//
//	n, _, err := unix.Recvfrom(fd, buf[:tlshello.MaxLen], unix.MSG_PEEK) // nothing consumed
//	h, err := tlshello.Parse(buf[:n])
//	switch {
//	case err == tlshello.ErrIncomplete: // wait for more bytes, peek again (with a deadline)
//	case err == tlshello.ErrNotTLS:     // the client does not speak TLS
//	case err != nil:                    // a malformed hello: err says what
//	case tlshello.Match("*.example.com", h.ServerName): // route; h.ServerName is "" without SNI
//	}
//
// Parse works on a byte slice, never on a connection: an event loop peeks
// what has arrived and asks again when more has. Parse allocates nothing
// but the strings it returns, reads nothing outside b, and decides in
// stream order, so that what it says about a prefix of the stream
// (anything but ErrIncomplete) it says about the whole; and given MaxLen
// bytes it never says ErrIncomplete.
//
// The hello may be cut into several TLS records (post-quantum key shares
// make hellos of 1.2–1.9 KB, and some clients cut them on purpose); the
// records are read in place, never copied. With Encrypted Client Hello
// the name read is the outer, public one: the one to route by, since the
// server behind decrypts the inner hello.
package tlshello

import "errors"

// Hello is what rsp routes by.
type Hello struct {
	// ServerName is the SNI host_name (RFC 6066 §3), lower-cased, without
	// a trailing dot; "" if the client sent none.
	ServerName string
	// ALPN is the protocols offered (RFC 7301), in the client's order;
	// nil if the client sent no ALPN extension.
	ALPN []string
}

// MaxLen is the most bytes rsp peeks for a hello: the largest hello Parse
// accepts (maxHello, 16 KiB) in one record, and 1 KiB more for the
// headers of a hello cut into records (about 200 more; a 2 KB hello fits
// even when cut into records of one byte each). Real hellos, post-quantum
// key shares and PSK tickets included, stay under 2 KB. A hello whose
// records do not end within MaxLen bytes is an error, so a client cannot
// keep rsp peeking.
const MaxLen = maxHello + 1<<10

// maxHello bounds a ClientHello, its 4-byte handshake header included. The
// protocol allows 2^24 bytes; 16 KiB is eight times the largest hello
// browsers send, and what one plaintext record can hold.
const maxHello = 1 << 14

// ErrIncomplete says b is a proper prefix of what may still be a valid
// ClientHello: peek more.
var ErrIncomplete = errors.New("TLS ClientHello incomplete")

// ErrNotTLS says b cannot begin a TLS handshake: its first byte does not
// open a handshake record (an SSLv2-compatible hello, HTTP, SSH...), the
// record's version is not TLS 1.0–1.3, or its message is not a
// ClientHello.
var ErrNotTLS = errors.New("not a TLS ClientHello")

// Malformed hellos. Each is a static value, so that no path of Parse
// allocates; the message says what was wrong, in one line.
var (
	errTooLong       = errors.New("TLS ClientHello: records longer than the peek limit")
	errRecord        = errors.New("TLS ClientHello: record with a bad version")
	errRecordType    = errors.New("TLS ClientHello: a non-handshake record inside the hello")
	errRecordEmpty   = errors.New("TLS ClientHello: empty handshake record")
	errRecordLong    = errors.New("TLS ClientHello: record longer than 2^14+256 bytes")
	errHelloLong     = errors.New("TLS ClientHello: longer than 16 KiB")
	errVersion       = errors.New("TLS ClientHello: legacy_version not 0x0301-0x0304")
	errShort         = errors.New("TLS ClientHello: a field overruns the message")
	errSessionID     = errors.New("TLS ClientHello: session_id longer than 32 bytes")
	errCipherSuites  = errors.New("TLS ClientHello: cipher_suites empty or of odd length")
	errCompression   = errors.New("TLS ClientHello: no compression methods")
	errExtensions    = errors.New("TLS ClientHello: extensions length does not end the message")
	errExtensionLen  = errors.New("TLS ClientHello: an extension overruns the extensions")
	errDuplicate     = errors.New("TLS ClientHello: duplicate extension")
	errSNI           = errors.New("TLS ClientHello: malformed server_name extension")
	errSNITwice      = errors.New("TLS ClientHello: more than one host_name")
	errALPN          = errors.New("TLS ClientHello: malformed ALPN extension")
	errALPNEmpty     = errors.New("TLS ClientHello: empty ALPN protocol name")
	errNameEmpty     = errors.New("TLS ClientHello: empty server name")
	errNameLong      = errors.New("TLS ClientHello: server name longer than 253 bytes")
	errNameChar      = errors.New("TLS ClientHello: server name has a byte other than a letter, digit, hyphen or dot")
	errNameLabel     = errors.New("TLS ClientHello: server name has an empty label or one longer than 63 bytes")
	errNameHyphen    = errors.New("TLS ClientHello: server name has a label that begins or ends with a hyphen")
	errNameIPLiteral = errors.New("TLS ClientHello: server name is an IP address (RFC 6066 forbids literals)")
)

// Protocol numbers.
const (
	typeClientHello = 1  // handshake message type
	extServerName   = 0  // RFC 6066
	extALPN         = 16 // RFC 7301
	hostName        = 0  // server_name NameType
)

// Parse reads the ClientHello at the start of b. It returns ErrIncomplete
// while b is a proper prefix of one, ErrNotTLS when b cannot begin one,
// and another error for a malformed one. Bytes after the hello (a
// ChangeCipherSpec, early data) are not looked at.
func Parse(b []byte) (Hello, error) {
	s := stream{b: b[:min(len(b), MaxLen)]}
	var p parsed
	err := p.hello(&s)
	if err == ErrIncomplete && len(b) >= MaxLen {
		err = errTooLong
	}
	if err != nil {
		return Hello{}, err
	}
	return p.result()
}

// parsed is where in the stream the names lie, found by a first pass that
// checks everything and allocates nothing; result reads them out when the
// whole hello has been seen, so an incomplete hello costs no garbage.
type parsed struct {
	name      stream // just before the host_name's bytes, if nameLen > 0
	nameLen   int
	alpn      stream // just before the first protocol name's length, if alpnCount > 0
	alpnCount int
	hasALPN   bool
}

// hello checks the handshake message. Every length is checked against
// the field enclosing it before anything inside is read.
func (p *parsed) hello(s *stream) error {
	typ, err := s.u8()
	if err != nil {
		return err
	}
	if typ != typeClientHello {
		return ErrNotTLS // a ServerHello, or bytes that only look like a record
	}
	size, err := s.uint(3)
	if err != nil {
		return err
	}
	if 4+size > maxHello {
		return errHelloLong
	}
	end := s.n + size

	// legacy_version, random
	if s.n+2+32 > end {
		return errShort
	}
	v, err := s.uint(2)
	if err != nil {
		return err
	}
	if v < 0x0301 || v > 0x0304 {
		return errVersion
	}
	if err := s.skip(32); err != nil {
		return err
	}

	// legacy_session_id<0..32>
	if s.n+1 > end {
		return errShort
	}
	n, err := s.u8()
	if err != nil {
		return err
	}
	if n > 32 {
		return errSessionID
	}
	if err := field(s, end, n); err != nil {
		return err
	}

	// cipher_suites<2..2^16-2>
	if s.n+2 > end {
		return errShort
	}
	if n, err = s.uint(2); err != nil {
		return err
	}
	if n < 2 || n%2 != 0 {
		return errCipherSuites
	}
	if err := field(s, end, n); err != nil {
		return err
	}

	// legacy_compression_methods<1..2^8-1>
	if s.n+1 > end {
		return errShort
	}
	if n, err = s.u8(); err != nil {
		return err
	}
	if n < 1 {
		return errCompression
	}
	if err := field(s, end, n); err != nil {
		return err
	}

	// extensions<0..2^16-1>, absent altogether in some TLS 1.0-1.2 hellos
	if s.n == end {
		return nil
	}
	if s.n+2 > end {
		return errShort
	}
	if n, err = s.uint(2); err != nil {
		return err
	}
	if s.n+n != end {
		return errExtensions
	}
	return p.extensions(s, end)
}

// field skips n bytes that must end by end.
func field(s *stream, end, n int) error {
	if s.n+n > end {
		return errShort
	}
	return s.skip(n)
}

// extensions checks the extensions up to end, each type at most once,
// and notes where the server name and the ALPN protocols lie.
func (p *parsed) extensions(s *stream, end int) error {
	var seen [1 << 16 / 64]uint64 // 8 KiB on the stack: a bit per extension type
	for s.n < end {
		if s.n+4 > end {
			return errExtensionLen
		}
		typ, err := s.uint(2)
		if err != nil {
			return err
		}
		n, err := s.uint(2)
		if err != nil {
			return err
		}
		if s.n+n > end {
			return errExtensionLen
		}
		if seen[typ/64]&(1<<(typ%64)) != 0 {
			return errDuplicate
		}
		seen[typ/64] |= 1 << (typ % 64)
		switch typ {
		case extServerName:
			err = p.serverName(s, n)
		case extALPN:
			err = p.protocols(s, n)
		default:
			err = s.skip(n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// serverName checks a server_name extension of n bytes (RFC 6066 §3):
// a ServerNameList<1..2^16-1> of entries name_type(1) name<1..2^16-1>. A
// name of an unknown type is skipped, as crypto/tls does; at most one
// host_name.
func (p *parsed) serverName(s *stream, n int) error {
	if n < 2 {
		return errSNI
	}
	list, err := s.uint(2)
	if err != nil {
		return err
	}
	if list == 0 || list != n-2 {
		return errSNI
	}
	end := s.n + list
	for s.n < end {
		if s.n+3 > end {
			return errSNI
		}
		typ, err := s.u8()
		if err != nil {
			return err
		}
		size, err := s.uint(2)
		if err != nil {
			return err
		}
		if s.n+size > end {
			return errSNI
		}
		if typ != hostName {
			if err := s.skip(size); err != nil {
				return err
			}
			continue
		}
		if p.nameLen > 0 {
			return errSNITwice
		}
		p.name = *s
		p.nameLen = size
		if err := checkHost(s, size); err != nil {
			return err
		}
	}
	return nil
}

// protocols checks an ALPN extension of n bytes (RFC 7301 §3.1): a
// ProtocolNameList<2..2^16-1> of ProtocolName<1..2^8-1>, any bytes.
func (p *parsed) protocols(s *stream, n int) error {
	if n < 2 {
		return errALPN
	}
	list, err := s.uint(2)
	if err != nil {
		return err
	}
	if list < 2 || list != n-2 {
		return errALPN
	}
	p.hasALPN = true
	p.alpn = *s
	end := s.n + list
	for s.n < end {
		size, err := s.u8()
		if err != nil {
			return err
		}
		if size == 0 {
			return errALPNEmpty
		}
		if s.n+size > end {
			return errALPN
		}
		if err := s.skip(size); err != nil {
			return err
		}
		p.alpnCount++
	}
	return nil
}

// result reads the names out of a hello that hello has checked whole, so
// every read here succeeds.
func (p *parsed) result() (Hello, error) {
	var h Hello
	var buf [255]byte // a host name is at most 254 bytes with its dot, a protocol 255
	if p.nameLen > 0 {
		name := buf[:p.nameLen]
		if err := p.name.read(name); err != nil {
			return Hello{}, err
		}
		for i, c := range name {
			if 'A' <= c && c <= 'Z' {
				name[i] = c + 'a' - 'A'
			}
		}
		if name[len(name)-1] == '.' {
			name = name[:len(name)-1]
		}
		h.ServerName = string(name)
	}
	if p.hasALPN {
		h.ALPN = make([]string, p.alpnCount)
		s := p.alpn
		for i := range h.ALPN {
			size, err := s.u8()
			if err != nil {
				return Hello{}, err
			}
			if err := s.read(buf[:size]); err != nil {
				return Hello{}, err
			}
			h.ALPN[i] = string(buf[:size])
		}
	}
	return h, nil
}
