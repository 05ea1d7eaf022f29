//go:build linux

package splice

import (
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// setKeepAlive applies ka to TCP socket fd: keepalive on with its idle
// time, interval and count, or off; and TCP_USER_TIMEOUT. Without full,
// fd is a new socket, which has the kernel's defaults: only what ka
// changes is set. With full, every option is set, back to the kernel's
// default where ka has none (a listener whose settings change). A
// setting the kernel refuses is skipped: keepalive is a safeguard, not a
// reason to refuse a connection.
func setKeepAlive(fd int, ka KeepAlive, full bool) {
	if ka.Idle <= 0 {
		if full {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
		}
	} else {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, seconds(ka.Idle))
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, seconds(ka.interval()))
	}
	if count := ka.Count; count > 0 || full {
		if count <= 0 {
			count = sysctlInt("/proc/sys/net/ipv4/tcp_keepalive_probes", 9)
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, count)
	}
	if ka.UserTimeout > 0 || full {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(min(ka.UserTimeout.Milliseconds(), 1<<31-1)))
	}
}

// sysctlInt reads an integer from a /proc/sys file, or returns def.
func sysctlInt(path string, def int) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return def
	}
	return n
}

// seconds rounds d up to whole seconds, at least 1, as the keepalive
// socket options count.
func seconds(d time.Duration) int {
	return int(min(max((d+time.Second-1)/time.Second, 1), 32767))
}

// setUserTimeout sets TCP_USER_TIMEOUT on c.
func setUserTimeout(c *net.TCPConn, d time.Duration) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(min(d.Milliseconds(), 1<<31-1)))
	})
}
