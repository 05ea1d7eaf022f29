package tests

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// baseline is what an idle rsp holds: fds other than pooled pipes, and
// goroutines.
type baseline struct{ fds, goroutines int }

func baselineOf(s stats) baseline {
	return baseline{fds: s.fds - 2*s.idlePipes, goroutines: s.goroutines}
}

// settle waits until rsp has no live connection and holds no more fds
// and goroutines than at base; pooled (idle, empty) pipes are allowed.
func settle(t *testing.T, p *proc, base baseline) {
	t.Helper()
	var last stats
	ok := eventually(3*time.Second, func() bool {
		last = p.stats()
		return last.active == 0 && last.pipes == last.idlePipes && baselineOf(last) == base
	})
	if !ok {
		t.Fatalf("rsp did not return to baseline %+v: now %+v", base, last)
	}
}

// TestClientReset: a client that resets mid-transfer is seen as closed by
// the backend within a second, and rsp keeps no fd or goroutine of it.
func TestClientReset(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			ln := listen(t)
			closed := make(chan time.Time, 1)
			started := make(chan struct{}, 1)
			serveEach(ln, func(c *net.TCPConn) {
				defer c.Close()
				buf := make([]byte, 64<<10)
				first := true
				for {
					if _, err := c.Read(buf); err != nil {
						closed <- time.Now()
						return
					}
					if first {
						started <- struct{}{}
						first = false
					}
				}
			})
			p := startProxy(t, mode, ln.Addr())
			base := baselineOf(p.stats())
			c := dial(t, p.addr)
			go send(c, 9, 1<<40) // streams until the socket is closed
			select {
			case <-started:
			case <-time.After(5 * time.Second):
				t.Fatal("no bytes reached the backend")
			}
			time.Sleep(100 * time.Millisecond)
			c.SetLinger(0)
			c.Close()
			reset := time.Now()
			select {
			case at := <-closed:
				if d := at.Sub(reset); d > time.Second {
					t.Fatalf("backend saw the close after %v, want under 1s", d)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("backend never saw the client's reset")
			}
			settle(t, p, base)
		})
	}
}

// TestBackendDies: a backend that resets mid-stream is seen as closed by
// the client within a second, and rsp keeps nothing of the connection.
func TestBackendDies(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			ln := listen(t)
			killed := make(chan time.Time, 1)
			serveEach(ln, func(c *net.TCPConn) {
				send(c, 5, 2<<20)
				c.SetLinger(0)
				c.Close()
				killed <- time.Now()
			})
			p := startProxy(t, mode, ln.Addr())
			base := baselineOf(p.stats())
			c := dial(t, p.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// Read slowly at first so bytes are in flight when the
			// backend dies, then drain.
			time.Sleep(200 * time.Millisecond)
			_, err := io.Copy(io.Discard, c)
			ended := time.Now()
			var at time.Time
			select {
			case at = <-killed:
			case <-time.After(5 * time.Second):
				t.Fatal("backend handler never ran")
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("client never saw the backend's death: %v", err)
			}
			if d := ended.Sub(at); d > time.Second {
				t.Fatalf("client saw the close %v after the backend died, want under 1s", d)
			}
			settle(t, p, base)
		})
	}
}

// TestBackendDown: with nothing listening at the backend, each client is
// closed at once, the failure is logged with both addresses, and rsp
// goes on serving.
func TestBackendDown(t *testing.T) {
	ln := listen(t)
	dead := ln.Addr().String()
	ln.Close()
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startRsp(t, "-listen", "127.0.0.1:0", "-backend", dead, "-relay", mode)
			base := baselineOf(p.stats())
			for range 20 {
				c := dialOrReset(t, p.addr)
				if c == nil {
					continue // reset during the handshake
				}
				c.SetDeadline(time.Now().Add(2 * time.Second))
				n, err := c.Read(make([]byte, 16))
				c.Close()
				if n != 0 || (err != io.EOF && !isReset(err)) {
					t.Fatalf("read from a client whose backend is down = %d, %v; want a prompt close", n, err)
				}
			}
			// The connection log writes in batches, within 50ms.
			logged := func() bool {
				log := p.stderr.String()
				return strings.Contains(log, "cause=connect_failed") && strings.Contains(log, "server_addr="+dead) &&
					strings.Contains(log, "client=127.0.0.1:") && strings.Contains(log, "connection refused")
			}
			if !eventually(2*time.Second, logged) {
				t.Fatalf("connect failure not logged with client, backend and reason:\n%s", p.stderr.String())
			}
			settle(t, p, base)
		})
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// blackHole returns a TCP address whose accept queue is full, so that new
// connects to it hang: a listen backlog of 0 with the queue filled.
func blackHole(t *testing.T) string {
	t.Helper()
	fd, addr := fullQueue(t)
	t.Cleanup(func() { syscall.Close(fd) })
	return addr
}

// fullQueue returns a TCP socket listening on 127.0.0.1 with its accept
// queue full (a backlog of 0, filled by connections held to the test's
// end), so that new connects to it wait, their SYNs dropped; and its
// address. The caller owns the socket.
func fullQueue(t *testing.T) (int, string) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	for range 4 {
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		if c, err := d.Dial("tcp", addr); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return fd, addr
}

// TestConnectTimeout: a backend that never answers the connect makes rsp
// close the client after -connect-timeout and log why.
func TestConnectTimeout(t *testing.T) {
	hole := blackHole(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startRsp(t, "-listen", "127.0.0.1:0", "-backend", hole, "-relay", mode, "-connect-timeout", "400ms")
			base := baselineOf(p.stats())
			c := dial(t, p.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			_, err := c.Read(make([]byte, 1))
			waited := time.Since(start)
			if err != io.EOF && !isReset(err) {
				t.Fatalf("read = %v, want the client closed after the connect timeout", err)
			}
			if waited < 300*time.Millisecond || waited > 3*time.Second {
				t.Fatalf("client closed after %v, want about 400ms", waited)
			}
			if !eventually(2*time.Second, func() bool { return strings.Contains(p.stderr.String(), "timeout") }) {
				t.Fatalf("connect timeout not logged:\n%s", p.stderr.String())
			}
			settle(t, p, base)
		})
	}
}

// TestIdleTimeout: a connection with no traffic is closed after
// -idle-timeout, while one that keeps talking stays open.
func TestIdleTimeout(t *testing.T) {
	backend := echoBackend(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, backend.Addr(), "-idle-timeout", "1s")
			base := baselineOf(p.stats())
			idle := dial(t, p.addr)
			defer idle.Close()
			busy := dial(t, p.addr)
			defer busy.Close()
			start := time.Now()
			idleClosed := make(chan time.Duration, 1)
			go func() {
				idle.SetReadDeadline(time.Now().Add(10 * time.Second))
				idle.Read(make([]byte, 1))
				idleClosed <- time.Since(start)
			}()
			// The busy connection echoes a byte every 200ms for 3s.
			buf := make([]byte, 1)
			for i := 0; time.Since(start) < 3*time.Second; i++ {
				busy.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := busy.Write([]byte{byte(i)}); err != nil {
					t.Fatalf("busy connection write after %v: %v", time.Since(start), err)
				}
				if _, err := io.ReadFull(busy, buf); err != nil || buf[0] != byte(i) {
					t.Fatalf("busy connection echo after %v: %v", time.Since(start), err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			select {
			case d := <-idleClosed:
				if d < 900*time.Millisecond || d > 2500*time.Millisecond {
					t.Fatalf("idle connection closed after %v, want 1s..2.5s", d)
				}
			default:
				t.Fatal("idle connection still open after 3s with -idle-timeout 1s")
			}
			busy.Close()
			settle(t, p, base)
		})
	}
}

// refusesNew checks that a connection to a draining rsp's address is
// refused or closed, never served.
func refusesNew(t *testing.T, addr string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Error("a new connection was served while draining")
	}
}

// TestDrain: on SIGTERM rsp stops accepting, lets a live transfer finish
// byte-exact, and exits 0; a connection still open at the drain timeout
// is closed.
func TestDrain(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			ln := listen(t)
			release := make(chan struct{})
			serveEach(ln, func(c *net.TCPConn) {
				defer c.Close()
				<-release // hold the reply until the test says so
				send(c, 6, 8<<20)
				c.CloseWrite()
			})
			p := startProxy(t, mode, ln.Addr(), "-drain-timeout", "20s")
			c := dial(t, p.addr)
			defer c.Close()
			if !eventually(3*time.Second, func() bool { return p.stats().active == 1 }) {
				t.Fatal("connection never became active")
			}
			p.signal(syscall.SIGTERM)
			if !eventually(3*time.Second, func() bool { return strings.Contains(p.stderr.String(), "stopping") }) {
				t.Fatal("no stopping log line after SIGTERM")
			}
			refusesNew(t, p.addr)
			close(release)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			got, err := receive(c)
			if err != nil {
				t.Fatalf("live transfer during drain: %v", err)
			}
			if want := expected(6, 8<<20); got != want {
				t.Fatalf("live transfer during drain got %v, want %v", got, want)
			}
			c.CloseWrite()
			if code := p.wait(10 * time.Second); code != 0 {
				t.Fatalf("exit code %d after drain, want 0", code)
			}
		})
		t.Run(mode+"/timeout", func(t *testing.T) {
			ln := listen(t)
			serveEach(ln, func(c *net.TCPConn) { io.Copy(io.Discard, c); c.Close() })
			p := startProxy(t, mode, ln.Addr(), "-drain-timeout", "500ms")
			c := dial(t, p.addr)
			defer c.Close()
			if !eventually(3*time.Second, func() bool { return p.stats().active == 1 }) {
				t.Fatal("connection never became active")
			}
			start := time.Now()
			p.signal(syscall.SIGTERM)
			if code := p.wait(5 * time.Second); code != 0 {
				t.Fatalf("exit code %d, want 0", code)
			}
			if d := time.Since(start); d < 400*time.Millisecond {
				t.Fatalf("exited after %v, before the 500ms drain timeout", d)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF && !isReset(err) {
				t.Fatalf("connection left open after the drain timeout: %v", err)
			}
		})
	}
}
