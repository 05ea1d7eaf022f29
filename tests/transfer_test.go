package tests

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// relayModes are the relay engines every transfer test runs against.
var relayModes = []string{"splice", "copy"}

// startProxy runs rsp on a free loopback port in front of backend.
func startProxy(t testing.TB, mode string, backend net.Addr, extra ...string) *proc {
	t.Helper()
	args := append([]string{"-listen", "127.0.0.1:0", "-backend", backend.String(), "-relay", mode}, extra...)
	return startRsp(t, args...)
}

// echoThrough sends n bytes of the seeded stream through addr (HOST:PORT,
// or unix:/path) to an echo backend, half-closes, reads the echo to EOF
// and compares both ends.
func echoThrough(addr string, seed uint64, n int64) error {
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", path
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60*time.Second + time.Duration(n/(50<<20))*time.Second))
	type result struct {
		d   digest
		err error
	}
	got := make(chan result, 1)
	go func() {
		d, err := receive(c)
		got <- result{d, err}
	}()
	sent, err := send(c, seed, n)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	r := <-got
	if r.err != nil {
		return fmt.Errorf("receive after %d bytes: %w", r.d.n, r.err)
	}
	if r.d != sent {
		return fmt.Errorf("echo differs: sent %v, got back %v", sent, r.d)
	}
	return nil
}

func TestEchoSizes(t *testing.T) {
	backend := echoBackend(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, backend.Addr())
			for _, n := range []int64{0, 1, 1 << 10, 1 << 20, 64 << 20, 1 << 30} {
				if err := echoThrough(p.addr, uint64(n)+7, n); err != nil {
					t.Fatalf("%d bytes: %v", n, err)
				}
			}
		})
	}
}

func TestEchoConcurrent(t *testing.T) {
	backend := echoBackend(t)
	const conns = 500
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, backend.Addr())
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for i := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Sizes spread from 0 to ~1 MiB.
					n := int64(i) * 2113
					if err := echoThrough(p.addr, uint64(i), n); err != nil {
						errs <- fmt.Errorf("conn %d (%d bytes): %w", i, n, err)
					}
				}()
			}
			wg.Wait()
			close(errs)
			failed := 0
			for err := range errs {
				failed++
				if failed <= 5 {
					t.Error(err)
				}
			}
			if failed > 0 {
				t.Fatalf("%d of %d concurrent transfers failed", failed, conns)
			}
			if !eventually(5*time.Second, func() bool { return p.stats().active == 0 }) {
				t.Fatalf("connections still active after all clients finished: %+v", p.stats())
			}
		})
	}
}

// TestClientHalfClose: the client sends and shuts down its write side;
// the backend must see EOF (else it would wait forever) and can still
// send its whole reply afterwards.
func TestClientHalfClose(t *testing.T) {
	const up, down = 4 << 20, 3 << 20
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			ln := listen(t)
			gotUp := make(chan digest, 1)
			serveEach(ln, func(c *net.TCPConn) {
				defer c.Close()
				d, err := receive(c) // returns only on the client's FIN
				if err != nil {
					return
				}
				gotUp <- d
				send(c, 2, down)
				c.CloseWrite()
			})
			p := startProxy(t, mode, ln.Addr())
			c := dial(t, p.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			sent, err := send(c, 1, up)
			if err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			reply, err := receive(c)
			if err != nil {
				t.Fatalf("reading reply after half-close: %v", err)
			}
			select {
			case d := <-gotUp:
				if d != sent {
					t.Fatalf("backend got %v, client sent %v", d, sent)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("backend never saw the client's EOF")
			}
			if want := expected(2, down); reply != want {
				t.Fatalf("client got %v after its half-close, want %v", reply, want)
			}
		})
	}
}

// TestBackendHalfClose: the backend sends and shuts down its write side
// first; the client sees EOF, then goes on sending, and the backend
// receives all of it.
func TestBackendHalfClose(t *testing.T) {
	const up, down = 3 << 20, 4 << 20
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			ln := listen(t)
			gotUp := make(chan digest, 1)
			serveEach(ln, func(c *net.TCPConn) {
				defer c.Close()
				send(c, 3, down)
				c.CloseWrite()
				d, err := receive(c)
				if err == nil {
					gotUp <- d
				}
			})
			p := startProxy(t, mode, ln.Addr())
			c := dial(t, p.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			got, err := receive(c) // returns only on the backend's FIN
			if err != nil {
				t.Fatalf("reading until backend EOF: %v", err)
			}
			if want := expected(3, down); got != want {
				t.Fatalf("client got %v, want %v", got, want)
			}
			sent, err := send(c, 4, up)
			if err != nil {
				t.Fatalf("sending after backend half-close: %v", err)
			}
			c.CloseWrite()
			select {
			case d := <-gotUp:
				if d != sent {
					t.Fatalf("backend got %v after its half-close, client sent %v", d, sent)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("backend never got the client's bytes and EOF")
			}
			// rsp closes the connection once both directions ended.
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("after both directions ended, read = %v, want EOF", err)
			}
		})
	}
}

// TestEchoHeavy: 64 concurrent 16 MiB echoes with half-close. Under this
// load a backend's FIN often arrives while rsp still holds bytes for its
// client: they must all arrive, not be cut off by a reset.
func TestEchoHeavy(t *testing.T) {
	backend := echoBackend(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, backend.Addr())
			// Two rounds: the race this guards against shows in about
			// two runs of three.
			for round := range 2 {
				errs := make(chan error, 64)
				for i := range 64 {
					go func() { errs <- echoThrough(p.addr, uint64(1000+64*round+i), 16<<20) }()
				}
				failed := 0
				for range 64 {
					if err := <-errs; err != nil {
						failed++
						t.Error(err)
					}
				}
				if failed > 0 {
					t.Fatalf("round %d: %d of 64 heavy echoes failed", round, failed)
				}
			}
		})
	}
}
