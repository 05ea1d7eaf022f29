//go:build linux

package splice

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpClose is TCP_CLOSE in tcp_info's state: a socket reset by its peer.
const tcpClose = 7

// waitFlushed waits until the bytes queued on c have been delivered
// (SIOCOUTQ: sent and acknowledged on TCP, read by the peer on a Unix
// socket), or until its reader has taken nothing for flushStall: the copy
// relay's way to reset a socket without throwing away what it still had
// to deliver.
func waitFlushed(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	last, stall := -1, time.Now().Add(flushStall)
	for {
		var (
			q      int
			closed bool
			qerr   error
		)
		if err := raw.Control(func(fd uintptr) { q, closed, qerr = sendQueue(int(fd)) }); err != nil || qerr != nil || q == 0 || closed {
			return
		}
		if last < 0 || q < last {
			last, stall = q, time.Now().Add(flushStall)
		} else if time.Now().After(stall) {
			return
		}
		time.Sleep(flushPoll)
	}
}

// resetClosed reports whether c is a TCP socket in the CLOSE state. A
// socket that read its peer's FIN stays in CLOSE_WAIT until it is shut
// down itself, so one not shut down and closed was reset, even when its
// error was taken by another call and a read says EOF. A TCP socket
// that rsp has closed meanwhile (an abort) counts as reset too.
func resetClosed(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	if err := raw.Control(func(fd uintptr) { closed = tcpClosed(int(fd)) }); err != nil {
		return true
	}
	return closed
}

// tcpClosed reports whether fd is a TCP socket in the CLOSE state.
func tcpClosed(fd int) bool {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	return err == nil && info.State == tcpClose
}

// sendQueue returns what fd's send queue still holds (SIOCOUTQ: on TCP,
// bytes not yet acknowledged, and a FIN not yet acknowledged counts one)
// and whether fd is a TCP socket already closed, by its peer's reset:
// then nothing more will go, whatever the queue says. The reset's error
// may have been taken by a read before epoll could report it.
func sendQueue(fd int) (q int, closed bool, err error) {
	q, err = unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil || q == 0 {
		return q, false, err
	}
	return q, tcpClosed(fd), nil
}
