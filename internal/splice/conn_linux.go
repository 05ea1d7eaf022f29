//go:build linux

package splice

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// spliceFlags: SPLICE_F_NONBLOCK makes the pipe side non-blocking
	// (the sockets are O_NONBLOCK already); SPLICE_F_MOVE is a hint the
	// kernel may use to move pages instead of copying them.
	spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	// budget is how many bytes one direction may move per service call
	// before the connection yields to others in the same loop: at about
	// 1 GB/s per loop, 4 MiB bounds the head-of-line delay a bulk transfer
	// adds to its loop's other connections to about 4 ms. Measured with
	// rsp bench (8 upload streams), proxy CPU per GiB was 0.29-0.32 s with
	// a 1 MiB budget (a requeue per pipe-full), 0.21-0.32 s (median 0.24)
	// with 4 MiB and 0.24 s with 8 MiB.
	budget = 4 << 20
	// scratchSize is the loop's buffer for the no-pipe fallback.
	scratchSize = 64 << 10
)

// pageSize is the size of one pipe slot's page: a pipe of size bytes has
// size/pageSize slots.
var pageSize = os.Getpagesize()

// sock is one socket of a connection and what epoll last said of it.
type sock struct {
	fd       int
	readable bool // no EAGAIN seen on read since the last EPOLLIN
	writable bool // no EAGAIN seen on write since the last EPOLLOUT
	rdhup    bool // EPOLLRDHUP seen: the peer sent FIN
	err      bool // EPOLLERR seen: the socket has a pending error
	hup      bool // EPOLLHUP seen: shut down both ways (by the peer, or by us and the peer)
}

// half is one direction of a connection: bytes read from src, written to
// dst through p.
type half struct {
	p    *pipe // nil while no bytes are in flight
	n    int   // bytes in p
	eof  bool  // src reached EOF
	done bool  // EOF delivered: dst was shut down for writing
}

// conn is one relayed connection. An idle conn holds no pipe: this struct
// and two socket fds are its whole cost.
type conn struct {
	id         uint32
	connecting bool
	closed     bool
	queued     bool // in loop.ready
	client     sock
	backend    sock
	up         half  // client → backend
	down       half  // backend → client
	last       int64 // loop clock at the last byte moved
	deadline   int64 // connect deadline while connecting
	halfAt     int64 // loop clock when the first direction ended; 0 before
	peer       netip.AddrPort
	rt         *Route   // the frontend's route when accepted
	target     Target   // the backend picked; nil before and after
	tried      []Target // targets whose connect failed; nil if none did
	prev, next *conn
}

// open starts relaying a freshly accepted client socket: it picks a
// backend and begins a non-blocking connect to it.
func (l *loop) open(cfd int, peer netip.AddrPort, ln *listener) {
	rt := ln.fe.Route()
	l.nextID++
	c := &conn{id: l.nextID, client: sock{fd: cfd}, backend: sock{fd: -1}, peer: peer, rt: rt, last: l.now}
	// Small writes must leave at once: the proxy must not add Nagle delay
	// to request/response traffic.
	if !ln.nodelay {
		unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	l.link(c)
	l.useTimeouts(rt)
	if err := l.register(c, cfd); err != nil {
		l.finish(c, err, false)
		return
	}
	l.dial(c)
}

// dial picks a backend for c, one not tried yet, and starts connecting
// to it. Failures retry on another backend while retries remain.
func (l *loop) dial(c *conn) {
	t, err := c.rt.Picker.Pick(c.peer, c.tried)
	if err != nil {
		l.e.r.stats.failed.Add(1)
		l.e.r.logger().Warn("no backend for client; closing it", "frontend", c.rt.Name,
			"client", c.peer.String(), "err", err)
		l.finish(c, nil, false)
		return
	}
	c.target = t
	c.connecting = true
	c.deadline = l.now + int64(c.rt.connectTimeout())
	sa, family, err := sockaddrOf(t.Addr())
	if err != nil {
		l.connectFailed(c, err)
		return
	}
	bfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if err == unix.EMFILE || err == unix.ENFILE || err == unix.ENOBUFS || err == unix.ENOMEM {
			// Out of fds: stop taking clients that could not be served;
			// the kernel's backlog holds them until fds free up. Not the
			// backend's fault: no retry, no strike against it.
			l.e.r.stats.failed.Add(1)
			t.Release()
			c.target = nil
			l.finish(c, nil, false)
			l.pauseAccept(fmt.Errorf("backend socket for client %s: %w", c.peer, err))
			return
		}
		l.connectFailed(c, fmt.Errorf("socket: %w", err))
		return
	}
	c.backend.fd = bfd
	l.linkFD(c, bfd)
	if family != unix.AF_UNIX {
		unix.SetsockoptInt(bfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
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

// link adds c to the live list and its client socket to the fd table.
func (l *loop) link(c *conn) {
	c.prev, c.next = l.live.prev, &l.live
	l.live.prev.next = c
	l.live.prev = c
	l.nlive++
	l.load.Add(1)
	l.linkFD(c, c.client.fd)
}

// linkFD records that fd belongs to c.
func (l *loop) linkFD(c *conn, fd int) {
	for fd >= len(l.byFD) {
		l.byFD = append(l.byFD, nil)
	}
	l.byFD[fd] = c
}

// register adds fd to epoll, edge-triggered for input, output and
// errors: readiness is tracked in sock, so interest never changes and no
// further epoll_ctl is needed for backpressure.
func (l *loop) register(c *conn, fd int) error {
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
		Fd:     int32(fd),
		Pad:    int32(c.id),
	}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// onEvent records what epoll reported for one socket of c and moves bytes.
func (l *loop) onEvent(c *conn, fd int, ev uint32) {
	s := &c.client
	if fd == c.backend.fd {
		s = &c.backend
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.writable = true
	}
	if ev&unix.EPOLLRDHUP != 0 {
		s.rdhup = true
	}
	if ev&unix.EPOLLERR != 0 {
		s.err = true
	}
	if ev&unix.EPOLLHUP != 0 {
		s.hup = true
	}
	if c.connecting {
		switch {
		case s == &c.backend && ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0:
			l.connected(c)
		case s == &c.backend && ev&unix.EPOLLOUT != 0:
			// Writable without error: the connect succeeded, no need
			// to ask SO_ERROR.
			l.established(c)
		case s == &c.client && (s.err || s.hup):
			l.finish(c, errors.New("client closed while backend was connecting"), false)
		}
		return
	}
	l.service(c)
}

// connected completes a non-blocking connect that reported an error or
// hang-up: it asks the socket why.
func (l *loop) connected(c *conn) {
	errno, err := unix.GetsockoptInt(c.backend.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && errno != 0 {
		err = syscall.Errno(errno)
	}
	if err != nil {
		l.connectFailed(c, err)
		return
	}
	l.established(c)
}

// established starts relaying once the backend connect completed.
func (l *loop) established(c *conn) {
	c.connecting = false
	c.backend.err, c.backend.hup = false, false
	c.last = l.now
	c.target.Connected(nil)
	l.service(c)
}

// connectFailed handles a backend connect that failed or timed out: the
// backend is told, and the connection retries on another backend while
// retries remain, else the client is closed with the reason logged.
func (l *loop) connectFailed(c *conn, err error) {
	t := c.target
	t.Connected(err)
	t.Release()
	c.target = nil
	if fd := c.backend.fd; fd >= 0 {
		l.byFD[fd] = nil
		unix.Close(fd) // also leaves the epoll set
		c.backend = sock{fd: -1}
	}
	c.tried = append(c.tried, t)
	if len(c.tried) <= c.rt.Retries {
		l.e.r.logger().Debug("backend connect failed; retrying on another server", "frontend", c.rt.Name,
			"client", c.peer.String(), "server", t.Name(), "backend", t.Addr().String(), "err", err)
		l.dial(c)
		return
	}
	l.e.r.stats.failed.Add(1)
	l.e.r.logger().Warn("backend connect failed; closing client", "frontend", c.rt.Name,
		"client", c.peer.String(), "server", t.Name(), "backend", t.Addr().String(), "err", err, "tries", len(c.tried))
	l.finish(c, nil, false)
}

// service moves bytes in both directions until each would block, then
// ends the connection if both directions are done or a socket failed.
func (l *loop) service(c *conn) {
	more1, err := l.pump(c, &c.up, &c.client, &c.backend)
	if err == nil {
		var more2 bool
		more2, err = l.pump(c, &c.down, &c.backend, &c.client)
		more1 = more1 || more2
	}
	if err != nil {
		if errors.Is(err, errNoSplice) {
			l.handoff(c)
			return
		}
		l.finish(c, err, true)
		return
	}
	if c.up.done && c.down.done {
		l.finish(c, nil, false)
		return
	}
	// A socket from which nothing more will be read, and which can take no
	// more bytes either, ends the connection now rather than when the
	// other side next sends.
	if broken(&c.client, &c.up, &c.down) || broken(&c.backend, &c.down, &c.up) {
		l.finish(c, sockErr(c), true)
		return
	}
	if more1 && !c.queued {
		c.queued = true
		l.ready = append(l.ready, c)
	}
}

// broken reports whether s, whose bytes flow out through in and which
// receives the bytes of out, is finished with as a peer: it has an error
// (a reset: the peer aborted, so what it sent need not be delivered, and
// waiting to deliver it could wait forever on a destination that does not
// read), or its inbound stream has ended and it hung up although we never
// shut down writing to it. A hang-up after our own shutdown is the normal
// end of a half-closed socket: the bytes still queued for the other socket
// must flow on.
func broken(s *sock, in, out *half) bool {
	return s.err || (in.eof && s.hup && !out.done)
}

// sockErr names the pending error of whichever socket of c failed.
func sockErr(c *conn) error {
	for _, s := range [2]*sock{&c.client, &c.backend} {
		if !s.err && !s.hup {
			continue
		}
		if errno, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && errno != 0 {
			return syscall.Errno(errno)
		}
	}
	return unix.ECONNRESET
}

// errNoSplice reports that the kernel cannot splice this socket type.
var errNoSplice = errors.New("socket type cannot splice")

// pump moves bytes from src to dst through h's pipe until src has nothing
// more, dst can take nothing more, or the budget is spent (then more is
// true). It fills the pipe only when it is empty and then empties it:
// with the pipe empty, EAGAIN from the source can only mean the source is
// drained, so src is marked not readable without losing an edge.
// Refilling the pipe while it still held bytes (pipelining) moved no more
// on one stream and cost 10-25% more CPU per GiB on eight, in softirqs: each
// extra read releases ACKs whose processing, on loopback, runs in the
// reader's context (README, design table).
func (l *loop) pump(c *conn, h *half, src, dst *sock) (more bool, err error) {
	if h.done {
		return false, nil
	}
	moved := 0
	for {
		progress := false
		if h.n == 0 && !h.eof && src.readable && moved < budget {
			if h.p == nil {
				p, perr := l.pool.get()
				if perr != nil {
					// No fd for a pipe: move this chunk through the loop's
					// buffer instead of stalling (a stalled direction could
					// hold the pipes its peer direction waits for).
					n, err := l.copyChunk(src, dst, h)
					if err != nil {
						return false, err
					}
					if n == 0 && !h.eof {
						return false, nil
					}
					moved += n
					c.last = l.now
					continue
				}
				h.p = p
			}
			var n int64
			if l.noSpliceFor {
				err = unix.EINVAL
			} else {
				n, err = unix.Splice(src.fd, nil, h.p.w, nil, h.p.size, spliceFlags)
			}
			switch {
			case err == nil && n == 0:
				h.eof = true
				progress = true
			case err == nil:
				if int(n) < h.p.size/pageSize && !src.rdhup && !src.err && !src.hup {
					// A short read into an empty pipe that cannot have run
					// out of slots (each holds at least a byte) took
					// everything the socket had. Bytes arriving later raise
					// a new edge, so the EAGAIN probe would be a wasted
					// system call per message. Not after a FIN: the read
					// that returns 0 must still happen.
					src.readable = false
				}
				h.n = int(n)
				c.last = l.now
				progress = true
			case err == unix.EAGAIN:
				src.readable = false
			case err == unix.EINTR:
				progress = true
			case err == unix.EINVAL:
				// This socket type has no splice support; nothing was
				// consumed, so the relay can move on to copying.
				return false, errNoSplice
			default:
				return false, fmt.Errorf("read: %w", err)
			}
		}
		if h.n > 0 && dst.writable {
			n, err := unix.Splice(h.p.r, nil, dst.fd, nil, h.n, spliceFlags)
			switch err {
			case nil:
				h.n -= int(n)
				moved += int(n)
				c.last = l.now
				progress = true
			case unix.EAGAIN:
				dst.writable = false
			case unix.EINTR:
				progress = true
			default:
				return false, fmt.Errorf("write: %w", err)
			}
		}
		if h.n == 0 {
			if h.eof {
				l.dropPipe(h)
				h.done = true
				if c.halfAt == 0 {
					c.halfAt = l.now
				}
				if c.up.done && c.down.done {
					// The other direction ended first: service closes both
					// sockets now, and closing dst sends the same FIN (its
					// receive queue is empty: its own EOF was read), so a
					// shutdown would be one system call per connection
					// for nothing.
					return false, nil
				}
				if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
					return false, fmt.Errorf("shutdown: %w", err)
				}
				return false, nil
			}
			if !src.readable {
				l.dropPipe(h)
				return false, nil
			}
		}
		if !progress {
			// Blocked on dst (bytes wait in the pipe), or the budget is
			// spent with src still readable.
			return moved >= budget && src.readable && !h.eof && (h.n == 0 || dst.writable), nil
		}
	}
}

// dropPipe gives h's pipe back: to the pool if empty, closed if it still
// holds bytes.
func (l *loop) dropPipe(h *half) {
	if h.p != nil {
		l.pool.put(h.p, h.n == 0)
		h.p = nil
		h.n = 0
	}
}

// copyChunk moves one chunk from src to dst through the loop's buffer. It
// peeks, writes what dst takes, and only then consumes that much from
// src, so no byte waits in user space between events. It returns the
// bytes moved; zero with no error means one side would block.
func (l *loop) copyChunk(src, dst *sock, h *half) (int, error) {
	if !dst.writable {
		return 0, nil
	}
	if l.scratch == nil {
		l.scratch = make([]byte, scratchSize)
	}
	n, _, err := unix.Recvfrom(src.fd, l.scratch, unix.MSG_PEEK)
	switch {
	case err == unix.EAGAIN:
		src.readable = false
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read: %w", err)
	case n == 0:
		h.eof = true
		return 0, nil
	}
	w, err := unix.Write(dst.fd, l.scratch[:n])
	if err == unix.EAGAIN {
		dst.writable = false
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	if _, err := unix.Read(src.fd, l.scratch[:w]); err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
	return w, nil
}

// finish ends c: it unlinks it, returns or closes its pipes, closes
// both sockets and releases its backend. With reset, sockets are closed
// with RST so each peer sees a failure rather than a clean end of stream.
// A non-nil reason other than a clean end is logged.
func (l *loop) finish(c *conn, reason error, reset bool) {
	if c.closed {
		return
	}
	c.closed = true
	l.unlink(c)
	l.dropPipe(&c.up)
	l.dropPipe(&c.down)
	for _, fd := range [2]int{c.client.fd, c.backend.fd} {
		if fd < 0 {
			continue
		}
		if reset {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		unix.Close(fd)
	}
	backend := ""
	if c.target != nil {
		backend = c.target.Addr().String()
		c.target.Release()
		c.target = nil
	}
	l.e.r.connDone(1)
	if reason != nil {
		l.e.r.logger().Info("connection closed", "frontend", c.rt.Name, "client", c.peer.String(),
			"backend", backend, "reason", reason.Error())
	}
}

// unlink removes c from the live list and the fd table.
func (l *loop) unlink(c *conn) {
	c.prev.next = c.next
	c.next.prev = c.prev
	c.prev, c.next = nil, nil
	l.nlive--
	l.load.Add(-1)
	for _, fd := range [2]int{c.client.fd, c.backend.fd} {
		if fd >= 0 && fd < len(l.byFD) && l.byFD[fd] == c {
			l.byFD[fd] = nil
		}
	}
}

// handoff passes c to the copy engine because its sockets cannot splice.
// Only a connection with no byte in flight and no direction ended can be
// handed off; any other is reset.
func (l *loop) handoff(c *conn) {
	if c.up.n > 0 || c.down.n > 0 || c.up.eof || c.down.eof {
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
	go l.e.handoff.relay(client, backend, c.target, c.rt)
}

// fdConn wraps fd in a net.Conn, taking ownership of fd.
func fdConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	return net.FileConn(f)
}

// accept takes one connection from listener lfd, non-blocking and
// close-on-exec, and returns its peer address. It calls accept4(2)
// directly: x/sys's Accept4 asks SO_PROTOCOL of every IPv4/IPv6 peer (to
// tell L2TP apart), one more system call per connection.
func accept(lfd int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	fd, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)),
		uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, netip.AddrPort{}, errno
	}
	return int(fd), addrPortOf(&rsa), nil
}

// addrPortOf converts an accepted peer's raw socket address; AF_UNIX
// peers have none.
func addrPortOf(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// ntohs reads a port stored in network byte order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
