//go:build linux

package splice

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSendQueueAfterReset: a TCP socket whose peer reset it while bytes
// of its waited, and whose error a read has already taken (so epoll no
// longer reports it), still says so: its send queue keeps counting what
// was never acknowledged, and only the closed state tells that nothing
// more will go. A flush that waited on the count alone waited its whole
// stall time (contract seed 296).
func TestSendQueueAfterReset(t *testing.T) {
	a, b := tcpPair(t)
	raw, err := a.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	look := func() (q int, closed bool) {
		var qerr error
		raw.Control(func(fd uintptr) { q, closed, qerr = sendQueue(int(fd)) })
		if qerr != nil {
			t.Fatal(qerr)
		}
		return q, closed
	}
	if q, closed := look(); q != 0 || closed {
		t.Fatalf("a fresh socket: queue %d, closed %v; want 0, false", q, closed)
	}
	// b reads nothing: a's bytes fill b's buffer and then wait in a's.
	a.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	for range 4096 {
		if _, err := a.Write(make([]byte, 64<<10)); err != nil {
			break
		}
	}
	q, closed := look()
	if q == 0 || closed {
		t.Fatalf("a socket with bytes waiting: queue %d, closed %v; want > 0, false", q, closed)
	}
	b.(*net.TCPConn).SetLinger(0)
	b.Close()
	// Take the reset's error with a read, as a splice would.
	var rerr error
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		raw.Control(func(fd uintptr) { _, _, rerr = unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_DONTWAIT) })
		if rerr != unix.EAGAIN {
			break
		}
	}
	if rerr != unix.ECONNRESET {
		t.Fatalf("read after the peer's reset: %v, want ECONNRESET", rerr)
	}
	raw.Control(func(fd uintptr) { rerr = soError(int(fd)) })
	if rerr != nil {
		t.Fatalf("the reset's error is still pending (%v): this test no longer covers a taken error", rerr)
	}
	if q, closed := look(); q == 0 || !closed {
		t.Fatalf("after the peer's reset: queue %d, closed %v; want the bytes never acknowledged and closed", q, closed)
	}
	// With its error taken, a read says EOF, as if a FIN had come: only
	// the state tells the reset (the copy relay's two directions).
	a.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after the taken reset: %d, %v; want 0, EOF (the kernel changed: resetClosed may be moot)", n, err)
	}
	if !resetClosed(a) {
		t.Fatalf("resetClosed = false for a socket its peer reset")
	}
}

// TestResetClosedAfterFIN: a socket that read its peer's FIN is not taken
// for reset, before or after its own shutdown's FIN is acknowledged
// (then it is closed, but the copy relay knows it shut it down).
func TestResetClosedAfterFIN(t *testing.T) {
	a, b := tcpPair(t)
	b.(*net.TCPConn).CloseWrite()
	a.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer's FIN: %d, %v; want 0, EOF", n, err)
	}
	if resetClosed(a) {
		t.Fatalf("resetClosed = true for a socket that read its peer's FIN")
	}
}

// TestResetClosedAfterAbort: a socket that the other direction's abort
// closed meanwhile counts as reset, so that no FIN follows it (the copy
// relay's EOF branch races with abort).
func TestResetClosedAfterAbort(t *testing.T) {
	a, _ := tcpPair(t)
	a.Close()
	if !resetClosed(a) {
		t.Fatalf("resetClosed = false for a socket rsp closed")
	}
}

// tcpPair returns both ends of a loopback TCP connection, closed at the
// test's end.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}
