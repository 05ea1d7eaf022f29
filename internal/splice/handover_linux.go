//go:build linux

package splice

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Close closes fc's file descriptors, resetting its sockets: a
// connection that cannot be resumed must not end with a clean EOF.
func (fc *FrozenConn) Close() {
	for _, fd := range [2]int{fc.ClientFD, fc.ServerFD} {
		if fd >= 0 {
			setLinger0(fd)
		}
	}
	fc.Forget()
}

// unfreeze lets every loop accept again.
func (e *spliceEngine) unfreeze() {
	for _, l := range e.loops {
		<-l.post(cmdUnstop)
	}
	e.handoff.unfreeze()
}

// freeze stops every loop's accepting and takes its connections out.
func (e *spliceEngine) freeze() ([]FrozenConn, error) {
	e.stopAccepting()
	var out []FrozenConn
	for _, l := range e.loops {
		var part []FrozenConn
		done := make(chan struct{})
		if l.enqueue(command{op: cmdFreeze, frozen: &part, done: done}) {
			<-done
			out = append(out, part...)
		}
	}
	// The copy relay's connections (sockets that cannot splice) are not
	// carried: the shutdown that follows resets them.
	return out, nil
}

// freezeConns takes the loop's connections out (into out), established
// or not yet connected, and resets those that cannot be carried.
func (l *loop) freezeConns(out *[]FrozenConn) {
	for c := l.live.next; c != &l.live; {
		next := c.next
		if c.connecting {
			l.settleConnect(c)
		}
		if c.closed {
			c = next
			continue
		}
		if fc, ok := l.freezeConn(c); ok {
			*out = append(*out, fc)
		} else if fc, ok := l.freezePending(c); ok {
			*out = append(*out, fc)
		} else {
			l.finish(c, errHandover, true)
		}
		c = next
	}
}

// settleConnect completes c's connect if the kernel finished it before
// the loop heard (the event waits in epoll): a hand-over then carries the
// connection established, rather than abandoning a connect that worked.
// A connect that failed is handled as on its event (a retry, or the end).
func (l *loop) settleConnect(c *conn) {
	fds := []unix.PollFd{{Fd: int32(c.backend.fd), Events: unix.POLLOUT}}
	if n, err := unix.Poll(fds, 0); err != nil || n == 0 || fds[0].Revents == 0 {
		return
	}
	c.backend.writable = true
	l.connected(c)
}

// freezePending detaches c if it is not yet connected (connecting, or
// waiting for its PROXY header or ClientHello), for the next process to
// route and connect anew: nothing of the client's stream was consumed
// but a whole PROXY header, so its client socket is all that goes. A
// connect in progress is abandoned. false if c cannot be carried.
func (l *loop) freezePending(c *conn) (FrozenConn, bool) {
	if c.closed || !(c.connecting || c.header || c.hello) || c.client.err || c.client.urgSeen {
		return FrozenConn{}, false
	}
	tries := c.tries
	if c.connecting {
		tries-- // abandoned, not failed
		c.srv.Attempts--
	}
	fc := l.frozen(c)
	fc.ServerFD, fc.Tries, fc.Pending, fc.HeaderRead = -1, tries, true, !c.header
	if c.header || c.hello {
		fc.Wait = time.Duration(max(c.deadline-l.now, 0))
	}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.client.fd, nil)
	if fd := c.backend.fd; fd >= 0 {
		l.byFD[fd] = nil
		unix.Close(fd) // also leaves the epoll set
		c.backend = sock{fd: -1}
	}
	l.forget(c)
	l.detach(c, false)
	return fc, true
}

// detach takes c, its sockets out of epoll, out of the loop for another
// process, counting its bytes to its server if toServer. The server,
// limits and slot go with the process: the next one counts the
// connection anew.
func (l *loop) detach(c *conn, toServer bool) {
	c.closed = true
	l.unlink(c)
	c.leave(toServer)
	l.releaseConn(c)
}

// freezeConn detaches c from the loop, its sockets and pipes left open,
// and describes it; false if c cannot be carried and must be reset.
func (l *loop) freezeConn(c *conn) (FrozenConn, bool) {
	// A socket shut down both ways (hup) without an error is carried
	// once rsp has sent its FIN there: the hang-up is the peer's FIN and
	// ours, what the peer sent before its FIN is still to be read, and
	// the other side may still be taking the last bytes from a pipe.
	// (With TCP_NOTSENT_LOWAT those bytes wait in the pipe rather than in
	// the socket's send queue, so a half-closed echo is often here.)
	if c.closed || c.connecting || c.header || c.hello || c.target == nil || c.flushTo != nil ||
		c.client.urgSeen || c.backend.urgSeen || c.client.err || c.backend.err ||
		c.client.hup && !c.down.done || c.backend.hup && !c.up.done {
		return FrozenConn{}, false
	}
	for _, h := range [2]*half{&c.up, &c.down} {
		if h.lost || h.dropped || h.aborted || h.oobHeld {
			return FrozenConn{}, false
		}
	}
	fc := l.frozen(c)
	l.forget(c)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.client.fd, nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.backend.fd, nil)
	for _, h := range [2]*half{&c.up, &c.down} {
		if h.p != nil && h.n > 0 {
			l.pool.open.Add(-1) // the pipe leaves with the connection
			l.pool.budget.hold(-h.p.size, -1)
			l.pool.unpark(h.p)
			if l.j != nil && !l.j.PipeEnd(h.p.jref) {
				l.jpending = true
			}
			h.p = nil
		}
		l.dropPipe(h)
	}
	l.detach(c, true)
	return fc, true
}

// frozen describes c as a FrozenConn, its pipes included.
func (l *loop) frozen(c *conn) FrozenConn {
	fc := FrozenConn{
		ID: uint64(l.index)<<32 | uint64(c.id), Frontend: c.rt.Name, Backend: c.rt.Backend, Peer: c.peer,
		ClientFD: c.client.fd, ServerFD: c.backend.fd, ClientUnix: c.client.unix, ServerUnix: c.backend.unix,
		Up: freezeHalf(&c.up), Down: freezeHalf(&c.down),
		Born: l.e.start.Add(time.Duration(c.born)), Tries: c.tries, ClientFirst: c.clientFirst,
	}
	if c.target != nil { // none yet while a PROXY header or ClientHello is awaited
		fc.Server = c.target.Name()
	}
	if c.connAt != 0 {
		fc.Connect = time.Duration(c.connAt - c.born)
	}
	if c.halfAt != 0 {
		fc.HalfClosed = time.Duration(l.now - c.halfAt)
	}
	return fc
}

// freezeHalf describes h; its pipe, if it holds bytes, goes with it.
func freezeHalf(h *half) FrozenHalf {
	fh := FrozenHalf{PipeR: -1, PipeW: -1, N: h.n, EOF: h.eof, Done: h.done, Sent: h.sent}
	if h.p != nil && h.n > 0 {
		fh.PipeR, fh.PipeW = h.p.r, h.p.w
	}
	return fh
}

// thaw gives fc to the least loaded loop.
func (e *spliceEngine) thaw(fc FrozenConn, rt *Route, t Target) error {
	var best *loop
	for _, l := range e.loops {
		if !l.dead.Load() && (best == nil || l.load.Load() < best.load.Load()) {
			best = l
		}
	}
	if best == nil || !e.r.admitAlways() {
		dropThawed(fc, t)
		return errors.New("relay is not running")
	}
	best.load.Add(1)
	if !best.enqueue(command{op: cmdThaw, thaw: &thawing{fc: fc, rt: rt, t: t}}) {
		best.load.Add(-1)
		dropThawed(fc, t)
		e.r.connDone(1)
		return errors.New("relay is not running")
	}
	return nil
}

// thawing is a frozen connection on its way into a loop.
type thawing struct {
	fc FrozenConn
	rt *Route
	t  Target
}

// thawConn resumes a frozen connection in l.
func (l *loop) thawConn(th *thawing) {
	l.load.Add(-1)
	fc, rt := th.fc, th.rt
	if fc.Pending {
		l.reopen(fc, rt)
		return
	}
	l.nextID++
	born := l.now - int64(time.Since(fc.Born))
	c := &conn{
		dialing: dialing{rt: rt, peer: fc.Peer},
		id:      l.nextID, target: th.t,
		client:  sock{fd: fc.ClientFD, unix: fc.ClientUnix, readable: true, writable: true},
		backend: sock{fd: fc.ServerFD, unix: fc.ServerUnix, readable: true, writable: true},
		up:      thawHalf(&fc.Up, &l.pool), down: thawHalf(&fc.Down, &l.pool),
		last: l.now, born: born, connAt: born + int64(fc.Connect), tries: fc.Tries, clientFirst: fc.ClientFirst,
	}
	if fc.HalfClosed > 0 {
		c.halfAt = l.now - int64(fc.HalfClosed)
	}
	c.holdLimits(l.now)
	c.fe = l.tally.frontend(rt.Name)
	c.fe.Active++
	c.srv = l.tally.server(th.t.Name())
	l.link(c)
	l.linkFD(c, c.backend.fd)
	l.useTimeouts(rt)
	if l.j != nil {
		whole := true
		for _, h := range [2]*half{&c.up, &c.down} {
			if h.p != nil {
				ref, err := l.j.Pipe(h.p.r, h.p.w)
				h.p.jref = ref // record tells whose it is
				whole = whole && err == nil
			}
		}
		l.record(c)
		if !whole {
			l.taint(c) // bytes in a pipe a crash would lose
		}
	}
	for _, s := range [2]*sock{&c.client, &c.backend} {
		fd := s.fd
		if !s.unix {
			// This process's notsent_lowat (0: the kernel's), whatever
			// the last one set.
			unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, l.lowat)
		}
		if l.j == nil {
			// The hand-over set SO_LINGER 0 so that a socket nobody
			// resumed would reset; a journal keeps it so (record).
			clearLinger(fd)
		}
		if err := l.register(c, fd); err != nil {
			l.finish(c, err, true)
			return
		}
	}
	l.service(c)
}

// reopen resumes a connection handed over before it was connected, as
// if just accepted under rt: from its PROXY header if that was not read
// yet, else past its gate (its limits held, as the previous process
// admitted it), to its ClientHello if the route reads one, and its
// connect.
func (l *loop) reopen(fc FrozenConn, rt *Route) {
	fd := fc.ClientFD
	if !fc.ClientUnix {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, l.lowat)
	}
	if l.j == nil {
		clearLinger(fd) // else kept until recorded, as for a new client
	}
	c := l.newConn(rt, fd, fc.ClientUnix, fc.Peer, l.now-int64(time.Since(fc.Born)))
	c.tries = fc.Tries
	if fc.HeaderRead {
		c.holdLimits(l.now)
	}
	l.begin(c, rt.Header != nil && !fc.HeaderRead, fc.HeaderRead)
	// The wait it was in goes on from where it was: a PROXY header's, or
	// (past it, connecting included: 0 left) a ClientHello's.
	if !c.closed && (c.header && !fc.HeaderRead || c.hello && fc.HeaderRead) {
		c.deadline = min(c.deadline, l.now+int64(fc.Wait))
	}
}

// thawHalf rebuilds a direction; its pipe, if any, joins the loop's
// count of open pipes.
func thawHalf(fh *FrozenHalf, pool *pipePool) half {
	h := half{n: fh.N, eof: fh.EOF, done: fh.Done, sent: fh.Sent}
	if fh.PipeR >= 0 && fh.N > 0 {
		size, err := unix.FcntlInt(uintptr(fh.PipeW), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			size = defaultPipeSize
		}
		h.p = &pipe{r: fh.PipeR, w: fh.PipeW, size: size}
		pool.open.Add(1)
		pool.budget.hold(size, 1)
		// Under a budget, parked at the size of its bytes, whatever size
		// the predecessor gave it: the first read into it once empty
		// sizes it for this process's budget.
		pool.park(h.p, fh.N)
	}
	return h
}
