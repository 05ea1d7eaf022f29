package proxyproto

import (
	"bytes"
	"net/netip"
	"testing"
)

// TestRoundTrip: what Append writes, Parse reads back, whole and cut at
// every length (incomplete, never wrong).
func TestRoundTrip(t *testing.T) {
	for _, c := range []struct{ src, dst string }{
		{"192.0.2.1:51000", "198.51.100.7:443"},
		{"[2001:db8::1]:40000", "[2001:db8::2]:8443"},
		{"[::ffff:192.0.2.9]:1", "192.0.2.10:65535"},
		// Of two families: sent as TCP6 with the IPv4 one mapped, read
		// back as it was.
		{"[2001:db8::1]:40000", "192.0.2.10:443"},
		{"192.0.2.1:51000", "[2001:db8::2]:8443"},
		{"[::ffff:192.0.2.9]:1", "[::ffff:192.0.2.10]:2"},
	} {
		src, dst := netip.MustParseAddrPort(c.src), netip.MustParseAddrPort(c.dst)
		for _, v := range []Version{V1, V2} {
			b := Append(nil, v, src, dst)
			b = append(b, "payload"...)
			h, n, err := Parse(b)
			if err != nil || h.Local || h.Version != v || h.Source.Addr() != src.Addr().Unmap() || h.Source.Port() != src.Port() ||
				h.Dst.Addr() != dst.Addr().Unmap() || h.Dst.Port() != dst.Port() || string(b[n:]) != "payload" {
				t.Errorf("v%d %s→%s: %+v n=%d err=%v (%q)", v, c.src, c.dst, h, n, err, b)
			}
			for cut := range n {
				if _, _, err := Parse(b[:cut]); err != ErrIncomplete {
					t.Errorf("v%d cut at %d of %d: %v, want ErrIncomplete", v, cut, n, err)
				}
			}
		}
	}
	for _, v := range []Version{V1, V2} {
		b := Append(nil, v, netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:80"))
		if h, n, err := Parse(b); err != nil || !h.Local || n != len(b) {
			t.Errorf("v%d unknown client: %+v %d %v (%q)", v, h, n, err, b)
		}
	}
}

// TestMalformed: garbage, wrong families, bad ports and oversize headers
// are refused, and a stream that is not PROXY says so at its first byte.
func TestMalformed(t *testing.T) {
	for _, b := range []string{
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
		"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
		"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
		"PROXY " + string(bytes.Repeat([]byte("x"), 120)),
		string(sig2[:]) + "\x11\x11\x00\x0c" + "123456789012",
		string(sig2[:]) + "\x23\x11\x00\x0c" + "123456789012",
		string(sig2[:]) + "\x21\x11\x00\x04" + "1234",
		string(sig2[:]) + "\x21\x11\xff\xff",
	} {
		if _, _, err := Parse([]byte(b)); err == nil || err == ErrIncomplete {
			t.Errorf("Parse(%q) = %v, want an error", b, err)
		}
	}
	for _, b := range []string{"GET / HTTP/1.1\r\n", "\x16\x03\x01", "PROXX", "\r\n\r\nX"} {
		if _, _, err := Parse([]byte(b)); err != ErrNotProxy {
			t.Errorf("Parse(%q) = %v, want ErrNotProxy", b, err)
		}
	}
}

// FuzzParse: no input makes Parse panic, claim more bytes than it got,
// or return a header Append would not write back the same.
func FuzzParse(f *testing.F) {
	f.Add(Append(nil, V1, netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2")))
	f.Add(Append(nil, V2, netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:2")))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(append(sig2[:], 0x20, 0, 0, 0))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		if err != nil {
			return
		}
		if n <= 0 || n > len(b) || n > MaxLen {
			t.Fatalf("Parse(%q) claimed %d bytes", b, n)
		}
		if h.Local || h.Source.Addr().Is4() != h.Dst.Addr().Is4() {
			return // no address to write back, or (v4-mapped in v6) two families
		}
		again, m, err := Parse(Append(nil, h.Version, h.Source, h.Dst))
		if err != nil || again.Source != h.Source || again.Dst != h.Dst || m == 0 {
			t.Fatalf("Parse(%q) = %+v, which does not write back: %+v %v", b, h, again, err)
		}
	})
}
