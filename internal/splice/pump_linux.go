//go:build linux

package splice

import (
	"cmp"
	"errors"
	"fmt"
	"time"

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
	// adds to its loop's other connections to about 4 ms; 1 MiB cost more
	// CPU per GiB (a requeue per full pipe), 8 MiB no less (README, design
	// table).
	budget = 4 << 20
	// scratchSize is the loop's buffer for the no-pipe fallback and for
	// the bytes read past an urgent mark.
	scratchSize = 64 << 10
)

// service moves bytes in both directions until each would block, then
// ends the connection if both directions are done or a peer is gone.
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
	if c.client.err && !c.client.unix || c.backend.err && !c.backend.unix {
		// A TCP reset: the peer aborted, so what it sent need not be
		// delivered (a direct peer would lose it too), and waiting to
		// deliver it could wait forever on a destination that does not
		// read. (A Unix peer that closed with unread bytes leaves an
		// error too, but what it wrote is still to be read: see
		// half.aborted.)
		l.finish(c, sockErr(c), true)
		return
	}
	switch {
	case c.up.aborted && c.down.aborted:
		l.finish(c, errPeerAborted, true)
		return
	case c.up.lost && c.down.lost:
		// Both peers are gone, each with bytes for it undelivered.
		l.finish(c, errUndeliverable, true)
		return
	case c.up.aborted && c.up.n == 0:
		l.endWhenFlushed(c, &c.backend)
	case c.down.aborted && c.down.n == 0:
		l.endWhenFlushed(c, &c.client)
	}
	if c.flushTo != nil {
		l.flushed(c)
		if !c.closed {
			l.requeue(c, more1) // a lost direction may still be discarding
		}
		return
	}
	if end, reason := gone(&c.client, &c.up, &c.down); end {
		l.endGone(c, &c.backend, &c.down, reason)
		return
	}
	if end, reason := gone(&c.backend, &c.down, &c.up); end {
		l.endGone(c, &c.client, &c.up, reason)
		return
	}
	l.requeue(c, more1)
}

// requeue puts c on the loop's ready list if it has work left (more):
// its edge-triggered readiness was used up without EAGAIN.
func (l *loop) requeue(c *conn, more bool) {
	if more && !c.queued {
		c.queued = true
		l.ready = append(l.ready, c)
	}
}

// gone reports whether the connection is over because s's peer has gone
// away entirely (a Unix peer that closed: EPOLLHUP while we still had
// its receiving side open) and every byte it sent, through in, has been
// delivered with its EOF. Nothing sent towards s (out) can arrive any
// more. If nothing of out is in flight, the connection ends cleanly: the
// other peer got everything and an EOF, and closing its socket answers
// any later byte with a reset, as a direct peer would. If bytes for s
// were lost, reason says so and the other peer is reset.
func gone(s *sock, in, out *half) (end bool, reason error) {
	if !s.hup || !in.done || out.done {
		return false, nil
	}
	if out.n > 0 || out.lost || s.err {
		// Bytes for s are lost: in a pipe, never written, or (a Unix
		// peer's error) written but left unread when it closed.
		return true, errUndeliverable
	}
	return true, nil
}

// endGone ends c after its other peer has gone (gone): that peer sent
// everything and its EOF was passed on to survivor. Nothing survivor
// sends can arrive any more: it is read and dropped (out is lost), and c
// ends once what is queued for survivor has been delivered, since closing
// a TCP socket that then receives a byte answers with a reset that would
// throw away the rest of its queue. It ends cleanly if no byte of
// survivor's was lost; else survivor is reset, as a direct peer's writes
// would have failed.
func (l *loop) endGone(c *conn, survivor *sock, out *half, reason error) {
	l.taint(c) // before its pipe is dropped
	if reason != nil || out.n > 0 {
		out.dropped = true
	}
	out.lost = true
	l.dropPipe(out)
	l.endWhenFlushed(c, survivor)
	l.flushed(c)
}

// endWhenFlushed makes c end once the bytes queued for dst have been
// delivered: a reset sent at once would throw away what dst's peer has
// not yet received. It is how a stream that cannot end cleanly (a Unix
// peer closed with unread bytes, bytes for a peer that left were lost)
// still delivers every byte before its reset, as a direct Unix connection
// does; and how a connection whose other peer left ends without losing
// the tail of what it delivered (endGone).
func (l *loop) endWhenFlushed(c *conn, dst *sock) {
	if c.flushTo != nil {
		return
	}
	l.taint(c) // its end is under way
	c.flushTo = dst
	c.flushOutq = -1
	c.deadline = l.now + int64(flushStall)
	l.useTick(int64(minTick))
}

// flushed ends c if the socket it waits on has nothing left to deliver,
// or its reader took nothing for flushStall. It ends with a reset if a
// stream was cut: a Unix peer's ended in an error, bytes were dropped, or
// the reader never took the rest.
func (l *loop) flushed(c *conn) {
	q, closed, err := sendQueue(c.flushTo.fd)
	cut := false
	switch {
	case err != nil || q == 0 || c.flushTo.err && !c.flushTo.unix:
		// Delivered, or its peer reset it: nothing more will go.
	case closed:
		// Reset by its peer, and a read took the reset's error before
		// epoll could tell (service ends such a connection when it
		// does): the same end, at once. Nothing more will go.
		l.finish(c, c.peerErr(c.flushTo, "%s: %w", unix.ECONNRESET), true)
		return
	case c.flushOutq < 0 || q < c.flushOutq:
		c.flushOutq = q
		c.deadline = l.now + int64(flushStall)
		return
	case l.now < c.deadline:
		return
	default:
		cut = true // its reader stopped: the rest will not arrive
	}
	switch {
	case c.up.aborted || c.down.aborted:
		l.finish(c, errPeerAborted, true)
	case cut || c.up.dropped || c.down.dropped || pendingInput(c.flushTo.fd):
		l.finish(c, errUndeliverable, true)
	default:
		l.finish(c, nil, false)
	}
}

// pendingInput reports whether fd has received bytes not yet read.
func pendingInput(fd int) bool {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n > 0
}

// sockErr names the pending error of whichever socket of c failed.
func sockErr(c *conn) error {
	for _, s := range [2]*sock{&c.client, &c.backend} {
		if !s.err && !s.hup {
			continue
		}
		if err := soError(s.fd); err != nil {
			return c.peerErr(s, "%s: %w", err)
		}
	}
	// No pending error left to read: the side that reported one failed.
	// A TCP socket's error (what made service end it) comes first; a
	// Unix peer's error only says it closed with bytes unread.
	s := &c.client
	switch {
	case c.backend.err && !c.backend.unix:
		s = &c.backend
	case c.client.err && !c.client.unix:
	case c.backend.err || c.backend.hup:
		s = &c.backend
	}
	return c.peerErr(s, "%s: %w", unix.ECONNRESET)
}

// sideName names s as "client" or "backend" in a reason.
func sideName(c *conn, s *sock) string {
	if s == &c.client {
		return "client"
	}
	return "backend"
}

// peerErr is a failure of s, its text format with s's side name and err.
func (c *conn) peerErr(s *sock, format string, err error) error {
	return &peerError{server: s == &c.backend, err: fmt.Errorf(format, sideName(c, s), err)}
}

// errNoSplice reports that the kernel cannot splice this socket type.
var errNoSplice = errors.New("socket type cannot splice")

// pump moves bytes from src to dst through h's pipe until src has nothing
// more, dst can take nothing more, or the budget is spent (then more is
// true). It fills the pipe only when it is empty and then empties it:
// with the pipe empty, EAGAIN from the source can only mean the source is
// drained, so src is marked not readable without losing an edge.
// Refilling the pipe while it still held bytes (pipelining) moved no more
// and cost more CPU per GiB in softirqs (README, design table).
//
// Urgent data: splice(2) stops at TCP's urgent mark, returning EAGAIN, or
// 0 once the peer's FIN has arrived, until a recv(2) has passed the mark.
// So while src has urgent data pending (EPOLLPRI), each read first asks
// passUrgent, which passes the mark if src is at it. A splice that
// returns 0 always asks SIOCATMARK whether a mark stopped it (once per
// direction: EPOLLPRI does not always come, seen with a reader whose
// window was closed when the urgent byte arrived, and trusting the 0 cut
// the stream with a clean EOF); one that returns EAGAIN asks too once the
// socket has had urgent data (a second urgent byte that came while the
// first was being passed on raises no new edge).
func (l *loop) pump(c *conn, h *half, src, dst *sock) (more bool, err error) {
	if h.lost {
		return l.discard(h, src), nil
	}
	if h.done || h.aborted && h.n == 0 {
		return false, nil
	}
	moved := 0
	for {
		progress := false
		if h.n == 0 && !h.eof && (src.urg || h.oobHeld) {
			var blocked bool
			progress, blocked, err = l.passUrgent(c, h, src, dst)
			if err != nil {
				return false, err
			}
			if h.lost {
				return true, nil // requeued: the next service discards
			}
			if blocked {
				// At the mark and waiting: for the urgent byte to
				// arrive, or for dst to take it.
				return false, nil
			}
		}
		if h.n == 0 && !h.eof && src.readable && moved < budget && !progress {
			if h.p == nil {
				p, perr := l.pool.get()
				if perr != nil {
					// No fd for a pipe: move this chunk through the loop's
					// buffer instead of stalling (a stalled direction could
					// hold the pipes its peer direction waits for).
					l.taint(c) // bytes pass through this process
					n, err := l.copyChunk(c, src, dst, h)
					if err != nil {
						err = l.writeFailed(c, h, dst, err)
						return err == nil, err // lost: requeued to discard
					}
					if n == 0 && !h.eof {
						if src.urg {
							continue // at a mark: passUrgent's
						}
						return false, nil
					}
					moved += n
					h.sent += int64(n)
					l.tally.copied += int64(n)
					c.last = l.now
					continue
				}
				h.p = p
				l.own(c, h)
			}
			want := h.p.size
			if b := l.pool.budget; b.limited() {
				// Once the pipe budget is tight, only what dst can take,
				// and a small pipe grows as far as that needs; a parked
				// pipe moves again.
				tight := b.tight()
				if tight {
					lowat := l.lowat
					if dst.unix {
						lowat = 0
					}
					want = fillFor(h.p, dst.fd, max(want, cmp.Or(l.pool.size, defaultPipeSize)), lowat)
				}
				if h.p.parked || tight && want > h.p.size {
					l.pool.fit(h.p, max(want, h.p.size))
				}
				want = min(want, h.p.size)
			}
			var n int64
			if l.noSplice {
				err = unix.EINVAL
			} else {
				n, err = unix.Splice(src.fd, nil, h.p.w, nil, want, spliceFlags)
			}
			if err != nil && err != unix.EAGAIN && err != unix.EINTR && err != unix.EINVAL && src.unix {
				// A Unix peer that closed with unread bytes: all it
				// wrote has been read, and its stream ends in an error.
				h.eof, h.aborted = true, true
				l.taint(c)
				continue
			}
			if (n == 0 && err == nil || err == unix.EAGAIN && src.urgSeen) && atMark(src.fd) {
				// Stopped at an urgent mark that came after the one
				// passUrgent last passed: neither the end nor drained.
				src.urg = true
				l.taint(c)
				continue
			}
			switch {
			case err == nil && n == 0:
				h.eof = true
				h.aborted = src.err && src.unix // its error was read already
				if h.aborted {
					l.taint(c)
				}
				progress = true
			case err == nil:
				if int(n) < h.p.size/pageSize && !src.rdhup && !src.err && !src.hup && !src.urgSeen {
					// A short read into an empty pipe that cannot have run
					// out of slots (each holds at least a byte) took
					// everything the socket had. Bytes arriving later raise
					// a new edge, so the EAGAIN probe would be a wasted
					// system call per message. Not after a FIN: the read
					// that returns 0 must still happen. Not once urgent
					// data came: the read may have stopped at a mark.
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
				return false, c.peerErr(src, "read from %s: %w", err)
			}
		}
		if h.n > 0 && dst.writable {
			n, err := unix.Splice(h.p.r, nil, dst.fd, nil, h.n, spliceFlags)
			switch err {
			case nil:
				h.n -= int(n)
				h.sent += n
				if l.j != nil {
					l.j.Sent(c.jref, h == &c.down, h.sent)
				}
				moved += int(n)
				c.last = l.now
				progress = true
			case unix.EAGAIN:
				dst.writable = false
				l.pool.park(h.p, h.n)
			case unix.EINTR:
				progress = true
			default:
				err = l.writeFailed(c, h, dst, c.peerErr(dst, "write to %s: %w", err))
				return err == nil, err // lost: requeued to discard
			}
		}
		if h.lost {
			return true, nil // requeued: the next service discards
		}
		if h.n == 0 {
			if h.eof && h.aborted {
				// No clean EOF for a stream that ended in an error:
				// service resets dst once its queue is delivered.
				l.dropPipe(h)
				return false, nil
			}
			if h.eof {
				l.dropPipe(h)
				h.done = true
				if c.halfAt == 0 {
					c.halfAt = l.now
					c.clientFirst = h == &c.up
					if l.j != nil {
						l.j.Half(c.jref, l.e.start.Add(time.Duration(c.halfAt)), c.clientFirst)
					}
				}
				if c.up.done && c.down.done && l.j == nil {
					// The other direction ended first: service closes both
					// sockets now, and closing dst sends the same FIN (its
					// receive queue is empty: its own EOF was read), so a
					// shutdown would be one system call per connection
					// for nothing. Not with a journal: systemd's store
					// holds the socket too, and lets go of it later.
					return false, nil
				}
				if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
					return false, c.peerErr(dst, "shutdown %s: %w", err)
				}
				return false, nil
			}
			if !src.readable && !src.urg {
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

// writeFailed handles a failed write to dst. If dst's peer has gone away
// entirely (a Unix peer that closed: EPIPE after EPOLLHUP), the bytes of
// h can never arrive, but the other direction may still be delivering
// what that peer sent before it left: h is marked lost, and the connection
// ends (with a reset, since bytes were lost) once that direction is done
// (gone).
// Any other failure is returned and ends the connection at once.
func (l *loop) writeFailed(c *conn, h *half, dst *sock, err error) error {
	// EPIPE with no pending error (or on a Unix socket, whose error only
	// says that its peer closed with unread bytes): the socket cannot
	// send any more although we never shut it down. The hang-up that
	// says so may still wait in epoll's queue, so dst.hup is not asked.
	if (!dst.err || dst.unix) && errors.Is(err, unix.EPIPE) {
		l.taint(c)
		h.lost = true
		h.dropped = true // what the pipe held, at least
		h.oobHeld = false
		l.dropPipe(h)
		return nil
	}
	return err
}

// discard reads and drops what src sends into a lost direction (its
// destination's peer is gone), so that src's writer does not block: a
// direct writer would have had EPIPE at once, and this one is reset once
// the other direction has delivered. It reports whether its budget ran
// out with src still readable.
func (l *loop) discard(h *half, src *sock) (more bool) {
	if l.scratch == nil {
		l.scratch = make([]byte, scratchSize)
	}
	for moved := 0; src.readable && !h.eof; {
		if moved >= budget {
			return true
		}
		n, err := unix.Read(src.fd, l.scratch)
		switch {
		case err == unix.EAGAIN:
			src.readable = false
		case err == unix.EINTR:
		case err != nil || n == 0:
			h.eof = true // its end, clean or not, changes nothing now
		default:
			moved += n
			h.dropped = true
		}
	}
	return false
}

// atMark reports whether socket fd's next byte is at an urgent mark.
func atMark(fd int) bool {
	at, err := unix.IoctlGetInt(fd, unix.SIOCATMARK)
	return err == nil && at != 0
}

// passUrgent passes TCP urgent data on as urgent data. It runs with h's
// pipe empty, so every in-band byte before the mark has been delivered.
// Not yet at the mark, it does nothing: splice moves the bytes before the
// mark and stops there. At the mark it reads the urgent byte
// (recv MSG_OOB), sends it to dst with MSG_OOB, then reads the next
// in-band bytes with recv, which moves past the mark (splice cannot), and
// puts them in the pipe. blocked means it must wait for an event.
func (l *loop) passUrgent(c *conn, h *half, src, dst *sock) (progress, blocked bool, err error) {
	if !h.oobHeld {
		at, err := unix.IoctlGetInt(src.fd, unix.SIOCATMARK)
		if err != nil {
			return false, false, c.peerErr(src, "urgent data from %s: %w", err)
		}
		if at == 0 {
			return false, false, nil
		}
		var b [1]byte
		n, _, err := unix.Recvfrom(src.fd, b[:], unix.MSG_OOB)
		switch {
		case err == nil && n == 1:
			h.oob, h.oobHeld = b[0], true
		case err == unix.EAGAIN:
			// The urgent pointer arrived before its byte.
			return false, true, nil
		case err == nil, err == unix.EINVAL:
			// No urgent byte to read (already read, or none): only the
			// mark is left to pass.
		default:
			return false, false, c.peerErr(src, "urgent data from %s: %w", err)
		}
	}
	if h.oobHeld {
		if !dst.writable {
			return false, true, nil
		}
		_, err := unix.SendmsgN(dst.fd, []byte{h.oob}, nil, nil, unix.MSG_OOB)
		switch err {
		case nil:
			h.oobHeld = false
			h.sent++
			l.tally.copied++
		case unix.EAGAIN:
			dst.writable = false
			return false, true, nil
		default:
			return false, false, l.writeFailed(c, h, dst, c.peerErr(dst, "urgent data to %s: %w", err))
		}
	}
	if h.p == nil {
		p, err := l.pool.get()
		if err != nil {
			// No pipe: the urgent byte went on, and copyChunk's recv
			// moves past the mark with the bytes after it.
			src.urg = false
			return true, false, nil
		}
		h.p = p
		l.own(c, h)
	}
	if l.scratch == nil {
		l.scratch = make([]byte, scratchSize)
	}
	// The pipe is empty and holds at least one page, so what one read of
	// up to a page brings always fits.
	n, err := unix.Read(src.fd, l.scratch[:min(pageSize, h.p.size)])
	switch {
	case err == unix.EAGAIN:
		// Past the mark, nothing more yet.
		src.urg = false
		src.readable = false
		return true, false, nil
	case err != nil:
		return false, false, c.peerErr(src, "read from %s: %w", err)
	case n == 0:
		src.urg = false
		h.eof = true
		return true, false, nil
	}
	src.urg = false
	if _, err := unix.Write(h.p.w, l.scratch[:n]); err != nil {
		return false, false, fmt.Errorf("urgent data from %s: fill pipe: %w", sideName(c, src), err)
	}
	h.n = n
	l.tally.copied += int64(n) // through user space into the pipe
	c.last = l.now
	return true, false, nil
}

// minFill is the least a read takes into an empty pipe under a pipe
// budget: enough that the write that follows either empties the pipe or
// hits a full socket, whose EPOLLOUT then says when to go on.
const minFill = 64 << 10

// fillFor returns how much to read into pipe p, of up to size bytes, for
// socket dst: what its send buffer has room for, and with a
// TCP_NOTSENT_LOWAT of lowat (0: none) no more than lowat less the bytes
// it holds not yet sent, but at least minFill. Bytes
// dst cannot take would wait in the pipe, which then stays in use; under
// a pipe budget every pipe in use shrinks the next one's share, and with
// it the bytes each splice moves. Bytes left in the source socket are
// kept by TCP's flow control instead, at no cost to the budget.
func fillFor(p *pipe, dst, size, lowat int) int {
	outq, err := unix.IoctlGetInt(dst, unix.SIOCOUTQ)
	if err != nil {
		return size
	}
	// The send buffer counts each segment's overhead too: leave an
	// eighth for it.
	room := func() int { return int(p.sndbuf) - outq - outq/8 }
	if p.sndbuf == 0 || room() < size {
		// Read again whenever it is what limits the read: TCP grows it
		// as the connection runs (from about 87 KB on a real network),
		// and shrinks it under memory pressure.
		n, err := unix.GetsockoptInt(dst, unix.SOL_SOCKET, unix.SO_SNDBUF)
		if err != nil {
			return size
		}
		p.sndbuf = int32(min(n, 1<<30))
	}
	fill := room()
	if lowat > 0 {
		// The send queue takes bytes while fewer than lowat wait unsent.
		// With none waiting, the peer's window lets everything go out at
		// once, and only the buffer's room counts; once some wait, its
		// reader is behind, and bytes read beyond lowat would wait in
		// the pipe.
		if nsd, err := unix.IoctlGetInt(dst, unix.SIOCOUTQNSD); err == nil && nsd > 0 {
			fill = min(fill, lowat-nsd)
		}
	}
	return max(min(size, fill&^(pageSize-1)), min(size, minFill))
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
// bytes moved; zero with no error means one side would block, or (with
// src.urg set) that src stands at an urgent mark whose byte passUrgent
// must send on first.
func (l *loop) copyChunk(c *conn, src, dst *sock, h *half) (int, error) {
	if !dst.writable {
		return 0, nil
	}
	if l.scratch == nil {
		l.scratch = make([]byte, scratchSize)
	}
	if !src.unix && atMark(src.fd) {
		// At an urgent mark: a recv here would step over an urgent byte
		// not yet read, and the stream would go on without it. One that
		// is pending (or announced) is passUrgent's to send on.
		var b [1]byte
		if _, _, err := unix.Recvfrom(src.fd, b[:], unix.MSG_OOB|unix.MSG_PEEK); err == nil || err == unix.EAGAIN {
			src.urg = true
			return 0, nil
		}
	}
	n, _, err := unix.Recvfrom(src.fd, l.scratch, unix.MSG_PEEK)
	switch {
	case err == unix.EAGAIN:
		src.readable = false
		return 0, nil
	case err != nil:
		return 0, c.peerErr(src, "read from %s: %w", err)
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
		return 0, c.peerErr(dst, "write to %s: %w", err)
	}
	if _, err := unix.Read(src.fd, l.scratch[:w]); err != nil {
		return 0, c.peerErr(src, "read from %s: %w", err)
	}
	return w, nil
}
