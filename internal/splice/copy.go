package splice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// copyEngine relays each connection with two goroutines running io.Copy.
// It is ModeCopy, the engine off Linux, and where a socket refuses splice.
type copyEngine struct {
	r      *Relay
	ctx    context.Context // canceled by closeAll; aborts dials in progress
	cancel context.CancelFunc
	accept sync.WaitGroup
	freed  chan struct{} // a slot freed below MaxConn

	bufs sync.Pool // *[]byte of copyBufSize, recycled between connections

	mu      sync.Mutex
	lns     map[net.Listener]net.Listener // caller's listener → our duplicate
	live    map[*copyConn]struct{}
	stopped bool // stopAccepting ran
	final   bool // closeAll ran: new connections are closed at once
}

func newCopyEngine(r *Relay) *copyEngine {
	ctx, cancel := context.WithCancel(context.Background())
	e := &copyEngine{
		r: r, ctx: ctx, cancel: cancel, freed: make(chan struct{}, 1),
		lns: make(map[net.Listener]net.Listener), live: make(map[*copyConn]struct{}),
	}
	e.bufs.New = newCopyBuf
	return e
}

func newCopyBuf() any {
	b := make([]byte, copyBufSize)
	return &b
}

// serve accepts on a duplicate of ln, so that stopping never closes the
// caller's socket.
func (e *copyEngine) serve(ln net.Listener, f *Frontend) error {
	fl, ok := ln.(interface{ File() (*os.File, error) })
	if !ok {
		return fmt.Errorf("listener %s: %T has no file descriptor", ln.Addr(), ln)
	}
	file, err := fl.File()
	if err != nil {
		return fmt.Errorf("listener %s: duplicate fd: %w", ln.Addr(), err)
	}
	dup, err := net.FileListener(file)
	file.Close()
	if err != nil {
		return fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		dup.Close()
		return nil
	}
	e.lns[ln] = dup
	e.accept.Add(1)
	go e.acceptLoop(dup, f)
	return nil
}

func (e *copyEngine) unserve(ln net.Listener) {
	e.mu.Lock()
	dup := e.lns[ln]
	delete(e.lns, ln)
	e.mu.Unlock()
	if dup != nil {
		dup.Close()
	}
}

// resumeAccepting wakes an accept loop waiting at MaxConn.
func (e *copyEngine) resumeAccepting() {
	select {
	case e.freed <- struct{}{}:
	default:
	}
}

// waitSlot blocks while MaxConn connections are live; it reports false
// when the engine stops. It reserves nothing: a slot is counted only once
// Accept returns, so a listener waiting in Accept is not a connection.
// With several listeners the count may pass MaxConn by one per listener
// for a moment.
func (e *copyEngine) waitSlot() bool {
	for {
		m := e.r.maxConn.Load()
		if m == 0 || e.r.stats.active.Load() < m || e.r.pausedFull() {
			return true
		}
		// Other accept loops may be waiting too and only one is woken:
		// look again every 50ms.
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-e.freed:
		case <-t.C:
		case <-e.ctx.Done():
			t.Stop()
			return false
		}
		t.Stop()
	}
}

// acceptLoop accepts on ln until it is closed, starting a goroutine per
// connection.
func (e *copyEngine) acceptLoop(ln net.Listener, f *Frontend) {
	defer e.accept.Done()
	var lastLog time.Time
	for {
		if !e.waitSlot() {
			return
		}
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning, log at
			// most once a second.
			if time.Since(lastLog) >= time.Second {
				lastLog = time.Now()
				e.r.logger().Error("accept failed; retrying in 100ms", "listen", ln.Addr().String(), "err", err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		e.r.stats.active.Add(1)
		e.r.stats.accepted.Add(1)
		go e.dialAndRelay(c, f.Route())
	}
}

// peerOf returns c's remote address as an AddrPort (zero for unix
// sockets).
func peerOf(c net.Conn) netip.AddrPort {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// dialAndRelay connects client to a backend picked by rt, retrying on
// others while retries remain, and relays until both directions are done.
// A client that cannot be served is reset.
func (e *copyEngine) dialAndRelay(client net.Conn, rt *Route) {
	d := &dialing{rt: rt, peer: peerOf(client)}
	keepAlive(client, rt.ClientKeepAlive)
	for {
		t, err := d.pick(e.r)
		if err != nil {
			resetConn(client)
			e.r.connDone(1)
			return
		}
		dl := net.Dialer{Timeout: rt.connectTimeout(), KeepAlive: -1}
		backend, err := dl.DialContext(e.ctx, t.Addr().Network(), t.Addr().String())
		if err == nil {
			t.Connected(nil)
			keepAlive(backend, rt.ServerKeepAlive)
			e.relay(client, backend, t, d)
			return
		}
		if d.failed(e.r, t, err, e.ctx.Err() != nil) {
			continue
		}
		resetConn(client)
		e.r.connDone(1)
		return
	}
}

// relay moves bytes between two connected sockets until both directions
// have ended, then closes both. It releases t and counts the connection
// as done.
func (e *copyEngine) relay(client, backend net.Conn, t Target, d *dialing) {
	defer e.r.connDone(1)
	defer t.Release()
	rt := d.rt
	p := &copyConn{client: client, backend: backend, idle: rt.IdleTimeout, halfClose: rt.HalfCloseTimeout, bufs: &e.bufs}
	if !e.track(p) {
		resetConn(client)
		resetConn(backend)
		return
	}
	defer e.untrack(p)
	p.touch()
	if p.idle > 0 {
		p.timer = time.AfterFunc(p.idle, p.checkIdle)
	}
	done := make(chan struct{})
	go p.copyHalfAsync(backend, client, done) // client → backend
	p.copyHalf(client, backend)               // backend → client
	<-done
	if from := p.lostFrom.Load(); from != nil && p.err() == nil {
		// Both directions ended before the other's resetLost could:
		// the same reset, after the same wait.
		waitFlushed(*from)
		p.abort(errUndeliverable)
	}
	p.stopTimers()
	client.Close()
	backend.Close()
	e.r.logEnd(d, t, p.err())
}

func (e *copyEngine) track(p *copyConn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.final {
		return false
	}
	e.live[p] = struct{}{}
	return true
}

func (e *copyEngine) untrack(p *copyConn) {
	e.mu.Lock()
	delete(e.live, p)
	e.mu.Unlock()
}

func (e *copyEngine) stopAccepting() {
	e.mu.Lock()
	e.stopped = true
	lns := e.lns
	e.lns = map[net.Listener]net.Listener{}
	e.mu.Unlock()
	for _, dup := range lns {
		dup.Close()
	}
	e.accept.Wait()
}

func (e *copyEngine) closeAll() {
	e.cancel()
	e.stopAccepting()
	e.mu.Lock()
	e.final = true
	live := make([]*copyConn, 0, len(e.live))
	for p := range e.live {
		live = append(live, p)
	}
	e.mu.Unlock()
	for _, p := range live {
		p.abort(errClosedByRelay)
	}
}

func (e *copyEngine) pipes() (open, idle int64) { return 0, 0 }

// alive is always true: the copy engine has no loop that could stall.
func (e *copyEngine) alive(time.Duration) bool { return true }

// copyConn is one connection relayed by the copy engine.
type copyConn struct {
	client, backend net.Conn
	idle            time.Duration
	halfClose       time.Duration
	mu              sync.Mutex   // guards timer and halfTimer
	timer           *time.Timer  // idle timer
	halfTimer       *time.Timer  // half-close timer, once a direction ended
	ended           atomic.Int32 // directions that ended cleanly
	last            atomic.Int64 // unix nanos of the last progress
	halfAt          atomic.Int64 // unix nanos when the first direction ended
	once            sync.Once
	reason          atomic.Pointer[error]
	bufs            *sync.Pool
	// lostFrom is the connection whose bytes could not be delivered: its
	// direction's Unix destination had closed. It is reset when the
	// other direction ends.
	lostFrom atomic.Pointer[net.Conn]
}

func (p *copyConn) touch() { p.last.Store(time.Now().UnixNano()) }

func (p *copyConn) idleFor() time.Duration {
	return time.Duration(time.Now().UnixNano() - p.last.Load())
}

// checkIdle runs from the idle timer: it resets an idle connection or
// re-arms the timer for the rest of the window.
func (p *copyConn) checkIdle() {
	d := p.idleFor()
	if d >= p.idle {
		p.abort(errIdle)
		return
	}
	p.mu.Lock()
	p.timer.Reset(p.idle - d)
	p.mu.Unlock()
}

// lose handles a direction whose Unix destination closed: src's bytes can
// never arrive, but what that peer wrote before it left may still flow
// the other way. src's bytes are read and dropped meanwhile, so that its
// writer does not block (a direct writer would get EPIPE at once), and src
// is reset once the other direction has ended and delivered (resetLost).
func (p *copyConn) lose(src net.Conn) {
	p.lostFrom.Store(&src)
	if p.ended.Load() > 0 {
		go p.resetLost() // the other direction ended first; discard meanwhile
	}
	src.SetReadDeadline(time.Time{}) // the idle timer still runs
	io.Copy(io.Discard, src)         // until src ends or is reset
}

// resetLost resets the connection, once the bytes queued for it are
// delivered, if a direction's bytes were lost (lose) and the other
// direction has ended.
func (p *copyConn) resetLost() {
	from := p.lostFrom.Load()
	if from == nil || p.ended.Load() == 0 || p.err() != nil {
		return
	}
	waitFlushed(*from)
	p.abort(errUndeliverable)
}

// halfClosed starts the half-close timer when the first direction ends.
// It counts from the later of that moment and the last byte moved.
func (p *copyConn) halfClosed() {
	if p.ended.Add(1) != 1 || p.halfClose <= 0 {
		return
	}
	p.mu.Lock()
	p.halfAt.Store(time.Now().UnixNano())
	p.halfTimer = time.AfterFunc(p.halfClose, p.checkHalfClose)
	p.mu.Unlock()
}

// checkHalfClose runs from the half-close timer: it resets a half-closed
// connection on which nothing moved for halfClose, or re-arms the timer.
func (p *copyConn) checkHalfClose() {
	quiet := time.Duration(time.Now().UnixNano() - max(p.last.Load(), p.halfAt.Load()))
	if quiet >= p.halfClose {
		p.abort(errHalfClose)
		return
	}
	p.mu.Lock()
	p.halfTimer.Reset(p.halfClose - quiet)
	p.mu.Unlock()
}

func (p *copyConn) stopTimers() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range []*time.Timer{p.timer, p.halfTimer} {
		if t != nil {
			t.Stop()
		}
	}
}

func (p *copyConn) copyHalfAsync(dst, src net.Conn, done chan<- struct{}) {
	defer close(done)
	p.copyHalf(dst, src)
}

// copyBufSize is the user-space buffer of one copying direction.
const copyBufSize = 64 << 10

// stallCheck is how long a write may block before the relay looks whether
// the reading side has failed meanwhile (a client that reset while its
// bytes wait for a backend that does not read).
const stallCheck = time.Second

// copyHalf copies src to dst until src's EOF, then half-closes dst. With an
// idle timeout, a read deadline wakes the read every half window so that
// the idle timer can look at the recorded progress; a read deadline fires
// before any byte is consumed, so no byte is lost by it. Writes carry a
// deadline too: a write blocked for stallCheck looks at src's pending
// socket error and ends the connection if src has failed.
func (p *copyConn) copyHalf(dst, src net.Conn) {
	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	buf := *bp
	w := stallWriter{p: p, dst: dst, src: src}
	readArmed := false
	for {
		if p.idle > 0 && !readArmed {
			src.SetReadDeadline(time.Now().Add(p.idle / 2))
			readArmed = true
		}
		n, err := src.Read(buf)
		if n > 0 {
			p.touch()
			if werr := w.writeAll(buf[:n]); werr != nil {
				if isUnix(dst) && errors.Is(werr, syscall.EPIPE) && p.err() == nil {
					p.lose(src)
					return
				}
				p.abort(werr)
				return
			}
		}
		switch {
		case err == nil:
		case err == io.EOF:
			closeWrite(dst)
			p.halfClosed()
			p.resetLost()
			return
		case p.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) && p.err() == nil:
			readArmed = false
		default:
			if isUnix(src) && p.err() == nil {
				// A Unix peer that closed with unread bytes: everything
				// it wrote has been passed on; dst is reset once that
				// is delivered, as a direct Unix peer reads every byte
				// before its ECONNRESET.
				waitFlushed(dst)
				err = fmt.Errorf("%w: %w", errPeerAborted, err)
			}
			p.abort(err)
			return
		}
	}
}

// stallWriter writes one direction's bytes to dst, noticing a failure of
// src while a write is blocked.
type stallWriter struct {
	p        *copyConn
	dst, src net.Conn
	deadline time.Time // write deadline now set on dst; zero: none
}

// writeAll writes all of b to dst. Every stallCheck that a write stays
// blocked it checks src; it returns src's error if src has failed.
func (w *stallWriter) writeAll(b []byte) error {
	for len(b) > 0 {
		// Re-arm at most every half stallCheck: one timer update per
		// half second, not per write.
		if now := time.Now(); w.deadline.Sub(now) < stallCheck/2 {
			w.deadline = now.Add(stallCheck)
			w.dst.SetWriteDeadline(w.deadline)
		}
		n, err := w.dst.Write(b)
		b = b[n:]
		if err == nil {
			continue // the read of these bytes recorded the progress
		}
		if n > 0 {
			w.p.touch() // progress while blocked
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || w.p.err() != nil {
			return err
		}
		w.deadline = time.Time{}
		if isUnix(w.src) {
			// A Unix source's error only says that its peer closed
			// with bytes unread: what it wrote is still to be read.
			continue
		}
		if serr := pendingError(w.src); serr != nil {
			return fmt.Errorf("%s while its bytes waited: %w", w.src.RemoteAddr(), serr)
		}
	}
	return nil
}

// abort records why the connection ends and resets both sockets, which
// unblocks both copying goroutines: each peer sees a failure, not a clean
// end of stream, since a direction had not finished.
func (p *copyConn) abort(err error) {
	p.once.Do(func() {
		p.reason.Store(&err)
		resetConn(p.client)
		resetConn(p.backend)
	})
}

// isUnix reports whether c is a Unix socket connection.
func isUnix(c net.Conn) bool {
	_, ok := c.(*net.UnixConn)
	return ok
}

// resetConn closes c with a reset (TCP RST) where it can, so that its
// peer sees a failure rather than a clean end of stream.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// keepAlive applies ka to c if it is a TCP connection.
func keepAlive(c net.Conn, ka KeepAlive) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	count := -1 // keep the kernel's default
	if ka.Count > 0 {
		count = ka.Count
	}
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: ka.Idle > 0, Idle: ka.Idle, Interval: ka.interval(), Count: count})
	if ka.UserTimeout > 0 {
		setUserTimeout(tc, ka.UserTimeout)
	}
}

func (p *copyConn) err() error {
	if e := p.reason.Load(); e != nil {
		return *e
	}
	return nil
}

// closeWrite half-closes c so that its peer reads EOF.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
