//go:build linux

package splice

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// This file holds a connection's state and how epoll's reports reach it.
// dial_linux.go connects it to a backend, pump_linux.go moves its bytes,
// end_linux.go ends it.

// sock is one socket of a connection and what epoll last said of it.
type sock struct {
	fd       int
	readable bool // no EAGAIN seen on read since the last EPOLLIN
	writable bool // no EAGAIN seen on write since the last EPOLLOUT
	rdhup    bool // EPOLLRDHUP seen: the peer sent FIN
	err      bool // EPOLLERR seen: the socket has a pending error
	hup      bool // EPOLLHUP seen: shut down both ways (by the peer, or by us and the peer)
	urg      bool // EPOLLPRI seen: urgent data not yet passed on
	urgSeen  bool // urgent data came ever: a mark may stop a splice
	unix     bool // a Unix socket: its peer's close keeps what it wrote readable
}

// half is one direction of a connection: bytes read from src, written to
// dst through p.
type half struct {
	p       *pipe // nil while no bytes are in flight
	n       int   // bytes in p
	eof     bool  // src reached EOF
	done    bool  // EOF delivered: dst was shut down for writing
	lost    bool  // dst's peer is gone: what src sends can never arrive
	dropped bool  // bytes of src's were lost (lost, or cut from a pipe)
	aborted bool  // src's stream ended in an error (a Unix peer closed with unread bytes)
	oob     byte  // urgent byte read from src, not yet sent on
	oobHeld bool  // oob holds a byte
	sent    int64 // bytes delivered to dst
}

// conn is one relayed connection. An idle conn holds no pipe: this struct
// and two socket fds are its whole cost.
type conn struct {
	dialing
	id         uint32
	connecting bool
	header     bool // waiting for the client's PROXY header; deadline bounds it
	hello      bool // waiting for the client's TLS ClientHello; deadline bounds it
	closed     bool
	queued     bool // in loop.ready
	client     sock
	backend    sock
	up         half  // client → backend
	down       half  // backend → client
	last       int64 // loop clock at the last byte moved
	deadline   int64 // connect deadline while connecting
	halfAt     int64 // loop clock when the first direction ended; 0 before
	// flushTo, when set, is the socket whose queued bytes c waits to see
	// delivered before it ends (endWhenFlushed); flushOutq is what
	// its send queue held at the last look, and deadline holds when
	// that last shrank.
	flushTo    *sock
	flushOutq  int
	target     Target // the backend picked; nil before and after
	prev, next *conn
	// What metrics and the connection log report (loop clock times).
	born        int64          // accepted
	attemptAt   int64          // the current connect attempt began
	connAt      int64          // the backend connect completed; 0 before
	tries       int            // connects attempted
	clientFirst bool           // the client's stream ended first
	fe          *FrontendStats // the loop's counters of this frontend
	srv         *ServerStats   // the loop's counters of the target; nil before the first connect
	jref        int32          // c's ref in the loop's journal; 0 if not recorded
}

// open starts relaying a freshly accepted client socket: it picks a
// backend and begins a non-blocking connect to it.
func (l *loop) open(cfd int, peer netip.AddrPort, ln *listener) {
	rt := ln.fe.Route()
	// Small writes must leave at once: the proxy must not add Nagle delay
	// to request/response traffic.
	if ln.tcp && !ln.nodelay {
		unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	if ln.tcp {
		l.capSendQueue(cfd)
	}
	if l.j != nil {
		setLinger0(cfd) // until recorded (record)
	}
	c := l.newConn(rt, cfd, !ln.tcp, peer, l.now)
	c.fe.Accepted++
	l.begin(c, rt.Header != nil, false)
}

// newConn makes the connection of client socket cfd under rt, born at
// born (loop clock), live in l and in its frontend's count.
func (l *loop) newConn(rt *Route, cfd int, unixSock bool, peer netip.AddrPort, born int64) *conn {
	l.nextID++
	c := &conn{dialing: dialing{rt: rt, peer: peer}, id: l.nextID, client: sock{fd: cfd, unix: unixSock}, backend: sock{fd: -1}, last: l.now, born: born}
	c.fe = l.tally.frontend(rt.Name)
	c.fe.Active++
	l.link(c)
	l.useTimeouts(rt)
	return c
}

// begin takes c from its first step to its backend connect: its PROXY
// header if header, else its gate unless gated, then its ClientHello if
// the route reads one.
func (l *loop) begin(c *conn, header, gated bool) {
	rt := c.rt
	if header {
		if !rt.Header.Trusted(c.peer.Addr()) {
			l.finish(c, errUntrusted, true)
			return
		}
		if err := l.register(c, c.client.fd); err != nil {
			l.finish(c, err, true)
			return
		}
		c.header = true
		c.deadline = l.now + int64(rt.connectTimeout())
		l.readHeader(c) // it may be here already
		return
	}
	if !gated && !l.gate(c) {
		return
	}
	if err := l.register(c, c.client.fd); err != nil {
		l.finish(c, err, true)
		return
	}
	if rt.Hello != nil {
		l.startHello(c)
		return
	}
	l.dial(c)
}

// startHello begins waiting for c's TLS ClientHello, which routes it.
func (l *loop) startHello(c *conn) {
	c.hello = true
	c.deadline = l.now + int64(c.rt.Hello.timeout())
	l.readHello(c) // it may be here already
}

// readHello peeks at what the client sent so far; once it holds a whole
// ClientHello (or cannot become one), the connection is routed by its
// server name and dialed. Nothing is consumed: the hello reaches the
// server as it came.
func (l *loop) readHello(c *conn) {
	h := c.rt.Hello
	b, eof, ok := l.peek(c, h.MaxLen, "ClientHello")
	if !ok {
		return
	}
	name, why, done := parseHello(h, b, eof)
	if !done {
		return // the next bytes raise a new edge
	}
	l.routed(c, name, why)
}

// routed ends c's wait for its ClientHello: it dials the backend the
// server name (or the reason there is none) leads to, or closes c.
func (l *loop) routed(c *conn, name, why string) {
	c.hello = false
	if err := routeHello(l.e.r, c.rt.Hello, &c.dialing, name, why); err != nil {
		l.finish(c, err, true)
		return
	}
	l.dial(c)
}

// gate checks c's client (the one a PROXY header named, if any) against
// the route's access list and limits, before anything waits on it; it
// reports false if c was refused and ended.
func (l *loop) gate(c *conn) bool {
	rt := c.rt
	if rt.ACL != nil && !rt.ACL.Allows(c.peer.Addr()) {
		l.finish(c, errDenied, true)
		return false
	}
	if err := c.takeSource(l.now); err != nil {
		l.finish(c, err, true)
		return false
	}
	if rt.Limit != nil {
		if !rt.Limit.take() {
			l.finish(c, errMaxConn, true)
			return false
		}
		c.limited = true
	}
	return true
}

// peek returns, without consuming them, up to max of the bytes c's
// client sent so far, and whether no more will come (a FIN after them:
// all it sent is here). ok is false if there is nothing to look at yet,
// or the read failed and c was ended; what names the bytes looked for.
func (l *loop) peek(c *conn, max int, what string) (b []byte, eof, ok bool) {
	if l.scratch == nil {
		l.scratch = make([]byte, scratchSize)
	}
	buf := l.scratch[:min(max, len(l.scratch))]
	n, _, err := unix.Recvfrom(c.client.fd, buf, unix.MSG_PEEK)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return nil, false, false
	case err != nil:
		l.finish(c, c.peerErr(&c.client, "read "+what+" from %s: %w", err), true)
		return nil, false, false
	}
	return buf[:n], n == 0 || c.client.rdhup, true
}

// readHeader reads the header the client sends before its bytes: it
// peeks, and consumes exactly the header once it is whole, so that no
// byte after it is taken from the stream.
func (l *loop) readHeader(c *conn) {
	h := c.rt.Header
	b, eof, ok := l.peek(c, h.MaxLen, "PROXY header")
	if !ok {
		return
	}
	client, size, done, err := parseHeader(h, b, eof)
	switch {
	case err != nil:
		l.finish(c, err, true)
		return
	case !done:
		return // the next bytes raise a new edge
	}
	if _, err := unix.Read(c.client.fd, b[:size]); err != nil {
		l.finish(c, c.peerErr(&c.client, "read PROXY header from %s: %w", err), true)
		return
	}
	c.header = false
	if client.IsValid() {
		c.peer = client
	}
	c.last = l.now
	if !l.gate(c) {
		return
	}
	if c.rt.Hello != nil {
		l.startHello(c)
		return
	}
	l.dial(c)
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

// register adds fd to epoll, edge-triggered for input, urgent data,
// output and errors: readiness is tracked in sock, so interest never
// changes and no further epoll_ctl is needed for backpressure.
func (l *loop) register(c *conn, fd int) error {
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
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
	if ev&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.writable = true
	}
	if ev&unix.EPOLLPRI != 0 {
		s.urg, s.urgSeen = true, true
		l.taint(c)
	}
	if ev&unix.EPOLLRDHUP != 0 {
		s.rdhup = true
	}
	if ev&unix.EPOLLERR != 0 {
		s.err = true
		l.taint(c) // reading the error clears it: a successor could not see it
	}
	if ev&unix.EPOLLHUP != 0 {
		s.hup = true
	}
	if c.header {
		l.readHeader(c)
		return
	}
	if c.hello {
		l.readHello(c)
		return
	}
	if c.connecting {
		switch {
		case s == &c.backend && ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0:
			l.connected(c)
		case s == &c.backend && ev&unix.EPOLLOUT != 0:
			// Writable without error: the connect succeeded, no need
			// to ask SO_ERROR.
			l.established(c)
		case s == &c.client && s.err:
			// A reset. A client that merely closed (FIN, or a Unix
			// peer's hang-up) may have sent bytes that must still reach
			// the backend.
			l.finish(c, &peerError{err: errors.New("client reset while backend was connecting")}, true)
		}
		return
	}
	l.service(c)
}

// capSendQueue limits the bytes not yet sent that TCP socket fd may
// queue to the loop's lowat (TCP_NOTSENT_LOWAT). A send queue full of
// unsent bytes moves nothing faster: the pipe already holds the next
// ones, and TCP's flow control keeps the rest in the source's socket.
// Without a limit, every busy connection fills its send buffer (4 MiB
// each by default), and a few hundred of them reach the host's TCP
// memory limit (tcp_mem), past which the kernel prunes receive queues
// and drops segments for every socket on the host.
func (l *loop) capSendQueue(fd int) {
	if l.lowat > 0 {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, l.lowat)
	}
}
