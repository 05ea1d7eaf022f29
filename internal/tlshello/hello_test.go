package tlshello

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// capture returns the first flight of a crypto/tls client: its
// ClientHello, in the record(s) it writes.
func capture(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(c, cfg).Handshake() // fails when s closes
		c.Close()
	}()
	var b []byte
	buf := make([]byte, 4096)
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		hs := fragments(b)
		if len(hs) >= 4 && len(hs) >= 4+int(hs[1])<<16|int(hs[2])<<8|int(hs[3]) {
			break
		}
		n, err := s.Read(buf)
		if err != nil {
			t.Fatalf("reading the client's hello: %v", err)
		}
		b = append(b, buf[:n]...)
	}
	s.Close()
	<-done
	return b
}

// fragments is the record layer read the simplest way, for checking
// Parse against: the fragments of the whole records at the start of b,
// and what is there of the last one, joined. It looks at no record type.
func fragments(b []byte) []byte {
	var hs []byte
	for len(b) >= recordHeaderLen {
		n := min(int(b[3])<<8|int(b[4]), len(b)-recordHeaderLen)
		hs = append(hs, b[recordHeaderLen:recordHeaderLen+n]...)
		b = b[recordHeaderLen+n:]
	}
	return hs
}

// recut writes handshake bytes hs as records of at most size bytes each.
func recut(hs []byte, size int) []byte {
	var b []byte
	for len(hs) > 0 {
		n := min(size, len(hs))
		b = append(b, recordHandshake, 3, 1, byte(n>>8), byte(n))
		b = append(b, hs[:n]...)
		hs = hs[n:]
	}
	return b
}

// serverView is what crypto/tls's server reads from the hello in b: the
// reference Parse is checked against.
func serverView(b []byte) (Hello, bool) {
	var h Hello
	ok := false
	cfg := &tls.Config{GetConfigForClient: func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
		h, ok = Hello{ServerName: ch.ServerName, ALPN: ch.SupportedProtos}, true
		return nil, errors.New("seen")
	}}
	tls.Server(&replay{r: bytes.NewReader(b)}, cfg).Handshake()
	return h, ok
}

// replay is a net.Conn that reads b and swallows writes.
type replay struct {
	net.Conn
	r io.Reader
}

func (c *replay) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *replay) Write(b []byte) (int, error)      { return len(b), nil }
func (c *replay) Close() error                     { return nil }
func (c *replay) SetDeadline(time.Time) error      { return nil }
func (c *replay) SetReadDeadline(time.Time) error  { return nil }
func (c *replay) SetWriteDeadline(time.Time) error { return nil }

// folded is h as Parse says it: the name lower-cased, without its dot.
// crypto/tls keeps the case the client sent.
func folded(h Hello) Hello {
	return Hello{ServerName: strings.ToLower(strings.TrimSuffix(h.ServerName, ".")), ALPN: h.ALPN}
}

func sameHello(a, b Hello) bool {
	return a.ServerName == b.ServerName && slices.Equal(a.ALPN, b.ALPN)
}

// TestRealHellos: hellos from crypto/tls, as written and cut into records
// of many sizes, give the name and protocols crypto/tls's server reads,
// whatever follows them; every cut is ErrIncomplete.
func TestRealHellos(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  *tls.Config
		want Hello
		min  int // bytes the hello takes at least
	}{
		{"tls13-mlkem", &tls.Config{ServerName: "api.example.com", NextProtos: []string{"h2", "http/1.1"}},
			Hello{"api.example.com", []string{"h2", "http/1.1"}}, 1200},
		{"tls13-x25519", &tls.Config{ServerName: "a.example.com", CurvePreferences: []tls.CurveID{tls.X25519}},
			Hello{"a.example.com", nil}, 0},
		{"tls12", &tls.Config{ServerName: "Mixed.CASE.example.", MaxVersion: tls.VersionTLS12, NextProtos: []string{"x"}},
			Hello{"mixed.case.example", []string{"x"}}, 0},
		{"no-sni", &tls.Config{InsecureSkipVerify: true}, Hello{}, 0},
		{"ip", &tls.Config{ServerName: "192.0.2.1", NextProtos: []string{"acme-tls/1"}}, Hello{"", []string{"acme-tls/1"}}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := capture(t, c.cfg)
			t.Logf("hello of %d bytes", len(b))
			if len(b) < c.min {
				t.Errorf("hello of %d bytes, want a post-quantum one of %d or more", len(b), c.min)
			}
			if c.min > 0 && !bytes.Contains(b, []byte{byte(tls.X25519MLKEM768 >> 8), byte(tls.X25519MLKEM768 & 0xff), 0x04, 0xc0}) {
				t.Errorf("no X25519MLKEM768 key share (1216 bytes) in the hello")
			}
			if sv, ok := serverView(b); !ok || !sameHello(folded(sv), c.want) {
				t.Errorf("crypto/tls's server reads %+v (%v), want %+v", sv, ok, c.want)
			}
			hs := fragments(b)
			for _, size := range []int{0, 100, 7, 1} {
				in := b
				if size > 0 {
					in = recut(hs, size)
				}
				if sv, ok := serverView(in); !ok || !sameHello(folded(sv), c.want) {
					t.Errorf("records of %d: crypto/tls's server reads %+v (%v)", size, sv, ok)
				}
				for _, tail := range []string{"", "\x14\x03\x03\x00\x01\x01", "\x17\x03\x03\x00\x05early", "GET /"} {
					h, err := Parse(append(in[:len(in):len(in)], tail...))
					if err != nil || !sameHello(h, c.want) {
						t.Errorf("records of %d, then %q: %+v %v, want %+v", size, tail, h, err, c.want)
					}
				}
				stride := 1
				if size == 1 {
					stride = 37 // 6 bytes a hello byte: keep the race detector's run short
				}
				for cut := 0; cut < len(in); cut += stride {
					if _, err := Parse(in[:cut]); err != ErrIncomplete {
						t.Fatalf("records of %d, cut at %d of %d: %v, want ErrIncomplete", size, cut, len(in), err)
					}
				}
			}
		})
	}
}

// TestNotTLS: a client that speaks something else is told at its first
// bytes, before a whole record.
func TestNotTLS(t *testing.T) {
	for _, b := range []string{
		"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"SSH-2.0-OpenSSH_9.6\r\n",
		"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
		"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10", // SSLv2-compatible ClientHello
		"\x16\x03\x00\x00\x2f\x01",                     // SSL 3.0 record
		"\x16\x02",                                     // not version 3
		"\x16\x03\x05",                                 // no such TLS version
		"\x15\x03\x03\x00\x02\x02\x28",                 // an alert
		"\x16\x03\x03\x00\x04\x02\x00\x00\x46",         // a ServerHello
		"\x16\x03\x01\x00\x01\x0b",                     // a Certificate
		"G",
	} {
		if _, err := Parse([]byte(b)); err != ErrNotTLS {
			t.Errorf("Parse(%q) = %v, want ErrNotTLS", b, err)
		}
	}
	r := rand.New(rand.NewChaCha8([32]byte{1}))
	for range 1000 {
		b := make([]byte, r.IntN(64)+1)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if b[0] == recordHandshake {
			b[0] = 0
		}
		if _, err := Parse(b); err != ErrNotTLS {
			t.Fatalf("Parse(%q) = %v, want ErrNotTLS", b, err)
		}
	}
	for _, b := range []string{"", "\x16", "\x16\x03", "\x16\x03\x01", "\x16\x03\x04\x00", "\x16\x03\x01\x02\x00"} {
		if _, err := Parse([]byte(b)); err != ErrIncomplete {
			t.Errorf("Parse(%q) = %v, want ErrIncomplete", b, err)
		}
	}
}

// Builders for hellos by hand.

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
func u8(v int) []byte            { return []byte{byte(v)} }
func u16(v int) []byte           { return []byte{byte(v >> 8), byte(v)} }
func p8(b ...[]byte) []byte      { c := cat(b...); return cat(u8(len(c)), c) }
func p16(b ...[]byte) []byte     { c := cat(b...); return cat(u16(len(c)), c) }
func p24(b ...[]byte) []byte     { c := cat(b...); return cat(u8(len(c)>>16), u16(len(c)), c) }

func ext(typ int, data ...[]byte) []byte { return cat(u16(typ), p16(data...)) }
func sni(name string) []byte             { return ext(extServerName, p16(u8(hostName), p16([]byte(name)))) }
func alpn(protos ...string) []byte {
	var l [][]byte
	for _, p := range protos {
		l = append(l, p8([]byte(p)))
	}
	return ext(extALPN, p16(l...))
}

// body is a ClientHello's body with the given extensions block.
func body(exts []byte) []byte {
	return cat(u16(0x0303), bytes.Repeat([]byte{7}, 32), p8(bytes.Repeat([]byte{9}, 32)),
		p16(u16(0x1301), u16(0x1302)), p8(u8(0)), exts)
}

// record wraps a handshake message in one record.
func record(msg []byte) []byte { return cat([]byte{recordHandshake, 3, 1}, p16(msg)) }

// hello is a whole ClientHello with these extensions, in one record.
func hello(exts ...[]byte) []byte { return record(cat(u8(typeClientHello), p24(body(p16(exts...))))) }

// TestBuilt: hand-made hellos, valid and not; each error is the one that
// names the fault, and every cut before the fault is ErrIncomplete.
func TestBuilt(t *testing.T) {
	long := strings.Repeat("a", 63)
	name253 := strings.Join([]string{long, long, long, strings.Repeat("b", 61)}, ".")
	okHello := hello(sni("example.com"), alpn("h2"))
	for _, c := range []struct {
		name string
		b    []byte
		want Hello
		err  error
	}{
		{"plain", okHello, Hello{"example.com", []string{"h2"}}, nil},
		{"no extensions", record(cat(u8(1), p24(body(nil)))), Hello{}, nil},
		{"empty extensions", hello(), Hello{}, nil},
		{"unknown name type", hello(ext(0, p16(u8(1), p16([]byte("x")), u8(0), p16([]byte("Y.example"))))), Hello{ServerName: "y.example"}, nil},
		{"only unknown name type", hello(ext(0, p16(u8(1), p16([]byte("1.2.3.4"))))), Hello{}, nil},
		{"trailing dot", hello(sni("Example.COM.")), Hello{ServerName: "example.com"}, nil},
		{"253 bytes", hello(sni(name253)), Hello{ServerName: name253}, nil},
		{"253 bytes and a dot", hello(sni(name253 + ".")), Hello{ServerName: name253}, nil},
		{"digits, hyphens", hello(sni("0-9.xn--bcher-kva.example")), Hello{ServerName: "0-9.xn--bcher-kva.example"}, nil},
		{"single label", hello(sni("localhost")), Hello{ServerName: "localhost"}, nil},
		{"alpn bytes", hello(alpn("\x00\xff", "h3")), Hello{ALPN: []string{"\x00\xff", "h3"}}, nil},
		{"grease", hello(ext(0x0a0a), sni("g.example"), ext(0xfafa, u8(0))), Hello{ServerName: "g.example"}, nil},

		{"254 bytes", hello(sni(name253 + "b")), Hello{}, errNameLong},
		{"255 bytes", hello(sni(name253 + "b.")), Hello{}, errNameLong},
		{"empty name", hello(sni("")), Hello{}, errNameEmpty},
		{"ipv4", hello(sni("192.0.2.1")), Hello{}, errNameIPLiteral},
		{"ipv4 dot", hello(sni("192.0.2.1.")), Hello{}, errNameIPLiteral},
		{"numeric tld", hello(sni("a.123")), Hello{}, errNameIPLiteral},
		{"ipv6", hello(sni("2001:db8::1")), Hello{}, errNameChar},
		{"underscore", hello(sni("a_b.example")), Hello{}, errNameChar},
		{"space", hello(sni("a b")), Hello{}, errNameChar},
		{"nul", hello(sni("a\x00.example")), Hello{}, errNameChar},
		{"wildcard", hello(sni("*.example")), Hello{}, errNameChar},
		{"utf-8", hello(sni("bücher.example")), Hello{}, errNameChar},
		{"empty label", hello(sni("a..example")), Hello{}, errNameLabel},
		{"leading dot", hello(sni(".example")), Hello{}, errNameLabel},
		{"dot", hello(sni(".")), Hello{}, errNameLabel},
		{"two dots", hello(sni("example..")), Hello{}, errNameLabel},
		{"label 64", hello(sni(long + "a.example")), Hello{}, errNameLabel},
		{"leading hyphen", hello(sni("-a.example")), Hello{}, errNameHyphen},
		{"trailing hyphen", hello(sni("a-.example")), Hello{}, errNameHyphen},
		{"last trailing hyphen", hello(sni("a.example-")), Hello{}, errNameHyphen},
		{"two host_names", hello(ext(0, p16(u8(0), p16([]byte("a.example")), u8(0), p16([]byte("b.example"))))), Hello{}, errSNITwice},
		{"empty sni list", hello(ext(0, p16())), Hello{}, errSNI},
		{"sni no list", hello(ext(0)), Hello{}, errSNI},
		{"sni list short", hello(ext(0, u16(5), u8(0), p16([]byte("a")))), Hello{}, errSNI},
		{"sni entry overruns", hello(ext(0, p16(u8(0), u16(9), []byte("a")))), Hello{}, errSNI},
		{"sni entry cut", hello(ext(0, p16(u8(0), u8(0)))), Hello{}, errSNI},
		{"duplicate sni", hello(sni("a.example"), sni("a.example")), Hello{}, errDuplicate},
		{"duplicate other", hello(ext(23), alpn("h2"), ext(23)), Hello{}, errDuplicate},
		{"empty alpn list", hello(ext(16, p16())), Hello{}, errALPN},
		{"alpn no list", hello(ext(16)), Hello{}, errALPN},
		{"alpn empty name", hello(ext(16, p16(u8(0), p8([]byte("h2"))))), Hello{}, errALPNEmpty},
		{"alpn overruns", hello(ext(16, p16(u8(5), []byte("h2")))), Hello{}, errALPN},
		{"extension overruns", record(cat(u8(1), p24(body(p16(u16(99), u16(5), u8(1)))))), Hello{}, errExtensionLen},
		{"extension header cut", record(cat(u8(1), p24(body(p16(u16(99), u8(0)))))), Hello{}, errExtensionLen},
		{"extensions short", record(cat(u8(1), p24(body(u16(10)), sni("a.example")))), Hello{}, errExtensions},
		{"extensions long", record(cat(u8(1), p24(body(u16(100)), sni("a.example")))), Hello{}, errExtensions},
		{"one byte after compression", record(cat(u8(1), p24(body(u8(0))))), Hello{}, errShort},

		{"version 0x0300", record(cat(u8(1), p24(u16(0x0300), body(nil)[2:]))), Hello{}, errVersion},
		{"version 0x0305", record(cat(u8(1), p24(u16(0x0305), body(nil)[2:]))), Hello{}, errVersion},
		{"random cut", record(cat(u8(1), p24(u16(0x0303), make([]byte, 20)))), Hello{}, errShort},
		{"session id 33", record(cat(u8(1), p24(u16(0x0303), make([]byte, 32), p8(make([]byte, 33)), p16(u16(1)), p8(u8(0))))), Hello{}, errSessionID},
		{"odd suites", record(cat(u8(1), p24(u16(0x0303), make([]byte, 32), p8(), p16(u16(1), u8(0)), p8(u8(0))))), Hello{}, errCipherSuites},
		{"no suites", record(cat(u8(1), p24(u16(0x0303), make([]byte, 32), p8(), p16(), p8(u8(0))))), Hello{}, errCipherSuites},
		{"no compression", record(cat(u8(1), p24(u16(0x0303), make([]byte, 32), p8(), p16(u16(1)), p8()))), Hello{}, errCompression},
		{"suites overrun", record(cat(u8(1), p24(u16(0x0303), make([]byte, 32), p8(), u16(40), u16(1)))), Hello{}, errShort},
		{"session id overruns", record(cat(u8(1), p24(u16(0x0303), make([]byte, 32), u8(20), make([]byte, 4)))), Hello{}, errShort},
		{"empty hello", record(cat(u8(1), p24())), Hello{}, errShort},
		{"hello over 16 KiB", cat([]byte{22, 3, 1, 0x40, 0}, u8(1), u8(0), u16(maxHello-3)), Hello{}, errHelloLong},

		{"empty record", cat([]byte{22, 3, 1, 0, 0}, okHello), Hello{}, errRecordEmpty},
		{"record too long", []byte{22, 3, 1, 0x41, 0x01}, Hello{}, errRecordLong},
		{"alert inside", cat(recut(fragments(okHello)[:20], 20), []byte{21, 3, 3, 0, 2, 2, 40}), Hello{}, errRecordType},
		{"ccs inside", cat(recut(fragments(okHello)[:20], 20), []byte{20, 3, 3, 0, 1, 1}), Hello{}, errRecordType},
		{"bad version inside", cat(recut(fragments(okHello)[:20], 20), []byte{22, 3, 0, 0, 1, 0}), Hello{}, errRecord},
		{"bad major inside", cat(recut(fragments(okHello)[:20], 20), []byte{22, 4}), Hello{}, errRecord},
	} {
		h, err := Parse(c.b)
		if err != c.err || !sameHello(h, c.want) {
			t.Errorf("%s: Parse(%q) = %+v, %v; want %+v, %v", c.name, c.b, h, err, c.want, c.err)
			continue
		}
		// The same, cut into records of 3 bytes: what is decided does not
		// depend on where records end.
		if len(c.b) == recordHeaderLen+int(c.b[3])<<8|int(c.b[4]) {
			if h, err := Parse(recut(fragments(c.b), 3)); err != c.err || !sameHello(h, c.want) {
				t.Errorf("%s in records of 3: %+v, %v; want %+v, %v", c.name, h, err, c.want, c.err)
			}
		}
		if c.err == nil {
			if sv, ok := serverView(c.b); ok && !sameHello(folded(sv), c.want) {
				t.Errorf("%s: crypto/tls's server reads %+v", c.name, sv)
			}
		}
		// Every cut is ErrIncomplete or what the whole says.
		for cut := range len(c.b) {
			if ch, cerr := Parse(c.b[:cut]); cerr != ErrIncomplete && (cerr != err || !sameHello(ch, h)) {
				t.Errorf("%s cut at %d: %+v, %v; the whole: %+v, %v", c.name, cut, ch, cerr, h, err)
			}
		}
	}
}

// TestMaxLen: a hello that has not ended within MaxLen bytes is an
// error, so rsp stops peeking; one that ends within them is read.
func TestMaxLen(t *testing.T) {
	pad := func(n int) []byte { return ext(21, make([]byte, n)) } // padding, RFC 7685
	// Cut into one-byte records, 6 bytes of stream a hello byte.
	small := recut(fragments(hello(sni("a.example"), pad(2000))), 1)
	if h, err := Parse(small); err != nil || h.ServerName != "a.example" || len(small) > MaxLen {
		t.Errorf("a %d-byte hello in one-byte records (%d bytes): %+v, %v", len(fragments(small)), len(small), h, err)
	}
	big := recut(fragments(hello(sni("a.example"), pad(4000))), 1)
	for _, n := range []int{MaxLen, MaxLen + 1, len(big)} {
		if _, err := Parse(big[:n]); err != errTooLong {
			t.Errorf("%d bytes of a %d-byte hello in one-byte records: %v, want errTooLong", n, len(big), err)
		}
	}
	if _, err := Parse(big[:MaxLen-1]); err != ErrIncomplete {
		t.Errorf("MaxLen-1 bytes of a long hello: %v, want ErrIncomplete", err)
	}
	// The largest hello, in one record: under MaxLen.
	largest := hello(sni("a.example"), pad(maxHello-len(fragments(hello(sni("a.example"), pad(0))))))
	if h, err := Parse(largest); err != nil || h.ServerName != "a.example" || len(fragments(largest)) != maxHello {
		t.Errorf("a hello of %d bytes: %+v, %v", len(fragments(largest)), h, err)
	}
	if _, err := Parse(hello(sni("a.example"), pad(maxHello))); err != errHelloLong {
		t.Errorf("a hello over %d bytes: %v, want errHelloLong", maxHello, err)
	}
}

// TestAllocs: Parse allocates its result strings and nothing else, on
// any path.
func TestAllocs(t *testing.T) {
	b := recut(fragments(hello(sni("api.example.com"), alpn("h2", "http/1.1"))), 50)
	for _, c := range []struct {
		b    []byte
		want float64
	}{
		{b, 4}, // the name, the ALPN slice and its two strings
		{b[:len(b)-1], 0},
		{hello(sni("1.2.3.4")), 0},
		{[]byte("GET / HTTP/1.1\r\n"), 0},
		{bytes.Repeat([]byte{22, 3, 1, 0, 1, 1}, MaxLen/6+1), 0},
	} {
		if n := testing.AllocsPerRun(20, func() { Parse(c.b) }); n > c.want {
			t.Errorf("Parse(%.20q...) allocates %v times, want %v", c.b, n, c.want)
		}
	}
}

// FuzzParse: for any bytes, Parse does not panic; a name or protocol it
// returns lies in the handshake bytes, and a name is a checked host name;
// what it says of b, each prefix of b says too or says ErrIncomplete, and
// b with more bytes after it says the same unless b was ErrIncomplete.
func FuzzParse(f *testing.F) {
	f.Add(hello(sni("a.example"), alpn("h2")))
	f.Add(recut(fragments(hello(sni("b.example"), alpn("h2", "http/1.1"))), 9))
	f.Add(hello(ext(0, p16(u8(1), p16([]byte("x")), u8(0), p16([]byte("Y.example."))))))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Parse(b)
		if err == nil {
			hs := bytes.ToLower(fragments(b))
			if h.ServerName != "" {
				s := stream{b: []byte(h.ServerName)}
				s.left = len(s.b)
				if checkHost(&s, len(s.b)) != nil || h.ServerName != strings.ToLower(h.ServerName) || !bytes.Contains(hs, []byte(h.ServerName)) {
					t.Fatalf("Parse(%q) claims server name %q", b, h.ServerName)
				}
			}
			for _, p := range h.ALPN {
				if p == "" || !bytes.Contains(fragments(b), []byte(p)) {
					t.Fatalf("Parse(%q) claims protocol %q", b, p)
				}
			}
		}
		if err == nil && len(b) > MaxLen {
			t.Fatalf("Parse(%d bytes) read a hello beyond MaxLen", len(b))
		}
		if err == ErrIncomplete && len(b) >= MaxLen {
			t.Fatalf("Parse(%d bytes) = ErrIncomplete at MaxLen", len(b))
		}
		stride := max(1, len(b)/256)
		for cut := 0; cut < len(b); cut += stride {
			if ch, cerr := Parse(b[:cut]); cerr != ErrIncomplete && (cerr != err || !sameHello(ch, h)) {
				t.Fatalf("Parse(%q) = %+v, %v but its first %d bytes: %+v, %v", b, h, err, cut, ch, cerr)
			}
		}
		if err != ErrIncomplete {
			if mh, merr := Parse(append(b[:len(b):len(b)], "\x16\x03\x01\x00\x01\x01"...)); merr != err || !sameHello(mh, h) {
				t.Fatalf("Parse(%q) = %+v, %v but with more bytes: %+v, %v", b, h, err, mh, merr)
			}
		}
	})
}
