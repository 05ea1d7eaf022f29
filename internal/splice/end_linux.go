//go:build linux

package splice

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

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
	clean := reason == nil && (!reset || c.up.done && c.down.done)
	reset = reset && !(c.up.done && c.down.done)
	for _, fd := range [2]int{c.client.fd, c.backend.fd} {
		switch {
		case fd < 0:
		case reset:
			setLinger0(fd)
		case l.j != nil:
			clearLinger(fd) // kept at 0 while journaled (record)
		}
	}
	// Out of the journal once its sockets close as they should: a crash
	// before would resume it, as it was.
	l.forget(c)
	l.dropPipe(&c.up)
	l.dropPipe(&c.down)
	for _, fd := range [2]int{c.client.fd, c.backend.fd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	t := l.releaseConn(c)
	l.ended(c, t, reason, endCause(reason, &c.dialing, clean, c.clientFirst, l.e.r.drain.Load()))
}

// releaseConn gives back what c holds of the relay's accounting — its server,
// its frontend and per-source counts, its connection slot — and returns
// the server it had (nil if none).
func (l *loop) releaseConn(c *conn) Target {
	t := c.target
	if t != nil {
		t.Release()
		c.target = nil
	}
	if c.limited {
		c.rt.Limit.release()
		c.limited = false
	}
	c.releaseSource()
	l.e.r.connDone(1)
	return t
}

// leave takes c out of its frontend's live count and adds its bytes to
// its frontend's totals, and to its server's if toServer.
func (c *conn) leave(toServer bool) {
	c.fe.Active--
	c.fe.BytesIn += c.up.sent
	c.fe.BytesOut += c.down.sent
	if toServer && c.srv != nil {
		c.srv.BytesIn += c.up.sent
		c.srv.BytesOut += c.down.sent
	}
}

// ended counts c's end by cause and its bytes, and reports it. t is the
// server it was relayed to, or nil if none was connected.
func (l *loop) ended(c *conn, t Target, reason error, cause Cause) {
	c.leave(t != nil)
	c.fe.Ended[cause]++
	r := l.e.r
	if r.OnEnd == nil && cause.Clean() {
		return // nothing to log
	}
	ci := &l.info
	l.describe(c, t, ci)
	ci.Cause = cause
	ci.Duration = time.Duration(l.now - c.born)
	ci.Err = nil
	if !cause.Clean() {
		ci.Err = reason
		if reason == nil {
			ci.Err = c.lastErr
		}
	}
	r.report(ci)
}

// describe fills ci with what is known of c now.
func (l *loop) describe(c *conn, t Target, ci *ConnInfo) {
	*ci = ConnInfo{
		ID: uint64(l.index)<<32 | uint64(c.id), Frontend: c.rt.Name, Backend: c.backendName(), Client: c.peer,
		Start: l.e.start.Add(time.Duration(c.born)), Duration: time.Duration(l.now - c.born),
		BytesIn: c.up.sent, BytesOut: c.down.sent, Tries: c.tries, Relay: ModeSplice,
	}
	if t := lastTarget(t, c.tried); t != nil {
		ci.Server, ci.ServerAddr = t.Name(), t.Addr()
	}
	if c.connAt != 0 {
		ci.Connect = time.Duration(c.connAt - c.born)
	}
}

// handoff passes c to the copy engine because its sockets cannot splice.
// Only a connection with no byte in flight and no direction ended can be
// handed off; any other is reset.
func (l *loop) handoff(c *conn) {
	if c.up.n > 0 || c.down.n > 0 || c.up.eof || c.down.eof || c.up.oobHeld || c.down.oobHeld {
		l.finish(c, errors.New("socket cannot splice mid-stream"), true)
		return
	}
	// The copy relay keeps no journal; a crash resets the connection
	// (SO_LINGER 0 stays until it ends cleanly).
	l.forget(c)
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
		t := l.releaseConn(c)
		err := errors.Join(err1, err2)
		l.e.r.logs.warn(l.e.r.logger(), "handoff", "cannot hand connection to copy relay", "client", c.peer.String(), "err", err)
		l.ended(c, t, fmt.Errorf("hand-off to the copy relay: %w", err), CauseError)
		return
	}
	// The copy engine counts the connection from here on.
	c.leave(true)
	// The copy engine releases the target and counts the connection as
	// done when it ends.
	start := l.e.start.Add(time.Duration(c.born))
	go l.e.handoff.adopt(client, backend, c.target, &c.dialing, start, time.Duration(c.connAt-c.born), c.tries, l.j != nil)
}

// fdConn wraps fd in a net.Conn, taking ownership of fd.
func fdConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	return net.FileConn(f)
}
