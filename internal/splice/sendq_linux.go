//go:build linux

package splice

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

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
		q := 0
		if err := raw.Control(func(fd uintptr) { q, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || q == 0 {
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
