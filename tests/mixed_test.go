package tests

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mixedConns is how many connections the mixed load runs at once.
const mixedConns = 1000

// mixedBackend serves the mixed load. A client's first 17 bytes say what
// to do: an order byte, then the seed and the size of the stream the
// backend sends. Order 'c' (client closes first): the backend echoes the
// client until its FIN, then sends its stream and closes. Order 's'
// (server closes first): the backend sends its stream and half-closes at
// once, while it reads the client to EOF. Either way the digest of what
// the client sent is recorded under the connection's seed.
func mixedBackend(t *testing.T, got *sync.Map) net.Listener {
	ln := listen(t)
	mixedServe(ln, got)
	return ln
}

// mixedServe serves the mixed load on ln, recording into got.
func mixedServe(ln net.Listener, got *sync.Map) {
	serveEach(ln, func(c *net.TCPConn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		var hdr [17]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		seed, size := binary.LittleEndian.Uint64(hdr[1:]), int64(binary.LittleEndian.Uint64(hdr[9:]))
		switch hdr[0] {
		case 'c':
			d, err := receive(c)
			if err != nil {
				return
			}
			got.Store(seed, d)
			send(c, seed^0xff, size)
			c.CloseWrite()
		case 's':
			done := make(chan struct{})
			go func() {
				defer close(done)
				if d, err := receive(c); err == nil {
					got.Store(seed, d)
				}
			}()
			send(c, seed^0xff, size)
			c.CloseWrite()
			<-done
		}
	})
}

// mixedDialer connects the mixed load's clients.
var mixedDialer = &net.Dialer{Timeout: 30 * time.Second}

// mixedMax is the largest stream of the mixed load, each way.
const mixedMax = 64 << 20

// mixedSize is 0 one time in 20, else log-uniform from 1 byte to max.
func mixedSize(r *rand.Rand, max int64) int64 {
	if r.IntN(20) == 0 {
		return 0
	}
	return int64(math.Exp(r.Float64() * math.Log(float64(max))))
}

// mixedTally counts a mixed load's outcomes; safe for concurrent use. It
// reports every corrupted transfer and the first 5 lost ones as errors.
type mixedTally struct {
	mu                            sync.Mutex
	done, resets, corrupted, lost int
	bytes                         int64
}

func (y *mixedTally) add(t testing.TB, r mixedResult) {
	y.mu.Lock()
	defer y.mu.Unlock()
	switch {
	case r.reset:
		y.resets++
	case r.corrupted:
		y.corrupted++
		t.Error(r.err)
	case r.err != nil:
		y.lost++
		if y.lost <= 5 {
			t.Error(r.err)
		}
	default:
		y.done++
		y.bytes += r.up + r.down
	}
}

func (y *mixedTally) String() string {
	y.mu.Lock()
	defer y.mu.Unlock()
	return fmt.Sprintf("%d completed (%.2f GiB through rsp, both directions hash-checked), %d reset by the client, %d corrupted, %d lost",
		y.done, float64(y.bytes)/(1<<30), y.resets, y.corrupted, y.lost)
}

type mixedResult struct {
	reset     bool
	err       error
	up, down  int64
	corrupted bool
}

// mixedClient runs one connection of the mixed load through d, with
// streams of up to max bytes each way.
func mixedClient(d *net.Dialer, addr string, seed uint64, got *sync.Map, max int64) mixedResult {
	r := rand.New(rand.NewPCG(seed, 1))
	up, down := mixedSize(r, max), mixedSize(r, max)
	order := byte('c')
	if r.IntN(2) == 0 {
		order = 's'
	}
	resetAt := int64(-1)
	if r.IntN(20) == 0 { // 5% of clients reset mid-transfer
		resetAt = r.Int64N(up + 1)
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return mixedResult{err: err}
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Minute))
	var hdr [17]byte
	hdr[0] = order
	binary.LittleEndian.PutUint64(hdr[1:], seed)
	binary.LittleEndian.PutUint64(hdr[9:], uint64(down))
	if _, err := tc.Write(hdr[:]); err != nil {
		return mixedResult{err: err}
	}
	back := make(chan struct {
		d   digest
		err error
	}, 1)
	go func() {
		d, err := receive(tc)
		back <- struct {
			d   digest
			err error
		}{d, err}
	}()
	if resetAt >= 0 {
		send(tc, seed, resetAt)
		tc.SetLinger(0)
		tc.Close()
		<-back
		return mixedResult{reset: true}
	}
	sent, err := send(tc, seed, up)
	if err != nil {
		return mixedResult{err: fmt.Errorf("send: %w", err)}
	}
	tc.CloseWrite()
	b := <-back
	if b.err != nil {
		return mixedResult{err: fmt.Errorf("receive: %w", b.err)}
	}
	res := mixedResult{up: up, down: down}
	if b.d != expected(seed^0xff, down) {
		res.corrupted = true
		res.err = fmt.Errorf("from backend: got %v, want %d bytes of stream %d", b.d, down, seed^0xff)
	}
	// In order 's' the backend's FIN can reach us before our FIN reaches
	// it: wait (bounded) for its record.
	var rec any
	var ok bool
	eventually(30*time.Second, func() bool { rec, ok = got.LoadAndDelete(seed); return ok })
	if !ok {
		res.err = fmt.Errorf("backend recorded nothing of %v", sent)
	} else if rec.(digest) != sent {
		res.corrupted = true
		res.err = fmt.Errorf("to backend: sent %v, backend got %v", sent, rec)
	}
	return res
}

// TestMixedLoad: 1,000 concurrent connections with sizes from 0 B to
// 64 MiB each way, a random half-close order and 5% client resets; every
// completed transfer is hash-checked in both directions: none corrupted,
// none lost, and rsp returns to its baseline.
func TestMixedLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	var got sync.Map
	be := mixedBackend(t, &got)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) { mixedLoad(t, mode, be, &got) })
	}
}

func mixedLoad(t *testing.T, mode string, be net.Listener, got *sync.Map) {
	p := startProxy(t, mode, be.Addr())
	base := baselineOf(p.stats())
	start := time.Now()
	results := make(chan mixedResult, mixedConns)
	for i := range mixedConns {
		go func() { results <- mixedClient(mixedDialer, p.addr, uint64(i)+1+uint64(len(mode))<<32, got, mixedMax) }()
	}
	var y mixedTally
	for range mixedConns {
		y.add(t, <-results)
	}
	t.Logf("mixed load (%s): %d connections in %v: %v", mode, mixedConns, time.Since(start).Round(time.Second), &y)
	if y.corrupted != 0 || y.lost != 0 {
		t.Fatalf("%d corrupted, %d lost", y.corrupted, y.lost)
	}
	settle(t, p, base)
}

// drainConns is how many connections are live when SIGTERM arrives.
const drainConns = 300

// TestDrainUnderLoad: SIGTERM while hundreds of mixed transfers run. rsp
// stops accepting at once, every transfer it had accepted finishes
// byte-exact in both directions (or was reset by its own client), and rsp
// exits 0 as soon as the last one ends, within the drain timeout.
func TestDrainUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	var got sync.Map
	be := mixedBackend(t, &got)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, be.Addr(), "-drain-timeout", "2m")
			results := make(chan mixedResult, drainConns)
			for i := range drainConns {
				go func() {
					results <- mixedClient(mixedDialer, p.addr, uint64(i)+7<<40+uint64(len(mode))<<32, &got, mixedMax)
				}()
			}
			// Every client has been accepted before the signal, so none is
			// refused for arriving late.
			var s stats
			if !eventually(30*time.Second, func() bool { s = p.stats(); return s.accepted == drainConns }) {
				t.Fatalf("only %d of %d connections accepted", s.accepted, drainConns)
			}
			signalled := time.Now()
			p.signal(syscall.SIGTERM)
			live := s.active
			if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "stopping") }) {
				t.Fatal("no stopping log line after SIGTERM")
			}
			refusesNew(t, p.addr)
			var y mixedTally
			for range drainConns {
				y.add(t, <-results)
			}
			finished := time.Since(signalled)
			code := p.wait(30 * time.Second)
			exited := time.Since(signalled)
			t.Logf("SIGTERM (%s) with %d of %d connections live: %v; last transfer done %v after the signal, rsp exited after %v with code %d",
				mode, live, drainConns, &y, finished.Round(time.Millisecond), exited.Round(time.Millisecond), code)
			if y.corrupted != 0 || y.lost != 0 {
				t.Fatalf("%d corrupted, %d lost during the drain", y.corrupted, y.lost)
			}
			if code != 0 {
				t.Fatalf("exit code %d after the drain, want 0", code)
			}
		})
	}
}
