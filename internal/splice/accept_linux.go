//go:build linux

package splice

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds how a loop accepts: its duplicates of the listening
// sockets, the accept batch, and the pauses at MaxConn and when file
// descriptors run out.

// listener is one loop's duplicate of a listening socket.
type listener struct {
	fd      int
	key     net.Listener // the caller's listener this duplicates
	fe      *Frontend
	tcp     bool        // a TCP socket (not Unix)
	nodelay bool        // TCP_NODELAY set on the listener, inherited by accepted sockets
	opts    *clientOpts // shared by every loop's duplicate of this socket
}

// clientOpts records the keepalive settings set on one listening socket,
// for the sockets it accepts to inherit. Every loop's duplicate of the
// socket shares it.
type clientOpts struct {
	mu  sync.Mutex
	set atomic.Pointer[KeepAlive] // set on the listener; nil before the first accept
	// stale counts accepted sockets still to be given the settings by
	// hand: those that were waiting in the accept queue when they were
	// changed, and so were made with the old ones.
	stale atomic.Int64
}

// keepAlive gives the socket fd, just accepted from ln, the keepalive
// settings ka. Accepted sockets inherit them from the listener, so they
// are set on the listener when a route first asks for them (at the first
// accept, or after a reload changed them), and by hand only on the
// sockets that were already queued then.
func (ln *listener) keepAlive(fd int, ka KeepAlive, loops int) {
	if !ln.tcp {
		return
	}
	o := ln.opts
	if cur := o.set.Load(); cur != nil && *cur == ka && o.stale.Load() <= 0 {
		return
	}
	o.mu.Lock()
	if cur := o.set.Load(); cur == nil || *cur != ka {
		setKeepAlive(ln.fd, ka, true)
		o.set.Store(&ka)
		// The queue, and fd and a socket each other loop may have
		// accepted meanwhile.
		o.stale.Store(int64(acceptQueue(ln.fd) + loops))
	}
	o.mu.Unlock()
	if o.stale.Add(-1) >= 0 {
		setKeepAlive(fd, ka, true)
	}
}

// acceptQueue returns how many connections wait in listening socket fd's
// accept queue (TCP_INFO of a listener reports it as unacked).
func acceptQueue(fd int) int {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0
	}
	return int(info.Unacked)
}

// registerListeners adds the listeners to this loop's epoll set.
// EPOLLEXCLUSIVE wakes one loop per incoming connection instead of all.
func (l *loop) registerListeners() error {
	for _, ln := range l.lns {
		if err := l.registerListener(ln); err != nil {
			return err
		}
	}
	l.accepting = true
	return nil
}

func (l *loop) registerListener(ln *listener) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ln.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ln.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl listener: %w", err)
	}
	return nil
}

func (l *loop) unregisterListeners() {
	for _, ln := range l.lns {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
	}
	l.accepting = false
}

// canAccept reports whether the loop's listeners should be registered.
func (l *loop) canAccept() bool { return !l.stopped && !l.full && l.resumeAt == 0 }

// addListener takes over ln (its fd is this loop's own duplicate).
func (l *loop) addListener(ln *listener) {
	if l.stopped {
		unix.Close(ln.fd)
		return
	}
	l.lns = append(l.lns, ln)
	if l.accepting {
		if err := l.registerListener(ln); err != nil {
			l.e.r.logger().Error("cannot watch listener", "listen", ln.key.Addr().String(), "err", err)
		}
	}
}

// removeListener stops accepting on the duplicate of key and closes it.
func (l *loop) removeListener(key net.Listener) {
	for i, ln := range l.lns {
		if ln.key == key {
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
			unix.Close(ln.fd)
			l.lns = append(l.lns[:i], l.lns[i+1:]...)
			return
		}
	}
}

func (l *loop) listenerOf(fd int) *listener {
	for _, ln := range l.lns {
		if ln.fd == fd {
			return ln
		}
	}
	return nil
}

func (l *loop) stopAccepting() {
	if l.stopped {
		return
	}
	l.stopped = true
	if l.accepting {
		l.unregisterListeners()
	}
	l.resumeAt = 0
	for _, ln := range l.lns {
		unix.Close(ln.fd)
	}
	l.lns = nil
}

// logErr logs an accept-level error at most once a second for the whole
// relay: under fd exhaustion every loop hits it at once, again and again.
func (l *loop) logErr(msg string, err error) {
	l.e.r.logs.log(l.e.r.logger(), slog.LevelError, 1, "accept", msg, "err", err)
}

// acceptBatch accepts up to acceptBatch connections from ln.
func (l *loop) acceptBatch(ln *listener) {
	if !l.accepting {
		return
	}
	r := l.e.r
	for range acceptBatch {
		if !l.accepting {
			// Opening the last connection ran out of fds (pauseAccept).
			return
		}
		if until := l.e.fdPause.Load(); until > l.now {
			// Another loop ran out of fds: pause here too rather than
			// accept clients that could not be served.
			l.pauseUntil(until)
			return
		}
		if !r.admit() {
			l.pauseFull()
			return
		}
		nfd, peer, err := accept(ln.fd)
		if err != nil {
			r.unadmit()
			switch err {
			case unix.EAGAIN:
				return
			case unix.EINTR, unix.ECONNABORTED, unix.EPROTO, unix.EPERM:
				// The client went away or a firewall refused it: next.
				continue
			case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
				l.pauseAccept(err)
				return
			}
			l.logErr("accept failed", err)
			return
		}
		r.stats.accepted.Add(1)
		ln.keepAlive(nfd, ln.fe.Route().ClientKeepAlive, len(l.e.loops))
		if to := l.e.lighter(l); to != nil {
			to.adopt(nfd, peer, ln)
			continue
		}
		l.open(nfd, peer, ln)
	}
}

// pauseFull stops accepting while MaxConn connections are live; the
// kernel's backlog holds new clients. A connection ending anywhere in the
// relay resumes it (cmdResume).
func (l *loop) pauseFull() {
	if l.accepting {
		l.unregisterListeners()
	}
	l.full = true
	if l.e.r.pausedFull() {
		l.resumeFull()
	}
}

// resumeFull resumes accepting paused at MaxConn.
func (l *loop) resumeFull() {
	if !l.full {
		return
	}
	l.full = false
	if l.canAccept() && !l.accepting {
		if err := l.registerListeners(); err != nil {
			l.pauseAccept(err)
		}
	}
}

// pauseAccept stops accepting for acceptPause after running out of fds or
// memory, in every loop: the shortage is the process's. Live connections
// go on; the kernel's backlog holds new clients.
func (l *loop) pauseAccept(err error) {
	until := l.now + int64(acceptPause)
	if prev := l.e.fdPause.Load(); prev < until {
		l.e.fdPause.CompareAndSwap(prev, until)
	}
	l.pauseUntil(until)
	l.logErr(fmt.Sprintf("accept: out of file descriptors or memory; pausing accepts for %v (raise LimitNOFILE= or ulimit -n)", acceptPause), err)
}

// pauseUntil stops this loop's accepting until the engine clock reads
// until; the timeout sweep resumes it.
func (l *loop) pauseUntil(until int64) {
	if l.accepting {
		l.unregisterListeners()
	}
	l.resumeAt = until
	if l.sweep > l.resumeAt {
		l.sweep = l.resumeAt
	}
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
