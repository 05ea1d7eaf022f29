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
		var q int
		var qerr error
		closed := false
		if err := raw.Control(func(fd uintptr) {
			q, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				closed = info.State == tcpClose // reset by its peer: nothing more will go
			}
		}); err != nil || qerr != nil || q == 0 || closed {
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
