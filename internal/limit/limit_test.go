package limit

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

const ms = int64(1e6) // one millisecond in the fake clock's nanoseconds

type step struct {
	release bool   // Release instead of Take
	addr    string // client address
	now     int64  // fake clock, ns
	want    error  // sentinel Take must wrap; nil: admitted
}

func take(addr string, now int64, want error) step { return step{addr: addr, now: now, want: want} }
func release(addr string) step                     { return step{release: true, addr: addr} }

func TestLimits(t *testing.T) {
	tests := []struct {
		name  string
		c     Config
		steps []step
	}{
		{"per address IPv4", Config{PerAddr: 2}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.1", 0, nil),
			take("192.0.2.1", 0, ErrPerAddr), take("192.0.2.2", 0, nil),
			release("192.0.2.1"), take("192.0.2.1", 0, nil), take("192.0.2.1", 0, ErrPerAddr),
		}},
		{"per address IPv6", Config{PerAddr: 1}, []step{
			take("2001:db8::1", 0, nil), take("2001:db8::1", 0, ErrPerAddr),
			take("2001:db8::2", 0, nil), release("2001:db8::1"), take("2001:db8::1", 0, nil),
		}},
		{"mapped address counts as IPv4", Config{PerAddr: 2}, []step{
			take("192.0.2.1", 0, nil), take("::ffff:192.0.2.1", 0, nil),
			take("192.0.2.1", 0, ErrPerAddr), release("::ffff:192.0.2.1"), take("192.0.2.1", 0, nil),
		}},
		{"zone ignored", Config{PerAddr: 1}, []step{
			take("fe80::1%eth0", 0, nil), take("fe80::1%eth1", 0, ErrPerAddr), take("fe80::1", 0, ErrPerAddr),
		}},
		{"per prefix IPv4 /24", Config{PerPrefix: 2}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.200", 0, nil), take("192.0.2.3", 0, ErrPerPrefix),
			take("192.0.3.1", 0, nil), take("::ffff:192.0.2.9", 0, ErrPerPrefix),
			release("192.0.2.1"), take("192.0.2.3", 0, nil),
		}},
		{"per prefix IPv6 /64", Config{PerPrefix: 2}, []step{
			take("2001:db8::1", 0, nil), take("2001:db8::ffff:2", 0, nil), take("2001:db8::3", 0, ErrPerPrefix),
			take("2001:db8:0:1::1", 0, nil), release("2001:db8::1"), take("2001:db8::3", 0, nil),
		}},
		{"IPv4 and IPv6 prefixes apart", Config{PerPrefix: 1, PrefixV4: 1, PrefixV6: 1}, []step{
			take("0.0.0.1", 0, nil), take("::1", 0, nil), take("0.0.0.2", 0, ErrPerPrefix), take("::2", 0, ErrPerPrefix),
		}},
		{"custom prefix lengths", Config{PerPrefix: 1, PrefixV4: 16, PrefixV6: 48}, []step{
			take("192.0.2.1", 0, nil), take("192.0.99.1", 0, ErrPerPrefix), take("192.1.2.1", 0, nil),
			take("2001:db8:1:2::1", 0, nil), take("2001:db8:1:ffff::1", 0, ErrPerPrefix), take("2001:db8:2::1", 0, nil),
		}},
		{"odd prefix lengths", Config{PerPrefix: 1, PrefixV4: 23, PrefixV6: 65}, []step{
			take("192.0.2.1", 0, nil), take("192.0.3.1", 0, ErrPerPrefix), take("192.0.4.1", 0, nil),
			take("2001:db8::1", 0, nil), take("2001:db8::7fff:0:0:1", 0, ErrPerPrefix), take("2001:db8::8000:0:0:1", 0, nil),
		}},
		{"prefix refusal undoes the address count", Config{PerAddr: 1, PerPrefix: 1}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.2", 0, ErrPerPrefix),
			release("192.0.2.1"), take("192.0.2.2", 0, nil), take("192.0.2.2", 0, ErrPerAddr),
		}},
		{"rate with burst", Config{Rate: 2, Burst: 3}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.1", 0, nil), take("192.0.2.1", 0, nil),
			take("192.0.2.1", 0, ErrRate), take("192.0.2.2", 0, nil),
			take("192.0.2.1", 499*ms, ErrRate), take("192.0.2.1", 500*ms, nil), take("192.0.2.1", 500*ms, ErrRate),
			take("192.0.2.1", 2000*ms, nil), take("192.0.2.1", 2000*ms, nil), take("192.0.2.1", 2000*ms, nil),
			take("192.0.2.1", 2000*ms, ErrRate),
		}},
		{"rate default burst is ceil(rate)", Config{Rate: 2.5}, []step{
			take("2001:db8::1", 0, nil), take("2001:db8::1", 0, nil), take("2001:db8::1", 0, nil),
			take("2001:db8::1", 0, ErrRate), take("2001:db8::1", 400*ms, nil), take("2001:db8::1", 400*ms, ErrRate),
		}},
		{"rate below one per second", Config{Rate: 0.5}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.1", 1000*ms, ErrRate), take("192.0.2.1", 2000*ms, nil),
		}},
		{"rate: a clock behind another loop's", Config{Rate: 1}, []step{
			take("192.0.2.1", 1000*ms, nil), take("192.0.2.1", 900*ms, ErrRate), take("192.0.2.1", 2000*ms, nil),
		}},
		{"rate: mapped address shares the bucket", Config{Rate: 1}, []step{
			take("::ffff:192.0.2.1", 0, nil), take("192.0.2.1", 0, ErrRate),
		}},
		{"per address checked before the token is spent", Config{PerAddr: 1, Rate: 1}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.1", 1000*ms, ErrPerAddr),
			release("192.0.2.1"), take("192.0.2.1", 1000*ms, nil),
		}},
		{"prefix refusal gives the token back", Config{PerPrefix: 1, Rate: 1}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.2", 0, ErrPerPrefix),
			release("192.0.2.1"), take("192.0.2.2", 0, nil), take("192.0.2.2", 0, ErrRate),
		}},
		{"all three", Config{PerAddr: 2, PerPrefix: 3, Rate: 10, Burst: 2}, []step{
			take("192.0.2.1", 0, nil), take("192.0.2.1", 0, nil), release("192.0.2.1"),
			take("192.0.2.1", 0, ErrRate), take("192.0.2.1", 100*ms, nil),
			take("192.0.2.1", 200*ms, ErrPerAddr), take("192.0.2.2", 200*ms, nil), take("192.0.2.3", 200*ms, ErrPerPrefix),
			release("192.0.2.1"), take("192.0.2.3", 200*ms, nil),
		}},
		{"invalid address always admitted", Config{PerAddr: 1, PerPrefix: 1, Rate: 1}, []step{
			take("", 0, nil), take("", 0, nil), release(""),
		}},
		{"release without take ignored", Config{PerAddr: 1, PerPrefix: 1}, []step{
			release("192.0.2.1"), take("192.0.2.1", 0, nil), take("192.0.2.1", 0, ErrPerAddr),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(tt.c)
			held := map[netip.Addr]int{}
			for i, s := range tt.steps {
				var a netip.Addr
				if s.addr != "" {
					a = netip.MustParseAddr(s.addr)
				}
				if s.release {
					l.Release(a)
					if a := a.Unmap().WithZone(""); held[a] > 0 {
						held[a]--
					}
					continue
				}
				err := l.Take(a, s.now)
				if !errors.Is(err, s.want) || (err == nil) != (s.want == nil) {
					t.Fatalf("step %d: Take(%s, %d) = %v, want %v", i, s.addr, s.now, err, s.want)
				}
				if err == nil {
					held[a.Unmap().WithZone("")]++
				}
			}
			for a, n := range held {
				for range n {
					l.Release(a)
				}
			}
			l.Sweep(1 << 40)
			if n := l.Len(); n != 0 {
				t.Errorf("Len() = %d after releasing everything and sweeping, want 0", n)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct {
		c     Config
		addrs []string
		want  string
	}{
		{Config{PerAddr: 1}, []string{"192.0.2.1", "192.0.2.1"},
			"per-address connection limit: 192.0.2.1 has 1 connections open, limit 1"},
		{Config{PerPrefix: 2}, []string{"2001:db8::1", "2001:db8::2", "2001:db8::3"},
			"per-prefix connection limit: 2001:db8::/64 (client 2001:db8::3) has 2 connections open, limit 2"},
		{Config{PerPrefix: 1}, []string{"::ffff:192.0.2.1", "::ffff:192.0.2.7"},
			"per-prefix connection limit: 192.0.2.0/24 (client 192.0.2.7) has 1 connections open, limit 1"},
		{Config{Rate: 0.5}, []string{"192.0.2.1", "192.0.2.1"},
			"per-address connection rate limit: 192.0.2.1 opens more than 0.5 connections/s, burst 1"},
		{Config{PerAddr: 1, MaxSources: 1}, []string{"192.0.2.1", "192.0.2.2"},
			"too many client sources tracked: 192.0.2.2 is new and no tracked source is idle (max 1)"},
	}
	for _, tt := range tests {
		l := New(tt.c)
		var err error
		for _, s := range tt.addrs {
			err = l.Take(netip.MustParseAddr(s), 0)
		}
		if err == nil || err.Error() != tt.want {
			t.Errorf("%+v: error %q, want %q", tt.c, err, tt.want)
		}
	}
}

func TestConfig(t *testing.T) {
	bad := []Config{
		{PerAddr: -1}, {PerPrefix: -1}, {PrefixV4: 33}, {PrefixV4: -1}, {PrefixV6: 129},
		{Rate: -1}, {Rate: nan()}, {Burst: -1}, {MaxSources: -1},
	}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("%+v: Validate() = nil, want an error", c)
		}
	}
	for _, c := range []Config{{}, {PrefixV4: 24, PrefixV6: 64, Burst: 5, MaxSources: 10}} {
		if c.Enabled() || New(c) != nil {
			t.Errorf("%+v: enabled, want no Limiter", c)
		}
	}
	var l *Limiter // what callers hold when nothing is limited
	if err := l.Take(netip.MustParseAddr("192.0.2.1"), 0); err != nil || l.Len() != 0 || l.Sweep(0) != 0 {
		t.Errorf("nil Limiter refused or tracked something: %v", err)
	}
	l.Release(netip.MustParseAddr("192.0.2.1"))

	for _, c := range []Config{{Rate: 1e-12}, {Rate: 1e300}, {Rate: 1e9, Burst: 1 << 40}} {
		l := New(c)
		a := netip.MustParseAddr("192.0.2.1")
		if err := l.Take(a, 1<<60); err != nil {
			t.Errorf("%+v: first Take: %v", c, err)
		}
		if l.span <= 0 || l.interval <= 0 {
			t.Errorf("%+v: interval %d, span %d", c, l.interval, l.span)
		}
	}
}

func nan() float64 { var z float64; return z / z }

// TestTooManySources fills the table with busy sources: new ones are
// refused, known ones still served, and a release makes room again.
func TestTooManySources(t *testing.T) {
	tests := []struct {
		name string
		c    Config
		n    int // busy sources that fill the table
	}{
		{"addresses", Config{PerAddr: 1, MaxSources: 100}, 100},
		{"addresses and prefixes", Config{PerAddr: 5, PerPrefix: 5, MaxSources: 100}, 50},
		{"rate only, buckets not refilled", Config{Rate: 1, MaxSources: 100}, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(tt.c)
			addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}) }
			for i := range tt.n {
				if err := l.Take(addr(i), 0); err != nil {
					t.Fatalf("source %d: %v", i, err)
				}
			}
			if err := l.Take(addr(tt.n), 0); !errors.Is(err, ErrTooManySources) {
				t.Fatalf("new source in a full table: %v, want ErrTooManySources", err)
			}
			if n := l.Len(); n > tt.c.MaxSources {
				t.Fatalf("Len() = %d > MaxSources %d", n, tt.c.MaxSources)
			}
			if tt.c.PerAddr > 1 {
				if err := l.Take(addr(0), 0); err != nil {
					t.Fatalf("known source refused in a full table: %v", err)
				}
				l.Release(addr(0))
			}
			// Free one source: released, or its bucket refilled.
			l.Release(addr(0))
			if err := l.Take(addr(tt.n), 2e9); err != nil {
				t.Fatalf("new source after one was freed: %v", err)
			}
		})
	}
}

// TestEvictionBound runs a million distinct clients (a fifth of that for
// the slower shapes) through a table of a thousand: idle entries are
// evicted, nothing is refused, and the table never holds more than
// MaxSources.
func TestEvictionBound(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	tests := []struct {
		name    string
		c       Config
		release bool
		n       int
	}{
		// A bucket refills in 100 ms; the clock moves 1 ms a client, so
		// about 100 entries are busy at a time.
		{"rate", Config{Rate: 10, Burst: 1, MaxSources: 1000}, false, n},
		{"per address and rate", Config{PerAddr: 1, Rate: 10, Burst: 1, MaxSources: 1000}, true, n / 5},
		{"per address, prefix and rate", Config{PerAddr: 1, PerPrefix: 1000, Rate: 10, Burst: 1, MaxSources: 1000}, true, n / 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(tt.c)
			var now int64
			for i := range tt.n {
				now += ms
				var a netip.Addr
				if i%2 == 0 {
					a = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				} else {
					a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
				}
				if err := l.Take(a, now); err != nil {
					t.Fatalf("client %d: %v (Len %d)", i, err, l.Len())
				}
				if tt.release {
					l.Release(a)
				}
				if i%1000 == 0 {
					if got := l.Len(); got > tt.c.MaxSources {
						t.Fatalf("client %d: Len() = %d > MaxSources %d", i, got, tt.c.MaxSources)
					}
				}
			}
			if got := l.Len(); got > tt.c.MaxSources {
				t.Fatalf("Len() = %d > MaxSources %d", got, tt.c.MaxSources)
			}
			l.Sweep(now + 1e9)
			if got := l.Len(); got != 0 {
				t.Fatalf("Len() = %d after the buckets refilled, want 0", got)
			}
		})
	}
}

// TestIdleDroppedByTraffic checks that idle entries go without Sweep, by
// the few entries each Take looks at.
func TestIdleDroppedByTraffic(t *testing.T) {
	l := New(Config{Rate: 10, MaxSources: 64}) // one shard
	for i := range 50 {
		l.Take(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 0)
	}
	busy := netip.MustParseAddr("192.0.2.1")
	for i := range 200 {
		l.Take(busy, 1e9+int64(i)) // buckets of the 50 are full by now
	}
	if n := l.Len(); n > 5 {
		t.Errorf("Len() = %d after 200 Takes past the refill, want the idle entries gone", n)
	}
}

// TestShrink checks that a shard's maps are rebuilt once most entries are
// gone, so memory follows the live population.
func TestShrink(t *testing.T) {
	l := New(Config{PerAddr: 1, PerPrefix: 1, PrefixV4: 32})
	var addrs []netip.Addr
	for i := range 64 * 4 * shrinkMin {
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		addrs = append(addrs, a)
		if err := l.Take(a, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range l.shards {
		if s := &l.shards[i]; s.peak < shrinkMin {
			t.Fatalf("shard %d: peak %d, want over %d for the test to mean something", i, s.peak, shrinkMin)
		}
	}
	for _, a := range addrs {
		l.Release(a)
	}
	for i := range l.shards {
		if s := &l.shards[i]; s.len() != 0 || s.peak >= shrinkMin {
			t.Errorf("shard %d: %d entries, peak %d after all released: maps not rebuilt", i, s.len(), s.peak)
		}
	}
}

// TestConcurrent has goroutines standing in for event loops take and
// release connections from a small set of clients: no limit is ever
// exceeded, and the table is empty once everything is released and the
// buckets have refilled.
func TestConcurrent(t *testing.T) {
	const (
		loops    = 8
		perLoop  = 5000
		clients  = 64
		perAddr  = 3
		perPrefx = 8
	)
	l := New(Config{PerAddr: perAddr, PerPrefix: perPrefx, Rate: 1000, Burst: 50, MaxSources: 4096})
	var clock atomic.Int64
	var liveAddr [clients]atomic.Int32
	var livePrefix [clients / 8]atomic.Int32
	var admitted, refused atomic.Int64
	addr := func(i int) netip.Addr {
		a := netip.AddrFrom4([4]byte{198, 51, byte(i / 8), byte(i % 8)})
		if i%3 == 0 {
			a = netip.AddrFrom16(a.As16()) // mapped
		}
		return a
	}
	var wg sync.WaitGroup
	for g := range loops {
		wg.Go(func() {
			var held []int
			for j := range perLoop {
				i := (g*7 + j*13) % clients
				if err := l.Take(addr(i), clock.Add(10_000)); err != nil {
					if !errors.Is(err, ErrPerAddr) && !errors.Is(err, ErrPerPrefix) && !errors.Is(err, ErrRate) {
						t.Errorf("unexpected refusal: %v", err)
					}
					refused.Add(1)
				} else {
					admitted.Add(1)
					if n := liveAddr[i].Add(1); n > perAddr {
						t.Errorf("client %d holds %d connections, limit %d", i, n, perAddr)
					}
					if n := livePrefix[i/8].Add(1); n > perPrefx {
						t.Errorf("prefix %d holds %d connections, limit %d", i/8, n, perPrefx)
					}
					held = append(held, i)
				}
				if len(held) > 2 || (len(held) > 0 && j%2 == 0) {
					i := held[0]
					held = held[1:]
					liveAddr[i].Add(-1)
					livePrefix[i/8].Add(-1)
					l.Release(addr(i))
				}
			}
			for _, i := range held {
				liveAddr[i].Add(-1)
				livePrefix[i/8].Add(-1)
				l.Release(addr(i))
			}
		})
	}
	wg.Wait()
	t.Logf("admitted %d, refused %d", admitted.Load(), refused.Load())
	if admitted.Load() == 0 || refused.Load() == 0 {
		t.Errorf("admitted %d, refused %d: want both", admitted.Load(), refused.Load())
	}
	l.Sweep(clock.Load() + 1e9)
	if n := l.Len(); n != 0 {
		t.Errorf("Len() = %d after all released and the buckets refilled, want 0", n)
	}
}

// TestShardSpread checks that sequential addresses, the usual shape of a
// busy client population, spread evenly over the shards.
func TestShardSpread(t *testing.T) {
	l := New(Config{PerAddr: 1})
	if len(l.shards) != maxShards {
		t.Fatalf("%d shards, want %d", len(l.shards), maxShards)
	}
	counts := make([]int, len(l.shards))
	for i := range maxShards * 1000 {
		counts[l.shardIndex(key(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).As16()))]++
	}
	for i, c := range counts {
		if c < 850 || c > 1150 {
			t.Errorf("shard %d holds %d of %d sequential addresses, want about 1000", i, c, maxShards*1000)
		}
	}
}

// TestHold: a connection handed over is counted whatever the limits, and
// spends no rate token; it is released as any other.
func TestHold(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	l := New(Config{PerAddr: 1, PerPrefix: 1, Rate: 1, Burst: 1})
	if err := l.Take(a, 0); err != nil {
		t.Fatal(err)
	}
	l.Hold(a, 0) // over every limit: counted all the same
	l.Release(a)
	if err := l.Take(a, int64(10e9)); !errors.Is(err, ErrPerAddr) {
		t.Errorf("Take with one held connection left = %v; want ErrPerAddr", err)
	}
	l.Release(a)
	if err := l.Take(a, int64(10e9)); err != nil {
		t.Errorf("Take once both ended = %v; want admitted (Hold spent no token)", err)
	}
}
