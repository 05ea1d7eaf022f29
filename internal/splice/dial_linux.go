//go:build linux

package splice

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// dial picks a backend for c, one not tried yet, and starts connecting
// to it. Failures retry on another backend while retries remain.
func (l *loop) dial(c *conn) {
	t, err := c.pick(l.e.r)
	if err != nil {
		l.finish(c, nil, true)
		return
	}
	c.target = t
	c.connecting = true
	c.deadline = l.now + int64(c.rt.connectTimeout())
	c.attemptAt = l.now
	c.tries++
	prev := c.srv
	if prev != nil {
		prev.Retries++ // the server before failed, and this one is tried instead
	}
	c.srv = l.tally.server(t.Name())
	c.srv.Attempts++
	sa, family, err := sockaddrOf(t.Addr())
	if err != nil {
		l.connectFailed(c, err)
		return
	}
	bfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if outOfFDs(err) {
			// Out of fds: stop taking clients that could not be served;
			// the kernel's backlog holds them until fds free up. Not the
			// backend's fault: no retry, no strike against it.
			l.e.r.stats.failed.Add(1)
			c.srv.Attempts-- // not tried after all
			if prev != nil {
				prev.Retries--
			}
			t.Release()
			c.target = nil
			c.setCause(CauseError, fmt.Errorf("backend socket: %w", err))
			l.finish(c, nil, true)
			l.pauseAccept(fmt.Errorf("backend socket for client %s: %w", c.peer, err))
			return
		}
		l.connectFailed(c, fmt.Errorf("socket: %w", err))
		return
	}
	c.backend.fd = bfd
	c.backend.unix = family == unix.AF_UNIX
	if l.j != nil {
		setLinger0(bfd) // until recorded (record)
	}
	l.linkFD(c, bfd)
	if family != unix.AF_UNIX {
		unix.SetsockoptInt(bfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		l.capSendQueue(bfd)
		if ka := c.rt.ServerKeepAlive; ka != (KeepAlive{}) {
			setKeepAlive(bfd, ka, false) // a new socket has the defaults
		}
		if c.rt.Source.IsValid() {
			if err := bindSource(bfd, family, c.rt.Source); err != nil {
				l.connectFailed(c, err)
				return
			}
		}
	}
	switch err := unix.Connect(bfd, sa); err {
	case nil, unix.EINPROGRESS:
	default:
		l.connectFailed(c, err)
		return
	}
	if err := l.register(c, bfd); err != nil {
		l.connectFailed(c, err)
	}
	// Completion (even immediate, on loopback) is reported by EPOLLOUT.
}

// sendPreamble writes the route's preamble to c's fresh backend socket.
// Its send queue is empty and the preamble small (a PROXY header, at most
// a few hundred bytes), so one write takes all of it or fails.
func sendPreamble(c *conn) error {
	var local netip.AddrPort
	if sa, err := unix.Getsockname(c.client.fd); err == nil {
		local = addrPortOfSockaddr(sa)
	}
	b := c.rt.Preamble(c.peer, local)
	n, err := unix.Write(c.backend.fd, b)
	switch {
	case err != nil:
		return c.peerErr(&c.backend, "write PROXY header to %s: %w", err)
	case n < len(b):
		return c.peerErr(&c.backend, "write PROXY header to %s: %w", fmt.Errorf("short write of %d of %d bytes", n, len(b)))
	}
	return nil
}

// addrPortOfSockaddr converts an IP socket address; others give zero.
func addrPortOfSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// bindSource binds socket fd of family to the local address src before
// its connect. IP_BIND_ADDRESS_NO_PORT defers the choice of port to the
// connect, which then picks one free for that destination: without it,
// bind reserves a port for every destination, and one source address
// carries at most the ephemeral range's ~28,000 connections in all.
func bindSource(fd, family int, src netip.Addr) error {
	var sa unix.Sockaddr
	switch {
	case family == unix.AF_INET && src.Is4():
		sa = &unix.SockaddrInet4{Addr: src.As4()}
	case family == unix.AF_INET6 && src.Is6():
		sa = &unix.SockaddrInet6{Addr: src.As16()}
	default:
		return fmt.Errorf("source %s: not the server's address family", src)
	}
	unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind source %s: %w", src, err)
	}
	return nil
}

// outOfFDs reports whether err says the process or system ran out of file
// descriptors or socket memory.
func outOfFDs(err error) bool {
	return err == unix.EMFILE || err == unix.ENFILE || err == unix.ENOBUFS || err == unix.ENOMEM
}

// connected completes a non-blocking connect that reported an error or
// hang-up: it asks the socket why.
func (l *loop) connected(c *conn) {
	if err := soError(c.backend.fd); err != nil {
		l.connectFailed(c, err)
		return
	}
	l.established(c)
}

// established starts relaying once the backend connect completed.
func (l *loop) established(c *conn) {
	c.connecting = false
	// The connect succeeded, so an error reported meanwhile was about it
	// (SO_ERROR said none is pending). A hang-up is kept: a Unix server
	// that accepted, wrote and closed before this event is gone.
	c.backend.err = false
	c.last = l.now
	c.connAt = l.now
	c.srv.observeConnect(time.Duration(l.now - c.attemptAt))
	c.target.Connected(nil)
	if c.rt.Preamble != nil {
		if err := sendPreamble(c); err != nil {
			l.finish(c, err, true)
			return
		}
	}
	if l.j != nil {
		l.record(c)
	}
	l.service(c)
}

// connectFailed handles a backend connect that failed or timed out: the
// connection retries on another backend while retries remain, else the
// client is reset.
func (l *loop) connectFailed(c *conn, err error) {
	t := c.target
	c.target = nil
	if fd := c.backend.fd; fd >= 0 {
		l.byFD[fd] = nil
		unix.Close(fd) // also leaves the epoll set
		c.backend = sock{fd: -1}
	}
	c.srv.Failures++
	if c.failed(l.e.r, t, err, false) {
		l.dial(c)
		return
	}
	l.finish(c, nil, true)
}

// sockaddrOf converts a backend address to a socket address and family.
// An IPv6 zone must be an interface index: the configuration resolves
// interface names once, when it is loaded, since looking one up here
// would ask the kernel over netlink for every connect.
func sockaddrOf(a net.Addr) (unix.Sockaddr, int, error) {
	switch a := a.(type) {
	case *net.TCPAddr:
		if ip4 := a.IP.To4(); ip4 != nil {
			sa := &unix.SockaddrInet4{Port: a.Port}
			copy(sa.Addr[:], ip4)
			return sa, unix.AF_INET, nil
		}
		if ip16 := a.IP.To16(); ip16 != nil {
			sa := &unix.SockaddrInet6{Port: a.Port}
			copy(sa.Addr[:], ip16)
			if a.Zone != "" {
				idx, err := strconv.ParseUint(a.Zone, 10, 32)
				if err != nil {
					return nil, 0, fmt.Errorf("backend %s: zone %q is not an interface index", a, a.Zone)
				}
				sa.ZoneId = uint32(idx)
			}
			return sa, unix.AF_INET6, nil
		}
		return nil, 0, fmt.Errorf("backend %s: no IP address", a)
	case *net.UnixAddr:
		return &unix.SockaddrUnix{Name: a.Name}, unix.AF_UNIX, nil
	}
	return nil, 0, fmt.Errorf("backend %s: unsupported address type %T", a, a)
}
