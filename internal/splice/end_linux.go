//go:build linux

package splice

import (
	"errors"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// finish ends c: it unlinks it, returns or closes its pipes, closes
// both sockets and releases its backend. With reset, sockets are closed
// with RST so that each peer sees a failure rather than a clean end of
// stream: every end that rsp forces, or that follows a failure, resets
// unless both directions have finished. A non-nil reason is logged.
func (l *loop) finish(c *conn, reason error, reset bool) {
	if c.closed {
		return
	}
	c.closed = true
	l.unlink(c)
	l.dropPipe(&c.up)
	l.dropPipe(&c.down)
	reset = reset && !(c.up.done && c.down.done)
	for _, fd := range [2]int{c.client.fd, c.backend.fd} {
		if fd < 0 {
			continue
		}
		if reset {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		unix.Close(fd)
	}
	t := c.target
	if t != nil {
		t.Release()
		c.target = nil
	}
	l.e.r.connDone(1)
	l.e.r.logEnd(&c.dialing, t, reason)
}

// handoff passes c to the copy engine because its sockets cannot splice.
// Only a connection with no byte in flight and no direction ended can be
// handed off; any other is reset.
func (l *loop) handoff(c *conn) {
	if c.up.n > 0 || c.down.n > 0 || c.up.eof || c.down.eof || c.up.oobHeld || c.down.oobHeld {
		l.finish(c, errors.New("socket cannot splice mid-stream"), true)
		return
	}
	l.dropPipe(&c.up)
	l.dropPipe(&c.down)
	// Take the sockets out of this loop's epoll set before their fds are
	// handed to the Go runtime's poller.
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.client.fd, nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.backend.fd, nil)
	c.closed = true
	l.unlink(c)
	client, err1 := fdConn(c.client.fd)
	backend, err2 := fdConn(c.backend.fd)
	if err1 != nil || err2 != nil {
		if client != nil {
			client.Close()
		}
		if backend != nil {
			backend.Close()
		}
		c.target.Release()
		l.e.r.connDone(1)
		l.e.r.logger().Warn("cannot hand connection to copy relay", "client", c.peer.String(), "err", errors.Join(err1, err2))
		return
	}
	// The copy engine releases the target and counts the connection as
	// done when it ends.
	go l.e.handoff.relay(client, backend, c.target, &c.dialing)
}

// fdConn wraps fd in a net.Conn, taking ownership of fd.
func fdConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	return net.FileConn(f)
}
