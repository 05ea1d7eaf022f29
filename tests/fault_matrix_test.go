package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rssKiB is the resident memory of process pid, from /proc.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	status, err := procStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := status["VmRSS"]
	if !ok {
		t.Fatal("no VmRSS")
	}
	n, _ := strconv.Atoi(strings.TrimSuffix(v, " kB"))
	return n
}

// procStatus returns the fields of /proc/PID/status, by name, their
// values trimmed.
func procStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields, nil
}

// TestBackendClosesAtOnce: a backend that accepts and closes straight away
// closes the client within a second; rsp keeps nothing.
func TestBackendClosesAtOnce(t *testing.T) {
	ln := listen(t)
	serveEach(ln, func(c *net.TCPConn) { c.Close() })
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, ln.Addr())
			base := baselineOf(p.stats())
			for range 5 {
				c := dial(t, p.addr)
				c.Write([]byte("hello"))
				start := time.Now()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := c.Read(make([]byte, 1))
				if err != io.EOF && !isReset(err) {
					t.Fatalf("read = %v, want the client closed", err)
				}
				if d := time.Since(start); d > time.Second {
					t.Fatalf("client closed after %v, want under 1s", d)
				}
				c.Close()
			}
			settle(t, p, base)
		})
	}
}

// TestBackendNeverReads: against a backend that accepts and never reads,
// the client is back-pressured once the kernel buffers and one pipe are
// full; rsp buffers nothing itself (its RSS stays put) and lets go of
// everything when the client resets, long before the idle timeout: the
// splice engine sees the socket error at once, the copy relay (blocked
// writing to the backend) within a second.
func TestBackendNeverReads(t *testing.T) {
	ln := listen(t)
	held := make(chan *net.TCPConn, 4)
	serveEach(ln, func(c *net.TCPConn) { held <- c })
	t.Cleanup(func() {
		for len(held) > 0 {
			(<-held).Close()
		}
	})
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, ln.Addr(), "-idle-timeout", "10m")
			base := baselineOf(p.stats())
			rss0 := rssKiB(t, p.pid())
			c := dial(t, p.addr)
			var written atomic.Int64
			done := make(chan error, 1)
			go func() {
				chunk := make([]byte, 256<<10)
				for written.Load() < 1<<30 {
					n, err := c.Write(chunk)
					written.Add(int64(n))
					if err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			// The writer stalls: two samples half a second apart agree.
			var last int64 = -1
			if !eventually(10*time.Second, func() bool {
				now := written.Load()
				stalled := now == last && now > 0
				last = now
				time.Sleep(500 * time.Millisecond)
				return stalled
			}) {
				t.Fatalf("client never back-pressured: %d MiB written", written.Load()>>20)
			}
			grew := rssKiB(t, p.pid()) - rss0
			t.Logf("client stalled after %.1f MiB; rsp RSS grew %d KiB", float64(written.Load())/(1<<20), grew)
			if written.Load() > 64<<20 {
				t.Errorf("%d MiB accepted from the client with a backend that reads nothing: buffered, not back-pressured", written.Load()>>20)
			}
			if grew > 8<<10 {
				t.Errorf("rsp RSS grew %d KiB holding a stalled transfer", grew)
			}
			c.SetLinger(0)
			c.Close()
			if err := <-done; err == nil {
				t.Error("writer finished 1 GiB into a backend that reads nothing")
			}
			settle(t, p, base)
		})
	}
}

// TestSlowloris: a client that trickles a byte a second is closed by an
// idle timeout shorter than its gaps; rsp keeps nothing of it.
func TestSlowloris(t *testing.T) {
	backend := echoBackend(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, backend.Addr(), "-idle-timeout", "700ms")
			base := baselineOf(p.stats())
			c := dial(t, p.addr)
			defer c.Close()
			start := time.Now()
			var err error
			for i := 0; i < 10 && err == nil; i++ {
				if i > 0 {
					time.Sleep(time.Second)
				}
				if _, err = c.Write([]byte{'x'}); err == nil {
					c.SetReadDeadline(time.Now().Add(time.Second))
					_, err = io.ReadFull(c, make([]byte, 1))
				}
			}
			d := time.Since(start)
			if err == nil {
				t.Fatalf("trickling client still open after %v with -idle-timeout 700ms", d)
			}
			if d > 4*time.Second {
				t.Errorf("trickling client closed after %v, want within a few gaps", d)
			}
			t.Logf("trickling client closed after %v: %v", d.Round(10*time.Millisecond), err)
			settle(t, p, base)
		})
	}
}
