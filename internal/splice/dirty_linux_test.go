//go:build linux

package splice

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// TestDirtyPipeNeverReused: connection A fills its pipe towards a backend
// that never reads, then the backend resets. The pipe still holds A's
// bytes; were it pooled, the next connections on the same loop would
// deliver A's bytes to their backend before their own. Each later backend
// must receive exactly its own client's bytes.
func TestDirtyPipeNeverReused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	victim := make(chan *net.TCPConn, 1)
	received := make(chan [32]byte, 64)
	go func() {
		first := true
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if first { // A's backend: never reads
				first = false
				victim <- c.(*net.TCPConn)
				continue
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				io.Copy(h, c)
				var sum [32]byte
				copy(sum[:], h.Sum(nil))
				received <- sum
			}()
		}
	}()

	r := &Relay{Loops: 1}
	addr := startRelay(t, r, ln.Addr())
	a, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	go a.Write(bytes.Repeat([]byte("A"), 16<<20)) // blocks once everything is full
	backendA := <-victim
	// Wait until A's bytes sit in a pipe: one in use, and it stays in use
	// because the backend does not read.
	deadline := time.Now().Add(5 * time.Second)
	for s := r.Stats(); s.Pipes == s.IdlePipes; s = r.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("A's bytes never reached a pipe: %+v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let the pipe fill
	backendA.SetLinger(0)
	backendA.Close() // RST while the pipe holds A's bytes

	for i := range 20 {
		b, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 64<<10+i)
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		for j := range msg {
			msg[j] = byte(rng.Uint32())
		}
		if _, err := b.Write(msg); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		b.(*net.TCPConn).CloseWrite()
		select {
		case got := <-received:
			if got != sha256.Sum256(msg) {
				t.Fatalf("backend of connection %d received other bytes than its client sent: a dirty pipe was reused", i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("backend of connection %d received nothing", i)
		}
		b.Close()
	}
	// A's pipe was closed, not pooled: everything pooled is empty, and
	// nothing is in use once A is gone.
	deadline = time.Now().Add(2 * time.Second)
	s := r.Stats()
	for (s.Active != 0 || s.Pipes != s.IdlePipes) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		s = r.Stats()
	}
	if s.Pipes != s.IdlePipes {
		t.Errorf("pipes still in use after every connection ended: %+v", s)
	}
}
