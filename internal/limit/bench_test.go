package limit

import (
	"net/netip"
	"runtime"
	"testing"
)

// full is the configuration the benchmarks measure: every limit on.
var full = Config{PerAddr: 100, PerPrefix: 1000, Rate: 1e6}

// BenchmarkTake measures a Take and its Release for a known source.
func BenchmarkTake(b *testing.B) {
	for _, bc := range []struct {
		name string
		c    Config
	}{
		{"all", full},
		{"peraddr", Config{PerAddr: 100}},
		{"rate", Config{Rate: 1e6}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := New(bc.c)
			a := netip.MustParseAddr("192.0.2.1")
			// A populated table, as in service: the sweep walks real entries.
			for i := range 10000 {
				l.Take(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 0)
			}
			b.ReportAllocs()
			var now int64
			for b.Loop() {
				now += 1000
				if err := l.Take(a, now); err != nil {
					b.Fatal(err)
				}
				l.Release(a)
			}
		})
	}
}

// BenchmarkTakeParallel has every goroutine, standing in for an event loop,
// take and release for its own clients.
func BenchmarkTakeParallel(b *testing.B) {
	l := New(full)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var now int64
		i := 0
		for pb.Next() {
			i++
			now += 1000
			a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
			if err := l.Take(a, now); err == nil {
				l.Release(a)
			}
		}
	})
}

// BenchmarkTakeRefused measures the abuse path: a client over its limit.
func BenchmarkTakeRefused(b *testing.B) {
	l := New(Config{PerAddr: 1})
	a := netip.MustParseAddr("192.0.2.1")
	l.Take(a, 0)
	b.ReportAllocs()
	for b.Loop() {
		if l.Take(a, 0) == nil {
			b.Fatal("admitted over the limit")
		}
	}
}

// heapPerSource returns the heap that n distinct clients, each holding one
// connection, cost under c, in bytes per client, and the heap left once
// they are all released and swept.
func heapPerSource(c Config, n int) (perSource, after float64) {
	addr := func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	var m0, m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	l := New(c)
	for i := range n {
		if err := l.Take(addr(i), 0); err != nil {
			panic(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	for i := range n {
		l.Release(addr(i))
	}
	l.Sweep(1 << 40)
	runtime.GC()
	runtime.ReadMemStats(&m2)
	runtime.KeepAlive(l)
	return float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(n),
		float64(int64(m2.HeapAlloc) - int64(m0.HeapAlloc))
}

const memClients = 100_000

// memConfigs are the shapes whose memory the closing note reports: 100,000
// clients in 391 /24 prefixes.
var memConfigs = []struct {
	name string
	c    Config
}{
	{"all", Config{PerAddr: 100, PerPrefix: 1000, Rate: 10}},
	{"peraddr", Config{PerAddr: 100}},
	{"rate", Config{Rate: 10}},
	{"perprefix", Config{PerPrefix: 1000}},
}

// TestMemory100k logs the per-source state's memory at 100,000 distinct
// clients each holding one connection, and checks that it stays small and
// goes away when they leave.
func TestMemory100k(t *testing.T) {
	for _, mc := range memConfigs {
		per, after := heapPerSource(mc.c, memClients)
		t.Logf("%s: %.1f bytes per source, %.2f MiB for %d clients; %.0f bytes left after all released",
			mc.name, per, per*memClients/(1<<20), memClients, after)
		if per > 150 {
			t.Errorf("%s: %.1f bytes per source, want under 150", mc.name, per)
		}
		if after > 64<<10 {
			t.Errorf("%s: %.0f bytes left after all released, want the maps rebuilt small", mc.name, after)
		}
	}
}

// BenchmarkMemory100k reports the same figure as a metric.
func BenchmarkMemory100k(b *testing.B) {
	for _, mc := range memConfigs {
		b.Run(mc.name, func(b *testing.B) {
			var per float64
			for b.Loop() {
				per, _ = heapPerSource(mc.c, memClients)
			}
			b.ReportMetric(per, "B/source")
			b.ReportMetric(per*memClients/(1<<20), "MiB/100k")
		})
	}
}
