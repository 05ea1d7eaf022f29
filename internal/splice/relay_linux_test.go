//go:build linux

package splice

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serveEach serves every connection ln accepts with handle, in a
// goroutine of its own, and closes it after; ln is closed when the test
// ends.
func serveEach(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// startEcho runs an echo server that half-closes after echoing.
func startEcho(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveEach(t, ln, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return ln
}

// fixed is a Picker with one target and no health.
type fixed struct{ addr net.Addr }

func (f fixed) Pick(netip.AddrPort, []Target) (Target, error) { return f, nil }
func (f fixed) Addr() net.Addr                                { return f.addr }
func (f fixed) Name() string                                  { return "test/" + f.addr.String() }
func (fixed) Connected(error)                                 {}
func (fixed) Release()                                        {}

// startRelay starts r on a loopback listener routed to backend and stops
// it at test end.
func startRelay(t *testing.T, r *Relay, backend net.Addr) string {
	t.Helper()
	return startRoute(t, r, &Route{Name: "test", Picker: fixed{backend}})
}

// startRoute starts r on a loopback listener routed by rt.
func startRoute(t *testing.T, r *Relay, rt *Route) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	if r.Logger == nil {
		r.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if err := r.Serve(ln, NewFrontend(rt)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})
	return addr
}

// echo sends n random bytes through addr, half-closes and compares the
// echo's SHA-256.
func echo(t *testing.T, addr string, n int, seed uint64) {
	t.Helper()
	if err := echoErr(addr, n, seed); err != nil {
		t.Fatal(err)
	}
}

func waitIdle(t *testing.T, r *Relay) Stats {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		s := r.Stats()
		if s.Active == 0 {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections still active: %+v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPipePoolBounded: the pool keeps at most max empty pipes and closes
// the rest; a pipe holding bytes is closed, never pooled.
func TestPipePoolBounded(t *testing.T) {
	pp := &pipePool{max: 2}
	var ps []*pipe
	for range 5 {
		p, err := pp.get()
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if got := pp.open.Load(); got != 5 {
		t.Fatalf("open = %d, want 5", got)
	}
	for _, p := range ps[:4] {
		pp.put(p, true)
	}
	dirty := ps[4]
	unix.Write(dirty.w, []byte("secret"))
	pp.put(dirty, false)
	if len(pp.free) != 2 || pp.idle.Load() != 2 || pp.open.Load() != 2 {
		t.Fatalf("after returns: free=%d idle=%d open=%d, want 2 2 2", len(pp.free), pp.idle.Load(), pp.open.Load())
	}
	if isPooled(pp, dirty) {
		t.Fatal("a pipe holding bytes was pooled")
	}
	for _, p := range ps[2:4] {
		if isPooled(pp, p) {
			t.Fatal("pool kept more pipes than its bound")
		}
	}
	// A pooled pipe is empty: reading it gives EAGAIN.
	for _, p := range pp.free {
		if _, err := unix.Read(p.r, make([]byte, 1)); err != unix.EAGAIN {
			t.Fatalf("pooled pipe read = %v, want EAGAIN (empty)", err)
		}
	}
	pp.drain()
	if pp.open.Load() != 0 || pp.idle.Load() != 0 {
		t.Fatalf("after drain open=%d idle=%d", pp.open.Load(), pp.idle.Load())
	}
}

func isPooled(pp *pipePool, p *pipe) bool {
	for _, q := range pp.free {
		if q == p {
			return true
		}
	}
	return false
}

// TestPipesReturned: after 200 concurrent connections close, the relay
// holds no more pipes than its pools' bound, and none in use.
func TestPipesReturned(t *testing.T) {
	backend := startEcho(t)
	r := &Relay{Loops: 2, MaxIdlePipes: 4}
	addr := startRelay(t, r, backend.Addr())
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			echo(t, addr, 256<<10, uint64(i))
		}()
	}
	wg.Wait()
	s := waitIdle(t, r)
	if s.Pipes != s.IdlePipes {
		t.Fatalf("%d pipes still in use with no connection: %+v", s.Pipes-s.IdlePipes, s)
	}
	if s.Pipes > 2*4 {
		t.Fatalf("%d pipes open after all connections closed, want at most 8 (2 loops x 4)", s.Pipes)
	}
	e := r.impl.(*spliceEngine)
	if e.pipesCreated() == 0 {
		t.Fatal("no pipe was ever created: bytes did not go through splice")
	}
}

// TestIdleHoldsNoPipe: a connection that has exchanged bytes and gone
// quiet holds no pipe.
func TestIdleHoldsNoPipe(t *testing.T) {
	backend := startEcho(t)
	r := &Relay{}
	addr := startRelay(t, r, backend.Addr())
	for range 50 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("hello"))
		buf := make([]byte, 5)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
			t.Fatalf("echo: %q %v", buf, err)
		}
	}
	// The client can read the echo a moment before the loop, having
	// written it, finds the backend drained and gives the pipe back.
	deadline := time.Now().Add(2 * time.Second)
	s := r.Stats()
	for s.Pipes != s.IdlePipes && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		s = r.Stats()
	}
	if s.Active != 50 {
		t.Fatalf("active = %d, want 50", s.Active)
	}
	if s.Pipes != s.IdlePipes {
		t.Fatalf("idle connections hold %d pipes: %+v", s.Pipes-s.IdlePipes, s)
	}
}

// TestNoSpliceHandoff: where the kernel refuses splice (EINVAL), the
// connection moves to the copy relay and its bytes arrive intact.
func TestNoSpliceHandoff(t *testing.T) {
	backend := startEcho(t)
	r := &Relay{test: testHooks{noSplice: true}}
	addr := startRelay(t, r, backend.Addr())
	for i, n := range []int{1, 100 << 10, 4 << 20} {
		echo(t, addr, n, uint64(i))
	}
	waitIdle(t, r)
	if c := r.impl.(*spliceEngine).pipesCreated(); c > 2*int64(len(r.impl.(*spliceEngine).loops)) {
		t.Fatalf("%d pipes created although splice was refused", c)
	}
}

// TestNoPipeFallback: when no pipe can be made (fd exhaustion), bytes
// still move, through the loop's buffer, intact.
func TestNoPipeFallback(t *testing.T) {
	backend := startEcho(t)
	r := &Relay{test: testHooks{noPipes: true}}
	addr := startRelay(t, r, backend.Addr())
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			echo(t, addr, 2<<20, uint64(i))
		}()
	}
	wg.Wait()
	waitIdle(t, r)
	if c := r.impl.(*spliceEngine).pipesCreated(); c != 0 {
		t.Fatalf("%d pipes created although none could be", c)
	}
}

// TestNoPipeUrgent: without pipes (fd exhaustion) urgent data still goes
// on as urgent data at its mark: a backend reading it inline
// (SO_OOBINLINE) gets the stream exactly as sent, never one a byte short
// with a clean end.
func TestNoPipeUrgent(t *testing.T) {
	const size = 256 << 10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 16)
	serveEach(t, ln, func(c net.Conn) {
		raw, _ := c.(*net.TCPConn).SyscallConn()
		raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_OOBINLINE, 1) })
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	})
	r := &Relay{test: testHooks{noPipes: true}}
	addr := startRelay(t, r, ln.Addr())
	for i := range 16 {
		want := make([]byte, size)
		rand.NewChaCha8([32]byte{byte(i)}).Read(want)
		at := size/4 + i*size/32
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(want[:at])
		raw, _ := c.(*net.TCPConn).SyscallConn()
		var serr error
		raw.Control(func(fd uintptr) { serr = unix.Sendto(int(fd), want[at:at+1], unix.MSG_OOB, nil) })
		if serr != nil {
			t.Fatal(serr)
		}
		c.Write(want[at+1:])
		c.(*net.TCPConn).CloseWrite()
		var b []byte
		select {
		case b = <-got:
		case <-time.After(15 * time.Second):
			t.Fatalf("connection %d: the backend saw no end within 15 s", i)
		}
		c.Close()
		if !bytes.Equal(b, want) {
			t.Fatalf("connection %d: the backend got %d bytes, want the %d sent with the urgent byte %#02x inline at %d (equal up to it: %v)",
				i, len(b), size, want[at], at, len(b) >= at && bytes.Equal(b[:at], want[:at]))
		}
	}
}

// TestShutdownDrains: Shutdown waits for a live connection and returns nil
// when it ends; with an expired context it closes it and says so.
func TestShutdownDrains(t *testing.T) {
	backend := startEcho(t)
	for _, mode := range []Mode{ModeSplice, ModeCopy} {
		r := &Relay{Mode: mode}
		addr := startRelay(t, r, backend.Addr())
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		go func() {
			time.Sleep(200 * time.Millisecond)
			c.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := r.Shutdown(ctx); err != nil {
			t.Fatalf("%v: Shutdown = %v, want nil after the connection ended", mode, err)
		}
		cancel()

		r2 := &Relay{Mode: mode}
		addr2 := startRelay(t, r2, backend.Addr())
		c2, err := net.Dial("tcp", addr2)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		c2.Write([]byte("x"))
		io.ReadFull(c2, make([]byte, 1))
		ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
		if err := r2.Shutdown(ctx2); err == nil {
			t.Fatalf("%v: Shutdown = nil with a connection still open at the deadline", mode)
		}
		cancel2()
		c2.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c2.Read(make([]byte, 1)); err == nil {
			t.Fatalf("%v: connection still open after forced shutdown", mode)
		}
	}
}

// TestShutdownResetsWaiting: a client still awaited for its header when
// Shutdown gives up has been reset, and its end reported, by the time
// Shutdown returns, in both relays: the process may exit at once, and the
// kernel would otherwise end it with a clean FIN.
func TestShutdownResetsWaiting(t *testing.T) {
	backend := startEcho(t)
	for _, mode := range []Mode{ModeSplice, ModeCopy} {
		var ends atomic.Int32
		r := &Relay{Mode: mode, OnEnd: func(*ConnInfo) { ends.Add(1) }}
		addr := startRoute(t, r, &Route{
			Name: "test", Picker: fixed{backend.Addr()}, ConnectTimeout: time.Minute,
			Header: &HeaderRule{
				Trusted: func(netip.Addr) bool { return true },
				Parse: func([]byte) (netip.AddrPort, int, error) {
					return netip.AddrPort{}, 0, ErrHeaderIncomplete
				},
				MaxLen: 108,
			},
		})
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for deadline := time.Now().Add(3 * time.Second); r.Stats().Active != 1; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%v: the client was not accepted", mode)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err = r.Shutdown(ctx)
		cancel()
		if err == nil {
			t.Fatalf("%v: Shutdown = nil with a client waiting in its header", mode)
		}
		if n := ends.Load(); n != 1 {
			t.Fatalf("%v: %d ends reported when Shutdown returned, want 1", mode, n)
		}
		// Looked at once, without waiting: the reset is already here.
		raw, _ := c.(*net.TCPConn).SyscallConn()
		var rerr error
		raw.Read(func(fd uintptr) bool {
			_, _, rerr = unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_DONTWAIT)
			return true
		})
		if rerr != unix.ECONNRESET {
			t.Fatalf("%v: a client waiting in its header read %v right after Shutdown returned; want a reset", mode, rerr)
		}
	}
}

// TestConnectionsSpreadOverLoops: connections that arrive together are
// spread over the event loops (the listener wakes one loop, which hands
// connections on to less loaded ones), and each handed-over connection is
// relayed like any other.
func TestConnectionsSpreadOverLoops(t *testing.T) {
	backend := startEcho(t)
	const loops, conns = 4, 32
	r := &Relay{Loops: loops}
	addr := startRelay(t, r, backend.Addr())
	var cs []net.Conn
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	// Each connection echoes a byte, so all are open on some loop.
	for i, c := range cs {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("connection %d: echo %v %v", i, b, err)
		}
	}
	e := r.impl.(*spliceEngine)
	var per []int32
	for _, l := range e.loops {
		per = append(per, l.load.Load())
	}
	t.Logf("%d connections over %d loops: %v", conns, loops, per)
	for _, n := range per {
		if n < conns/loops-balanceSlack-1 || n > conns/loops+balanceSlack+1 {
			t.Fatalf("connections per loop %v, want each within %d of %d", per, balanceSlack+1, conns/loops)
		}
	}
	// And every one of them still relays bulk bytes exactly.
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var seed [32]byte
			seed[0] = byte(i)
			want := make([]byte, 256<<10)
			rand.NewChaCha8(seed).Read(want)
			go c.Write(want)
			got := make([]byte, len(want))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
				t.Errorf("connection %d: %d bytes echoed wrong: %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
}

// TestShutdownIdleWithDoneContext: with nothing live, Shutdown succeeds
// even when its context is already done (a signal-cancelled context), in
// both modes and every time.
func TestShutdownIdleWithDoneContext(t *testing.T) {
	backend := startEcho(t)
	for _, mode := range []Mode{ModeSplice, ModeCopy} {
		for i := range 20 {
			r := &Relay{Mode: mode, Loops: 1}
			startRelay(t, r, backend.Addr())
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := r.Shutdown(ctx); err != nil {
				t.Fatalf("%v, try %d: Shutdown with nothing live = %v, want nil", mode, i, err)
			}
		}
	}
}

// TestDeadLoopTakesNothing: a loop whose epoll_wait fails exits; the
// accepting loop hands it no more connections (they would be closed) and
// the relay reports itself not alive, so that the watchdog restarts it.
func TestDeadLoopTakesNothing(t *testing.T) {
	backend := startEcho(t)
	r := &Relay{Loops: 2}
	addr := startRelay(t, r, backend.Addr())
	if !r.Alive(time.Second) {
		t.Fatal("relay not alive before any loop failed")
	}
	e := r.impl.(*spliceEngine)
	dead := e.loops[1]
	// Put a file that is not an epoll instance where the loop's epoll fd
	// was: its next epoll_wait fails with EINVAL. The ping wakes it.
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	if err := unix.Dup3(null, dead.epfd, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	<-dead.post(cmdPing)
	deadline := time.Now().Add(3 * time.Second)
	for !dead.dead.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the loop did not exit after epoll_wait failed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r.Alive(time.Second) {
		t.Fatal("relay reports alive with a dead event loop")
	}
	// Connections are served by the live loop, even when it holds many.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range 8 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		msg := []byte("ping\n")
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("connection %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			t.Fatalf("connection %d not served with one loop dead: %v", i, err)
		}
	}
}
