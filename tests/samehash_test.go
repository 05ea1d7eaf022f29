package tests

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"rsp/internal/balance"
)

// Several rsp hosts behind ECMP or anycast must send a client to the same
// server whichever host its packets reach. These tests show that
// balance = "source" gives that: its choice depends on the configuration
// (the backend's name, its servers' names, weights and backup flags) and
// on which servers can take the connection, and on nothing of the
// process, its start, its history or the servers' addresses.

// sameHashClients returns n distinct client addresses spread over
// 127.0.0.0/8, which the loopback interface accepts as local addresses
// without any setup: the second octet takes 8 values, the third is
// scattered, the fourth is unique (so n is at most 254).
func sameHashClients(n int) []string {
	out := make([]string, n)
	for i := range n {
		out[i] = fmt.Sprintf("127.%d.%d.%d", 1+(i%8)*31, (i*97)%256, 1+i)
	}
	return out
}

// sameHashPicks connects from each client address through each of the
// proxies at addrs and returns the server each client reached, failing
// the test where two proxies disagree.
func sameHashPicks(t *testing.T, addrs []string, clients []string) map[string]string {
	t.Helper()
	got := make(map[string]string, len(clients))
	disagree := 0
	for _, ip := range clients {
		var names []string
		for _, addr := range addrs {
			name, c := which(t, addr, ip)
			c.Close()
			names = append(names, name)
		}
		for _, n := range names[1:] {
			if n != names[0] {
				disagree++
				if disagree <= 5 {
					t.Errorf("client %s: the proxies at %v chose %v", ip, addrs, names)
				}
				break
			}
		}
		got[ip] = names[0]
	}
	if disagree > 0 {
		t.Fatalf("%d of %d clients reached different servers through different proxies", disagree, len(clients))
	}
	return got
}

// TestSourceHashSameAcrossProcesses: two rsp processes started from the
// same file, each listening on a port of its own, send each of 200 client
// addresses to the same server; after both reload the same changed file
// (a server removed), they still agree, and only the removed server's
// clients moved.
func TestSourceHashSameAcrossProcesses(t *testing.T) {
	ids := []*idServer{newIDServer(t, "a"), newIDServer(t, "b"), newIDServer(t, "c"), newIDServer(t, "d"), newIDServer(t, "e")}
	head := "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\nbalance = \"source\"\n"
	path := writeConfig(t, "", head+servers("app", ids, nil))
	p1 := startRsp(t, "-config", path)
	p2 := startRsp(t, "-config", path)
	if p1.addr == p2.addr {
		t.Fatalf("both proxies listen on %s", p1.addr)
	}
	addrs := []string{p1.addr, p2.addr}
	clients := sameHashClients(200)

	first := sameHashPicks(t, addrs, clients)
	count := map[string]int{}
	for _, name := range first {
		count[name]++
	}
	t.Logf("source over %d clients, the same through %s and %s: %v", len(clients), p1.addr, p2.addr, count)
	for _, s := range ids {
		// 40 each on average; the ring's 160 points per server keep
		// every share well inside this.
		if !within(count[s.name], len(clients)/len(ids), 25) {
			t.Errorf("server %s has %d of %d clients, want about a fifth", s.name, count[s.name], len(clients))
		}
	}

	// Both reload the same file without c.
	writeConfig(t, path, head+servers("app", []*idServer{ids[0], ids[1], ids[3], ids[4]}, nil))
	for _, p := range []*proc{p1, p2} {
		p.signal(syscall.SIGHUP)
		if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "configuration reloaded") }) {
			t.Fatalf("rsp at %s: reload not logged:\n%s", p.addr, p.stderr.String())
		}
	}
	after := sameHashPicks(t, addrs, clients)
	moved := 0
	for _, ip := range clients {
		was, now := first[ip], after[ip]
		switch {
		case was == "c":
			moved++
			if now == "c" {
				t.Errorf("client %s still reaches c, removed by the reload", ip)
			}
		case now != was:
			t.Errorf("client %s moved from %s to %s although only c was removed", ip, was, now)
		}
	}
	t.Logf("removing c moved %d clients (c had %d), the same way in both proxies", moved, count["c"])
	if moved != count["c"] {
		t.Errorf("%d clients moved, want exactly c's %d", moved, count["c"])
	}
}

// TestSourceHashInputs: the source-hash choice of a pool, built in one
// process, depends on the backend's name and its servers' names and
// weights: two pools that differ in their servers' addresses, their order
// and the clients' ports choose alike for 20,000 client addresses, IPv4
// and IPv6 (IPv4-mapped IPv6 counted as IPv4); a pool with another weight
// or another backend name does not.
func TestSourceHashInputs(t *testing.T) {
	type server struct {
		name   string
		weight int
	}
	five := []server{{"a", 1}, {"b", 1}, {"c", 2}, {"d", 1}, {"e", 1}}
	pool := func(backend string, ss []server, hostByte byte, reverse bool) *balance.Pool {
		t.Helper()
		var cfg []balance.ServerConfig
		for i, s := range ss {
			cfg = append(cfg, balance.ServerConfig{Name: s.name, Weight: s.weight,
				Addr: &net.TCPAddr{IP: net.IPv4(10, hostByte, 0, byte(1+i)), Port: 8080 + i}})
		}
		if reverse {
			for i, j := 0, len(cfg)-1; i < j; i, j = i+1, j-1 {
				cfg[i], cfg[j] = cfg[j], cfg[i]
			}
		}
		p, err := balance.NewPool(backend, balance.Source, cfg, balance.Health{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	pick := func(p *balance.Pool, client netip.AddrPort) string {
		t.Helper()
		s, err := p.Pick(client, nil)
		if err != nil {
			t.Fatalf("pick for %s: %v", client, err)
		}
		s.Release()
		return s.ShortName()
	}
	reweighted := append([]server{}, five...)
	reweighted[0].weight = 2

	base := pool("app", five, 1, false)
	same := pool("app", five, 2, true) // other addresses, reversed order
	others := map[string]*balance.Pool{
		"a weight changed": pool("app", reweighted, 1, false),
		"backend renamed":  pool("web", five, 1, false),
	}
	differ := map[string]int{}
	const n = 10000
	for i := range n {
		v4 := netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), byte(i * 7)})
		var b16 [16]byte
		b16[0], b16[1], b16[6], b16[7], b16[14], b16[15] = 0x20, 0x01, byte(i>>8), byte(i), byte(i*13), byte(i*31)
		for _, addr := range []netip.Addr{v4, netip.AddrFrom16(b16)} {
			want := pick(base, netip.AddrPortFrom(addr, 1024))
			if got := pick(same, netip.AddrPortFrom(addr, uint16(2000+i))); got != want {
				t.Fatalf("client %s: %s from one pool, %s from the same servers at other addresses, in another order, from another port", addr, want, got)
			}
			if addr.Is4() {
				if got := pick(same, netip.AddrPortFrom(netip.AddrFrom16(addr.As16()), 1024)); got != want {
					t.Fatalf("client %s: %s, but %s as IPv4-mapped IPv6", addr, want, got)
				}
			}
			for what, p := range others {
				if pick(p, netip.AddrPortFrom(addr, 1024)) != want {
					differ[what]++
				}
			}
		}
	}
	t.Logf("of %d clients, another choice where %v", 2*n, differ)
	for what := range others {
		if differ[what] == 0 {
			t.Errorf("%s: every client kept its server; the test cannot tell what the choice depends on", what)
		}
	}
}
