package splice

import "golang.org/x/sys/unix"

// peerShutWrite reports whether the peer of socket fd has sent FIN: the
// bytes a peek sees then are all that will ever come.
func peerShutWrite(fd uintptr) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(p, 0)
	return err == nil && n == 1 && p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
}
