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

	tally  lockedTally
	nextID atomic.Uint64

	mu      sync.Mutex
	lns     map[net.Listener]net.Listener // caller's listener → our duplicate
	live    map[*copyConn]struct{}
	waiting map[*copyConn]struct{} // accepted, not yet relayed: in a header, hello or dial
	waited  sync.WaitGroup         // one per entry of waiting
	stopped bool                   // stopAccepting ran
	final   bool                   // closeAll ran: new connections are closed at once
}

func newCopyEngine(r *Relay) *copyEngine {
	ctx, cancel := context.WithCancel(context.Background())
	e := &copyEngine{
		r: r, ctx: ctx, cancel: cancel, freed: make(chan struct{}, 1),
		lns: make(map[net.Listener]net.Listener), live: make(map[*copyConn]struct{}),
		waiting: make(map[*copyConn]struct{}),
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
		rt := f.Route()
		p := &copyConn{client: c, d: dialing{rt: rt, peer: peerOf(c)}, start: time.Now(), id: e.newID()}
		// Awaited before its goroutine starts: closeAll, which waits for
		// this loop to stop, then finds it.
		e.await(p)
		go e.dialAndRelay(p)
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

// dialAndRelay connects p's client to a backend picked by its route,
// retrying on others while retries remain, and relays until both
// directions are done. A client that cannot be served is reset.
func (e *copyEngine) dialAndRelay(p *copyConn) {
	client, d := p.client, &p.d
	rt := d.rt
	e.counted(func(t *tally) {
		f := t.frontend(rt.Name)
		f.Accepted++
		f.Active++
	})
	if !p.awaited {
		resetConn(client)
		e.done(p, nil, errClosedByRelay)
		return
	}
	if h := rt.Header; h != nil {
		if !h.Trusted(d.peer.Addr()) {
			resetConn(client)
			e.done(p, nil, errUntrusted)
			return
		}
		named, err := readHeaderConn(e.ctx, client, h, time.Now().Add(rt.connectTimeout()))
		if err != nil {
			resetConn(client)
			e.done(p, nil, err)
			return
		}
		if named.IsValid() {
			d.peer = named
		}
	}
	if rt.ACL != nil && !rt.ACL.Allows(d.peer.Addr()) {
		resetConn(client)
		e.done(p, nil, errDenied)
		return
	}
	if err := d.takeSource(e.r.Clock()); err != nil {
		resetConn(client)
		e.done(p, nil, err)
		return
	}
	if rt.Limit != nil {
		if !rt.Limit.take() {
			resetConn(client)
			e.done(p, nil, errMaxConn)
			return
		}
		d.limited = true
	}
	if h := rt.Hello; h != nil {
		if err := readHelloConn(e.ctx, e.r, client, h, d); err != nil {
			resetConn(client)
			e.done(p, nil, err)
			return
		}
		rt = d.rt // the route the server name chose
	}
	keepAlive(client, rt.ClientKeepAlive)
	for {
		t, err := d.pick(e.r)
		if err != nil {
			e.fail(p)
			return
		}
		p.tries++
		e.counted(func(tl *tally) {
			if n := len(d.tried); n > 0 {
				tl.server(d.tried[n-1].Name()).Retries++ // it failed, and t is tried instead
			}
			tl.server(t.Name()).Attempts++
		})
		dl := net.Dialer{Timeout: rt.connectTimeout(), KeepAlive: -1}
		if rt.Source.IsValid() && t.Addr().Network() == "tcp" {
			dl.LocalAddr = &net.TCPAddr{IP: rt.Source.AsSlice()}
			dl.Control = bindNoPort
		}
		began := time.Now()
		backend, err := dl.DialContext(e.ctx, t.Addr().Network(), t.Addr().String())
		if err == nil {
			took := time.Since(began)
			p.connect = time.Since(p.start)
			e.counted(func(tl *tally) { tl.server(t.Name()).observeConnect(took) })
			t.Connected(nil)
			keepAlive(backend, rt.ServerKeepAlive)
			if rt.Preamble != nil {
				var local netip.AddrPort
				if a, ok := client.LocalAddr().(*net.TCPAddr); ok {
					local = a.AddrPort()
				}
				backend.SetWriteDeadline(time.Now().Add(rt.connectTimeout()))
				_, err := backend.Write(rt.Preamble(d.peer, local))
				backend.SetWriteDeadline(time.Time{})
				if err != nil {
					resetConn(backend)
					t.Release()
					p.t = t
					p.d.setCause(CauseServerReset, fmt.Errorf("write PROXY header to backend: %w", err))
					e.fail(p)
					return
				}
			}
			e.relay(p, backend, t)
			return
		}
		retry := d.failed(e.r, t, err, e.ctx.Err() != nil)
		e.counted(func(tl *tally) { tl.server(t.Name()).Failures++ })
		if !retry {
			e.fail(p)
			return
		}
	}
}

// fail resets a client that could not be served (d's cause says why).
func (e *copyEngine) fail(p *copyConn) {
	resetConn(p.client)
	e.done(p, nil, nil)
}

// newID returns a connection ID no splice loop uses.
func (e *copyEngine) newID() uint64 { return 1<<63 | e.nextID.Add(1) }

// counted runs f on the engine's counters, under their lock.
func (e *copyEngine) counted(f func(*tally)) {
	e.tally.mu.Lock()
	f(&e.tally.t)
	e.tally.mu.Unlock()
}

// adopt relays a connection the splice engine connected but cannot
// splice; it was accepted at start and connected after connect.
//
// linger0 says its sockets have SO_LINGER 0 (set while a journal held
// them), to be cleared only if it ends cleanly.
func (e *copyEngine) adopt(client, backend net.Conn, t Target, d *dialing, start time.Time, connect time.Duration, tries int, linger0 bool) {
	p := &copyConn{client: client, d: *d, start: start, connect: connect, tries: tries, id: e.newID(), linger0: linger0}
	e.counted(func(tl *tally) { tl.frontend(d.rt.Name).Active++ })
	e.relay(p, backend, t)
}

// relay moves bytes between p's client and backend until both directions
// have ended, then closes both. It releases t and counts the connection
// as done.
func (e *copyEngine) relay(p *copyConn, backend net.Conn, t Target) {
	rt := p.d.rt
	client := p.client
	p.backend, p.t = backend, t
	p.idle, p.halfClose, p.bufs = rt.IdleTimeout, rt.HalfCloseTimeout, &e.bufs
	if !e.track(p) {
		resetConn(client)
		resetConn(backend)
		e.done(p, t, errClosedByRelay)
		return
	}
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
	if p.linger0 && p.err() == nil {
		for _, c := range []net.Conn{client, backend} {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(-1)
			}
		}
	}
	client.Close()
	backend.Close()
	e.done(p, t, p.err()) // untracks p
}

// done releases what p held (t, its frontend's slot), reports its end,
// and counts it as finished: in that order, so that whoever reads the
// report finds the slots free, and a shutdown waits for the report.
func (e *copyEngine) done(p *copyConn, t Target, reason error) {
	if t != nil {
		t.Release()
	}
	if p.d.limited {
		p.d.rt.Limit.release()
	}
	p.d.releaseSource()
	e.ended(p, t, reason)
	e.r.connDone(1)
	e.unawait(p)
}

// ended counts p's end and its bytes, and reports it. t is the server it
// was relayed to, or nil if none was connected; reason is nil for a
// clean end, or one whose cause p.d holds.
func (e *copyEngine) ended(p *copyConn, t Target, reason error) {
	clean := reason == nil && !p.d.causeSet
	cause := endCause(reason, &p.d, clean, p.clientFirst.Load(), e.r.drain.Load())
	in, out := p.in.Load(), p.out.Load()
	// p leaves the live set and enters the counters at once, so that a
	// snapshot sees its bytes once: never in both, never in neither.
	e.mu.Lock()
	delete(e.live, p)
	delete(e.waiting, p)
	e.counted(func(tl *tally) {
		f := tl.frontend(p.d.rt.Name)
		f.Active--
		f.Ended[cause]++
		f.BytesIn += in
		f.BytesOut += out
		if t != nil {
			s := tl.server(t.Name())
			s.BytesIn += in
			s.BytesOut += out
		}
		tl.copied += in + out
	})
	e.mu.Unlock()
	if e.r.OnEnd == nil && cause.Clean() {
		return
	}
	ci := p.describe()
	ci.Cause = cause
	if !cause.Clean() {
		ci.Err = reason
		if reason == nil {
			ci.Err = p.d.lastErr
		}
	}
	e.r.report(&ci)
}

// describe returns what is known of p now.
func (p *copyConn) describe() ConnInfo {
	ci := ConnInfo{
		ID: p.id, Frontend: p.d.rt.Name, Backend: p.d.backendName(), Client: p.d.peer, Start: p.start,
		Connect: p.connect, Duration: time.Since(p.start), BytesIn: p.in.Load(),
		BytesOut: p.out.Load(), Tries: p.tries, Relay: ModeCopy,
	}
	if t := lastTarget(p.t, p.d.tried); t != nil {
		ci.Server, ci.ServerAddr = t.Name(), t.Addr()
	}
	return ci
}

// snapshot adds the engine's counters, and the bytes its live
// connections moved so far, to snap.
func (e *copyEngine) snapshot(snap *Snapshot, _ time.Duration) {
	e.mu.Lock() // held across both reads: see ended
	defer e.mu.Unlock()
	e.tally.mu.Lock()
	e.tally.t.addTo(snap)
	e.tally.mu.Unlock()
	for p := range e.live {
		in, out := p.in.Load(), p.out.Load()
		snap.addLive(p.d.rt.Name, p.t.Name(), in, out)
		snap.Copied += in + out
	}
}

func (e *copyEngine) conns(time.Duration) []ConnInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]ConnInfo, 0, len(e.live))
	for p := range e.live {
		out = append(out, p.describe())
	}
	return out
}

func (e *copyEngine) kill(server string) int {
	e.mu.Lock()
	var hit []*copyConn
	for p := range e.live {
		if p.t.Name() == server {
			hit = append(hit, p)
		}
	}
	e.mu.Unlock()
	for _, p := range hit {
		p.abort(errKilled)
	}
	return len(hit)
}

// await records p as accepted and not yet relayed (p.awaited), so that
// closeAll resets its client even while it waits for a header, a hello
// or a dial, and waits for it to end. Not once closeAll ran.
func (e *copyEngine) await(p *copyConn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.final {
		return
	}
	e.waiting[p] = struct{}{}
	e.waited.Add(1)
	p.awaited = true
}

// unawait ends closeAll's wait for p, if it had one: once p relays, or
// once its end has been counted and reported.
func (e *copyEngine) unawait(p *copyConn) {
	if p.awaited {
		p.awaited = false
		e.waited.Done()
	}
}

// track moves p to the live set as its relay starts; false once closeAll
// ran (then done ends closeAll's wait for p, after reporting it).
func (e *copyEngine) track(p *copyConn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.waiting, p)
	if e.final {
		return false
	}
	e.live[p] = struct{}{}
	e.unawait(p)
	return true
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
	waiting := make([]net.Conn, 0, len(e.waiting))
	for p := range e.waiting {
		waiting = append(waiting, p.client)
	}
	e.mu.Unlock()
	for _, p := range live {
		p.abort(errClosedByRelay)
	}
	// Reset here, not left to their goroutines alone: the process may
	// exit as soon as this returns, and the kernel would then close them
	// with a clean FIN. Their goroutines, woken by the canceled ctx, find
	// them closed and end; the wait lets the last reference go, so that
	// each is closed (with its reset sent) and reported on return.
	for _, c := range waiting {
		resetConn(c)
	}
	left := make(chan struct{})
	go func() {
		e.waited.Wait()
		close(left)
	}()
	t := time.NewTimer(waitingGrace)
	defer t.Stop()
	select {
	case <-left:
	case <-t.C:
	}
}

// waitingGrace bounds how long closeAll waits for connections it reset
// before their relay began to end.
const waitingGrace = 2 * time.Second

func (e *copyEngine) pipes() (open, idle int64) { return 0, 0 }

// alive is always true: the copy engine has no loop that could stall.
func (e *copyEngine) alive(time.Duration) bool { return true }

// copyConn is one connection relayed by the copy engine.
type copyConn struct {
	linger0         bool        // SO_LINGER 0 until a clean end (adopt)
	finClient       atomic.Bool // the client was shut down for writing: a FIN went to it
	finBackend      atomic.Bool // the same for the backend
	awaited         bool        // in closeAll's wait (await); p's own goroutine clears it
	d               dialing
	t               Target // the server connected; nil before
	id              uint64
	start           time.Time     // accepted
	connect         time.Duration // accept to connected
	tries           int
	in, out         atomic.Int64 // bytes delivered: client → server, server → client
	clientFirst     atomic.Bool  // the client's stream ended first
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
func (p *copyConn) halfClosed(src net.Conn) {
	if p.ended.Add(1) != 1 {
		return
	}
	p.clientFirst.Store(src == p.client)
	if p.halfClose <= 0 {
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
	w := stallWriter{p: p, dst: dst, src: src, sent: &p.in}
	if src == p.backend {
		w.sent = &p.out
	}
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
				p.abort(p.peerErr(dst, werr))
				return
			}
		}
		switch {
		case err == nil:
		case err == io.EOF:
			if !p.finSent(src) && resetClosed(src) {
				// Reset by its peer (after a FIN or not), the error taken
				// by the other direction's failed write. A FIN passed on
				// now, before that direction's reset, would end dst's
				// stream cleanly. What src sent is delivered first.
				waitFlushed(dst)
				p.abort(p.peerErr(src, fmt.Errorf("read: %w", syscall.ECONNRESET)))
				return
			}
			if p.err() != nil {
				// Aborted meanwhile, maybe by the other direction, which
				// may have closed src before resetClosed looked (abort
				// records why before it closes anything): dst gets the
				// abort's reset, and no FIN before it. The abort is let
				// finish first, so that the relay's own close cannot come
				// before its reset.
				p.once.Do(func() {})
				return
			}
			// Recorded first: on loopback the FIN may be acknowledged,
			// and dst closed, before closeWrite returns, and the other
			// direction must not take that for a reset.
			p.shut(dst)
			closeWrite(dst)
			p.halfClosed(src)
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
			p.abort(p.peerErr(src, err))
			return
		}
	}
}

// stallWriter writes one direction's bytes to dst, noticing a failure of
// src while a write is blocked.
type stallWriter struct {
	p        *copyConn
	dst, src net.Conn
	deadline time.Time     // write deadline now set on dst; zero: none
	sent     *atomic.Int64 // counts the bytes written
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
		w.sent.Add(int64(n))
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
			return w.p.peerErr(w.src, fmt.Errorf("%s while its bytes waited: %w", w.src.RemoteAddr(), serr))
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

// peerErr marks err as a failure of c's peer, unless it already names
// one.
func (p *copyConn) peerErr(c net.Conn, err error) error {
	var pe *peerError
	if errors.As(err, &pe) {
		return err
	}
	return &peerError{server: c == p.backend, err: err}
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

// shut records that c was shut down for writing.
func (p *copyConn) shut(c net.Conn) {
	if c == p.client {
		p.finClient.Store(true)
	} else {
		p.finBackend.Store(true)
	}
}

// finSent reports whether c was shut down for writing (shut).
func (p *copyConn) finSent(c net.Conn) bool {
	if c == p.client {
		return p.finClient.Load()
	}
	return p.finBackend.Load()
}

// closeWrite half-closes c so that its peer reads EOF.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// freeze: the copy relay holds bytes in flight in user space, where no
// other process can take them, so it hands nothing over.
func (e *copyEngine) freeze() ([]FrozenConn, error) { return nil, ErrNoHandover }

// unfreeze lets the engine take listeners again after a hand-over that
// did not happen.
func (e *copyEngine) unfreeze() {
	e.mu.Lock()
	e.stopped = false
	e.mu.Unlock()
}

func (e *copyEngine) thaw(fc FrozenConn, _ *Route, t Target) error {
	dropThawed(fc, t)
	return ErrNoHandover
}
