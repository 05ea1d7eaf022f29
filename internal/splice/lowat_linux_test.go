//go:build linux

package splice

import (
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestNotSentLowat: a peer that stops reading fills its receive buffer
// and then rsp's send queue towards it, a backend (up) or a client
// (down). With NotSentLowat (the default) the bytes not yet sent there
// stay near the limit, one more segment at most; without it they fill
// the send buffer, megabytes on loopback.
func TestNotSentLowat(t *testing.T) {
	for _, up := range []bool{true, false} {
		testNotSentLowat(t, up)
	}
}

func testNotSentLowat(t *testing.T, up bool) {
	dir := "down"
	if up {
		dir = "up"
	}
	for _, tc := range []struct {
		name  string
		lowat int
		check func(notsent uint32) bool
		want  string
	}{
		{"default", 0, func(n uint32) bool { return n <= DefaultNotSentLowat+64<<10 }, "at most 192 KiB (128 KiB and a segment)"},
		{"64KiB", 64 << 10, func(n uint32) bool { return n <= 64<<10+64<<10 }, "at most 128 KiB (64 KiB and a segment)"},
		{"kernel", -1, func(n uint32) bool { return n > 1<<20 }, "more than 1 MiB (no limit)"},
	} {
		t.Run(dir+"/"+tc.name, func(t *testing.T) {
			if tc.lowat < 0 && !kernelUnlimited() {
				t.Skip("net.ipv4.tcp_notsent_lowat limits this host's sockets: keeping the kernel's setting is no different")
			}
			backend, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer backend.Close()
			held := make(chan net.Conn, 1)
			go func() {
				c, err := backend.Accept()
				if err == nil {
					held <- c // never read: its receive buffer fills
				}
			}()
			addr := startRelay(t, &Relay{NotSentLowat: tc.lowat}, backend.Addr())
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var s net.Conn
			select {
			case s = <-held:
				defer s.Close()
			case <-time.After(5 * time.Second):
				t.Fatal("rsp did not connect to the backend within 5 s")
			}
			// The writer writes until every buffer on the way is full;
			// the reader never reads.
			writer, peer := c, backend.Addr().(*net.TCPAddr)
			if !up {
				writer, peer = s, c.LocalAddr().(*net.TCPAddr)
			}
			const total = 64 << 20 // blocks long before it is all written
			var wrote atomic.Int64
			go func() {
				buf := make([]byte, 64<<10)
				for range total / len(buf) {
					n, err := writer.Write(buf)
					wrote.Add(int64(n))
					if err != nil {
						return
					}
				}
				writer.(*net.TCPConn).CloseWrite()
			}()
			// Wait until the writes stop moving.
			last, still := int64(-1), 0
			for i := 0; i < 200 && still < 5; i++ {
				time.Sleep(50 * time.Millisecond)
				if n := wrote.Load(); n == last {
					still++
				} else {
					last, still = n, 0
				}
			}
			if still < 5 {
				t.Fatalf("the writes did not stop within 10 s (%d bytes written)", last)
			}
			fd := socketTo(t, peer)
			info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil {
				t.Fatal(err)
			}
			lowat, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
			t.Logf("%d bytes written; rsp's socket to the reader: %d bytes not sent, lowat %d", last, info.Notsent_bytes, lowat)
			if !tc.check(info.Notsent_bytes) {
				t.Errorf("rsp's send queue to a peer that stopped reading holds %d bytes not sent (TCP_NOTSENT_LOWAT %d); want %s",
					info.Notsent_bytes, lowat, tc.want)
			}
			// The reader reads again: the whole stream must come, and end.
			reader := s
			if !up {
				reader = c
			}
			reader.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, err := io.Copy(io.Discard, reader)
			if err != nil || n != total {
				t.Fatalf("once the reader read again: %d of %d bytes, then %v; want all of them and EOF", n, total, err)
			}
		})
	}
}

// socketTo returns this process's socket fd connected to addr: rsp's
// socket towards the test's backend or client.
func socketTo(t *testing.T, addr *net.TCPAddr) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := unix.Getpeername(fd)
		if in4, ok := sa.(*unix.SockaddrInet4); err == nil && ok && in4.Port == addr.Port && net.IP(in4.Addr[:]).Equal(addr.IP) {
			return fd
		}
	}
	t.Fatalf("no socket of rsp's connected to %v", addr)
	return -1
}

// kernelUnlimited reports whether the host leaves TCP_NOTSENT_LOWAT
// unlimited by default (net.ipv4.tcp_notsent_lowat at its maximum).
func kernelUnlimited() bool {
	raw, err := os.ReadFile("/proc/sys/net/ipv4/tcp_notsent_lowat")
	if err != nil {
		return false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	return err == nil && v >= 1<<31-1
}

// TestFillForNotSent: under a pipe budget, a read for a TCP destination
// with TCP_NOTSENT_LOWAT takes no more than the destination can queue
// unsent, the least read once that is full, where the room in its send
// buffer alone would ask for more.
func TestFillForNotSent(t *testing.T) {
	a, b := tcpPair(t)
	_ = b // never reads
	raw, err := a.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const lowat = 128 << 10
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, lowat); err != nil {
		t.Fatal(err)
	}
	// Fill a's queue until the kernel takes no more.
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for range 1024 {
		if _, err := unix.Write(fd, buf); err == unix.EAGAIN {
			break
		}
	}
	nsd, err := unix.IoctlGetInt(fd, unix.SIOCOUTQNSD)
	if err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20
	without := fillFor(&pipe{}, fd, size, 0)
	with := fillFor(&pipe{}, fd, size, lowat)
	t.Logf("%d bytes unsent; fill without the limit %d, with it %d", nsd, without, with)
	if nsd < lowat/2 {
		t.Fatalf("the send queue took only %d unsent bytes before EAGAIN; want at least %d", nsd, lowat/2)
	}
	if want := max(minFill, (lowat-nsd)&^(pageSize-1)); with != want {
		t.Errorf("fill for a destination holding %d unsent bytes of %d: %d, want %d", nsd, lowat, with, want)
	}
	if without <= with {
		t.Errorf("the send buffer's room alone gave %d, no more than the limit's %d: the test shows nothing", without, with)
	}
}
