package dns_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"rsp/internal/dns"
	"rsp/internal/dns/dnstest"
)

func start(t *testing.T) *dnstest.Server {
	t.Helper()
	srv, err := dnstest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// client asks only servers, once, with no resolv.conf and no hosts file.
func client(t *testing.T, servers ...string) *dns.Client {
	return &dns.Client{
		Servers:    servers,
		ResolvConf: filepath.Join(t.TempDir(), "absent"),
		HostsFile:  "-",
		Timeout:    time.Second,
		Attempts:   1,
	}
}

// silent returns the address of a UDP socket that never answers.
func silent(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ips(s ...string) []netip.Addr {
	var a []netip.Addr
	for _, s := range s {
		a = append(a, netip.MustParseAddr(s))
	}
	return a
}

func writeFile(t *testing.T, name, content string) string {
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLookupIP(t *testing.T) {
	srv := start(t)
	srv.SetIP("app.test", time.Minute, ips("::1", "10.0.0.1", "2001:db8::2", "10.0.0.2")...)
	srv.SetCNAME("www.test", "mid.test.", 100*time.Second)
	srv.SetCNAME("Mid.Test", "app2.test", 50*time.Second)
	srv.SetIP("app2.test", 200*time.Second, ips("10.0.0.3")...)
	srv.SetCNAME("short.test", "app3.test", 300*time.Second)
	srv.SetIP("app3.test", 7*time.Second, ips("10.0.0.4")...)
	srv.SetIP("v4.test", 30*time.Second, ips("10.0.0.5")...)
	srv.SetIP("v6.test", 30*time.Second, ips("fd00::6")...)
	c := client(t, srv.Addr())
	for _, tc := range []struct {
		host string
		want []netip.Addr
		ttl  time.Duration
	}{
		{"app.test", ips("10.0.0.1", "10.0.0.2", "::1", "2001:db8::2"), time.Minute},
		{"APP.test.", ips("10.0.0.1", "10.0.0.2", "::1", "2001:db8::2"), time.Minute},
		{"www.test", ips("10.0.0.3"), 50 * time.Second},    // CNAME TTL is the smallest
		{"short.test", ips("10.0.0.4"), 7 * time.Second},   // A TTL is the smallest
		{"v4.test", ips("10.0.0.5"), 30 * time.Second},     // AAAA answers NODATA
		{"v6.test", ips("fd00::6"), 30 * time.Second},      // A answers NODATA
		{"::ffff:10.1.2.3", ips("10.1.2.3"), dns.HostsTTL}, // a literal, unmapped
	} {
		got, ttl, err := c.LookupIP(ctx(t), tc.host)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) || ttl != tc.ttl {
			t.Errorf("LookupIP(%s) = %v, %v, %v; want %v, %v", tc.host, got, ttl, err, tc.want, tc.ttl)
		}
	}
}

func TestNotFound(t *testing.T) {
	srv := start(t)
	srv.SetIP("empty.test", time.Minute) // exists, no addresses
	srv.SetCNAME("loop1.test", "loop2.test", time.Minute)
	srv.SetCNAME("loop2.test", "loop1.test", time.Minute)
	srv.SetIP("gone.test", time.Minute, ips("10.0.0.1")...)
	srv.Remove("gone.test")
	c := client(t, srv.Addr())
	for host, msg := range map[string]string{
		"nope.test":  "nope.test does not exist",
		"gone.test":  "gone.test does not exist",
		"empty.test": "no A or AAAA records for empty.test",
		"loop1.test": "no A or AAAA records for loop1.test",
	} {
		_, _, err := c.LookupIP(ctx(t), host)
		var nf *dns.NotFoundError
		if !errors.As(err, &nf) || nf.Name != host || !strings.Contains(err.Error(), msg) {
			t.Errorf("LookupIP(%s) error = %v; want a NotFoundError saying %q", host, err, msg)
		}
	}
	_, _, err := c.LookupSRV(ctx(t), "_http._tcp.nope.test")
	if nf := (*dns.NotFoundError)(nil); !errors.As(err, &nf) || nf.Type != "SRV" {
		t.Errorf("LookupSRV(nonexistent) error = %v; want a NotFoundError for SRV", err)
	}
}

func TestServerFailure(t *testing.T) {
	bad, good := start(t), start(t)
	for _, srv := range []*dnstest.Server{bad, good} {
		srv.SetIP("app.test", time.Minute, ips("10.0.0.1")...)
	}
	bad.SetFail("app.test", true)
	_, _, err := client(t, bad.Addr()).LookupIP(ctx(t), "app.test")
	var nf *dns.NotFoundError
	if err == nil || errors.As(err, &nf) || !strings.Contains(err.Error(), bad.Addr()) || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("LookupIP at a failing server: error = %v; want one naming the server and SERVFAIL", err)
	}
	got, _, err := client(t, bad.Addr(), good.Addr()).LookupIP(ctx(t), "app.test")
	if err != nil || fmt.Sprint(got) != "[10.0.0.1]" {
		t.Errorf("LookupIP with a failing then a good server = %v, %v; want [10.0.0.1]", got, err)
	}
	bad.SetFail("app.test", false)
	if _, _, err := client(t, bad.Addr()).LookupIP(ctx(t), "app.test"); err != nil {
		t.Errorf("LookupIP after SetFail(false): %v", err)
	}
	// One family failing fails the lookup: half the answer would drop
	// the other family's servers.
	bad.SetFailAAAA("app.test", true)
	if got, _, err := client(t, bad.Addr()).LookupIP(ctx(t), "app.test"); err == nil || !strings.Contains(err.Error(), "AAAA app.test") || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("LookupIP with AAAA failing = %v, %v; want an error naming the AAAA query and SERVFAIL", got, err)
	}
}

func TestTimeout(t *testing.T) {
	addr := silent(t)
	c := client(t, addr)
	c.Timeout, c.Attempts = 100*time.Millisecond, 2
	begin := time.Now()
	_, _, err := c.LookupIP(ctx(t), "app.test")
	took := time.Since(begin)
	want := "query A app.test at " + addr + ": timeout after 2 attempts"
	if err == nil || !strings.Contains(err.Error(), addr+": timeout after 2 attempts") {
		t.Errorf("LookupIP at a silent server: error = %v; want like %q", err, want)
	}
	if took < 200*time.Millisecond || took > 3*time.Second {
		t.Errorf("LookupIP at a silent server took %v; want 2 × 100ms", took)
	}
}

func TestResolvConfOptions(t *testing.T) {
	addr := silent(t)
	c := client(t, addr)
	c.Timeout, c.Attempts = 0, 0
	c.ResolvConf = writeFile(t, "resolv.conf", "options timeout:1 attempts:1\n")
	begin := time.Now()
	_, _, err := c.LookupIP(ctx(t), "app.test")
	if took := time.Since(begin); err == nil || !strings.Contains(err.Error(), "timeout after 1 attempt") || took < 900*time.Millisecond || took > 3*time.Second {
		t.Errorf("LookupIP with timeout:1 attempts:1 = %v after %v; want a timeout after one 1s attempt", err, took)
	}
}

func TestContext(t *testing.T) {
	c := client(t, silent(t))
	c.Timeout, c.Attempts = 10*time.Second, 3

	cctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	begin := time.Now()
	_, _, err := c.LookupIP(cctx, "app.test")
	if took := time.Since(begin); !errors.Is(err, context.Canceled) || took > 3*time.Second {
		t.Errorf("LookupIP cancelled after 100ms = %v after %v; want context.Canceled, soon", err, took)
	}

	dctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	begin = time.Now()
	_, _, err = c.LookupSRV(dctx, "_http._tcp.app.test")
	if took := time.Since(begin); !errors.Is(err, context.DeadlineExceeded) || took > 3*time.Second {
		t.Errorf("LookupSRV with a 100ms deadline = %v after %v; want context.DeadlineExceeded, soon", err, took)
	}
}

func TestTruncatedRetriesOverTCP(t *testing.T) {
	srv := start(t)
	want := ips("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2")
	srv.SetIP("big.test", time.Minute, want...)
	srv.SetTruncate(true)
	c := client(t, srv.Addr())
	got, _, err := c.LookupIP(ctx(t), "big.test")
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("LookupIP, truncated over UDP = %v, %v; want %v", got, err, want)
	}
	if n := srv.Queries("big.test"); n != 4 {
		t.Errorf("queries for A and AAAA, truncated = %d; want 4 (UDP then TCP for each)", n)
	}
	srv.SetTruncate(false)
	if _, _, err := c.LookupIP(ctx(t), "big.test"); err != nil || srv.Queries("big.test") != 6 {
		t.Errorf("LookupIP, not truncated: %v, queries %d; want 6 (UDP only)", err, srv.Queries("big.test"))
	}
}

func TestLookupSRV(t *testing.T) {
	srv := start(t)
	a := ips("fd00::1", "10.0.0.1")
	srv.SetSRV("_http._tcp.svc.test", time.Minute,
		dns.SRV{Target: "b.svc.test", Port: 8080, Priority: 10, Weight: 5, Addrs: ips("10.0.0.2")},
		dns.SRV{Target: "a.svc.test", Port: 80, Priority: 10, Weight: 5, Addrs: a},
		dns.SRV{Target: "c.svc.test", Port: 80, Priority: 5, Weight: 1, Addrs: ips("10.0.0.3")},
		dns.SRV{Target: "a.svc.test", Port: 79, Priority: 10, Weight: 5, Addrs: a},
		dns.SRV{Target: "d.svc.test", Port: 80, Priority: 10, Weight: 50, Addrs: ips("10.0.0.4")},
	)
	srv.SetSRV("_db._tcp.svc.test", time.Minute,
		dns.SRV{Target: "db2.svc.test", Port: 5432, Priority: 1, Weight: 1},
		dns.SRV{Target: "db1.svc.test.", Port: 5432, Priority: 1, Weight: 1},
		dns.SRV{Target: "gone.svc.test", Port: 5432, Priority: 2, Weight: 1},
	)
	// Targets with glue of one family only are asked for the other.
	srv.SetIP("b.svc.test", time.Minute, ips("10.0.0.2")...)
	srv.SetIP("c.svc.test", time.Minute, ips("10.0.0.3")...)
	srv.SetIP("d.svc.test", time.Minute, ips("10.0.0.4", "fd00::4")...)
	srv.SetIP("db1.svc.test", 9*time.Second, ips("10.0.1.1")...)
	srv.SetIP("db2.svc.test", 30*time.Second, ips("fd00::2", "10.0.1.2")...)
	c := client(t, srv.Addr())
	for _, tc := range []struct {
		name string
		want string
		ttl  time.Duration
	}{
		{"_http._tcp.svc.test", "[{c.svc.test 80 5 1 [10.0.0.3]} {d.svc.test 80 10 50 [10.0.0.4 fd00::4]} " +
			"{a.svc.test 79 10 5 [10.0.0.1 fd00::1]} {a.svc.test 80 10 5 [10.0.0.1 fd00::1]} {b.svc.test 8080 10 5 [10.0.0.2]}]", time.Minute},
		{"_db._tcp.svc.test", "[{db1.svc.test 5432 1 1 [10.0.1.1]} {db2.svc.test 5432 1 1 [10.0.1.2 fd00::2]} {gone.svc.test 5432 2 1 []}]", 9 * time.Second},
	} {
		got, ttl, err := c.LookupSRV(ctx(t), tc.name)
		if err != nil || fmt.Sprint(got) != tc.want || ttl != tc.ttl {
			t.Errorf("LookupSRV(%s) =\n%v, %v, %v; want\n%v, %v", tc.name, got, ttl, err, tc.want, tc.ttl)
		}
	}
	if n := srv.Queries("a.svc.test"); n != 0 {
		t.Errorf("queries for a target given in the additional section, both families = %d; want 0", n)
	}
	if n := srv.Queries("db1.svc.test"); n != 2 {
		t.Errorf("queries for a target without additional records = %d; want 2 (A and AAAA)", n)
	}
	srv.SetFail("db2.svc.test", true)
	if _, _, err := c.LookupSRV(ctx(t), "_db._tcp.svc.test"); err == nil || !strings.Contains(err.Error(), "db2.svc.test") {
		t.Errorf("LookupSRV with a failing target: error = %v; want one naming db2.svc.test", err)
	}
}

func TestHostsFile(t *testing.T) {
	srv := start(t)
	srv.SetIP("app.example.com", time.Minute, ips("10.9.9.9")...)
	srv.SetIP("dns.example.com", time.Minute, ips("10.0.0.9")...)
	c := client(t, srv.Addr())
	c.HostsFile = writeFile(t, "hosts", `# comment
10.0.0.1   app.example.com  app
::1        APP.example.com
10.0.0.2   other.example.com
::ffff:10.0.0.3 app.example.com # mapped
bogus      app.example.com
10.0.0.4   app.example.com.evil
#10.0.0.5  app.example.com
`)
	for host, want := range map[string]string{
		"app.example.com":  "[10.0.0.1 10.0.0.3 ::1]",
		"App.Example.Com.": "[10.0.0.1 10.0.0.3 ::1]",
		"app":              "[10.0.0.1]",
	} {
		got, ttl, err := c.LookupIP(ctx(t), host)
		if err != nil || fmt.Sprint(got) != want || ttl != dns.HostsTTL {
			t.Errorf("LookupIP(%s) from hosts = %v, %v, %v; want %s, %v", host, got, ttl, err, want, dns.HostsTTL)
		}
	}
	if n := srv.Queries("app.example.com"); n != 0 {
		t.Errorf("DNS queries for a name in the hosts file = %d; want 0", n)
	}
	if got, _, err := c.LookupIP(ctx(t), "dns.example.com"); err != nil || fmt.Sprint(got) != "[10.0.0.9]" {
		t.Errorf("LookupIP of a name not in hosts = %v, %v; want [10.0.0.9] from DNS", got, err)
	}
	os.WriteFile(c.HostsFile, []byte("10.0.0.7 app.example.com\n"), 0o644)
	if got, _, err := c.LookupIP(ctx(t), "app.example.com"); err != nil || fmt.Sprint(got) != "[10.0.0.7]" {
		t.Errorf("LookupIP after the hosts file changed = %v, %v; want [10.0.0.7]", got, err)
	}
}

func TestSearchList(t *testing.T) {
	srv := start(t)
	for _, name := range []string{"app.svc.test", "web.cluster.test", "x.y.z", "a.b", "x.y.z.svc.test"} {
		srv.SetIP(name, time.Minute, ips("10.0.0.1")...)
	}
	srv.SetFail("down.svc.test", true)
	c := client(t, srv.Addr())
	c.ResolvConf = writeFile(t, "resolv.conf", "nameserver 192.0.2.1\ndomain ignored.test\nsearch svc.test. cluster.test\noptions ndots:2 rotate\n")
	for _, tc := range []struct {
		host  string
		asked map[string]int // queries (A and AAAA) per name, after the lookup
	}{
		{"app", map[string]int{"app.svc.test": 2, "app": 0}},                        // fewer dots than ndots: suffixes first
		{"web", map[string]int{"web.svc.test": 2, "web.cluster.test": 2, "web": 0}}, // NXDOMAIN moves on
		{"x.y.z", map[string]int{"x.y.z": 2, "x.y.z.svc.test": 0}},                  // ndots dots: as-is first
		{"a.b", map[string]int{"a.b.svc.test": 2, "a.b.cluster.test": 2, "a.b": 2}},
	} {
		if got, _, err := c.LookupIP(ctx(t), tc.host); err != nil || fmt.Sprint(got) != "[10.0.0.1]" {
			t.Errorf("LookupIP(%s) = %v, %v; want [10.0.0.1]", tc.host, got, err)
		}
		for name, n := range tc.asked {
			if got := srv.Queries(name); got != n {
				t.Errorf("after LookupIP(%s): %d queries for %s; want %d", tc.host, got, name, n)
			}
		}
	}
	_, _, err := c.LookupIP(ctx(t), "app.")
	var nf *dns.NotFoundError
	if !errors.As(err, &nf) || srv.Queries("app.svc.test") != 2 || srv.Queries("app") != 2 {
		t.Errorf("LookupIP(app.) = %v; want NotFound, asking only app.", err)
	}
	_, _, err = c.LookupIP(ctx(t), "down")
	if err == nil || errors.As(err, &nf) || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("LookupIP(down), where down.svc.test fails: error = %v; want SERVFAIL, not NotFound", err)
	}
	// A candidate that fails outright is passed, as glibc and Go do.
	srv.SetFail("up.svc.test", true)
	srv.SetIP("up.cluster.test", time.Minute, ips("10.0.0.8")...)
	if got, _, err := c.LookupIP(ctx(t), "up"); err != nil || fmt.Sprint(got) != "[10.0.0.8]" {
		t.Errorf("LookupIP(up), where up.svc.test fails and up.cluster.test exists = %v, %v; want [10.0.0.8]", got, err)
	}
	// A name with records of one family and a failure of the other ends
	// the search: a later candidate must not stand in for it.
	srv.SetIP("dual.svc.test", time.Minute, ips("10.0.0.7")...)
	srv.SetIP("dual.svc.test.cluster.test", time.Minute, ips("10.9.9.9")...)
	srv.SetFailAAAA("dual.svc.test", true)
	if got, _, err := c.LookupIP(ctx(t), "dual.svc.test"); err == nil {
		t.Errorf("LookupIP(dual.svc.test) with its AAAA failing = %v; want the failure, not a search domain's answer", got)
	}
	_, _, err = c.LookupIP(ctx(t), "")
	if err == nil || errors.As(err, &nf) {
		t.Errorf("LookupIP(\"\") error = %v; want an error", err)
	}
}

func TestIgnoresRepliesNotToTheQuery(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go answerWrongFirst(pc, done)
	t.Cleanup(func() { pc.Close(); <-done })
	got, _, err := client(t, pc.LocalAddr().String()).LookupIP(ctx(t), "app.test")
	if err != nil || fmt.Sprint(got) != "[10.0.0.1]" {
		t.Errorf("LookupIP = %v, %v; want [10.0.0.1], the reply with the right ID and question", got, err)
	}
}

// answerWrongFirst answers each query on pc three times: with the wrong ID,
// for another name, and at last rightly. It ends when pc is closed.
func answerWrongFirst(pc net.PacketConn, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var q dnsmessage.Message
		if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
			continue
		}
		other := q.Questions[0]
		other.Name = dnsmessage.MustNewName("other.test.")
		for _, r := range []struct {
			id   uint16
			q    dnsmessage.Question
			addr [4]byte
		}{{q.ID + 1, q.Questions[0], [4]byte{10, 9, 9, 9}}, {q.ID, other, [4]byte{10, 8, 8, 8}}, {q.ID, q.Questions[0], [4]byte{10, 0, 0, 1}}} {
			m := dnsmessage.Message{Header: dnsmessage.Header{ID: r.id, Response: true}, Questions: []dnsmessage.Question{r.q}}
			if r.q.Type == dnsmessage.TypeA {
				m.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: r.q.Name, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: r.addr},
				}}
			}
			b, _ := m.Pack()
			pc.WriteTo(b, from)
		}
	}
}
