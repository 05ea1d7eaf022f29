//go:build linux

package splice

import "golang.org/x/sys/unix"

// record puts c, established, in the loop's journal. Its sockets keep
// SO_LINGER 0 (set by open and dial) until a clean end clears it
// (finish): whoever closes them last otherwise, the kernel as rsp dies
// before they are stored, or systemd dropping its store when it will not
// restart rsp, resets them rather than ending their streams cleanly.
func (l *loop) record(c *conn) {
	fc := l.frozen(c)
	c.jref = l.j.Conn(&fc)
	if c.jref == 0 {
		l.e.r.logs.warn(l.e.r.logger(), "journal", "connection not journaled: a crash would reset it", "client", c.peer.String())
	}
	for _, h := range [2]*half{&c.up, &c.down} {
		if h.p != nil {
			l.own(c, h)
		}
	}
	if c.client.urgSeen || c.backend.urgSeen {
		l.taint(c) // urgent data came before it was recorded
	}
}

// own records that h's pipe, just taken, carries h of c.
func (l *loop) own(c *conn, h *half) {
	if l.j != nil {
		h.p.owner = c.jref
		l.j.Own(h.p.jref, c.jref, h == &c.down)
	}
}

// taint marks c as one a successor must reset after a crash: its state
// is not all in the kernel's sockets and pipes any more.
func (l *loop) taint(c *conn) {
	if l.j != nil {
		l.j.Taint(c.jref)
	}
}

// forget takes c out of the journal, before its sockets close or leave.
func (l *loop) forget(c *conn) {
	if l.j != nil && c.jref != 0 {
		if !l.j.End(c.jref) {
			l.jpending = true
		}
		c.jref = 0
	}
}

// flushJournal sends the stores and removals systemd's full queue held
// back, and has the loop woken as soon as that queue has room for what is
// still left (level-triggered: the descriptor polls writable only then).
func (l *loop) flushJournal() {
	l.jpending, l.pool.jpending = l.j.Flush(false), false
	fd := -1
	if l.jpending {
		fd = l.j.WaitFD()
	}
	if fd == l.jwait {
		return
	}
	if l.jwait >= 0 {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, l.jwait, nil)
	}
	l.jwait = -1
	ev := unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}
	if fd >= 0 && unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev) == nil {
		l.jwait = fd
	}
}

// setLinger0 makes closing fd reset its connection.
func setLinger0(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// clearLinger makes closing fd end its connection as usual.
func clearLinger(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
}
