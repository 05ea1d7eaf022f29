package splice

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// copyEngine relays each connection with two goroutines running io.Copy.
// It is ModeCopy, the engine off Linux, and where a socket refuses splice.
type copyEngine struct {
	r      *Relay
	lns    []net.Listener
	ctx    context.Context // canceled by closeAll; aborts dials in progress
	cancel context.CancelFunc
	accept sync.WaitGroup

	bufs sync.Pool // *[]byte of copyBufSize, recycled between connections

	mu    sync.Mutex
	live  map[*copyConn]struct{}
	final bool // closeAll ran: new connections are closed at once
}

func startCopy(r *Relay, lns []net.Listener) (*copyEngine, error) {
	e := newCopyEngine(r)
	e.lns = lns
	for _, ln := range lns {
		e.accept.Add(1)
		go e.acceptLoop(ln)
	}
	return e, nil
}

func newCopyEngine(r *Relay) *copyEngine {
	ctx, cancel := context.WithCancel(context.Background())
	e := &copyEngine{r: r, ctx: ctx, cancel: cancel, live: make(map[*copyConn]struct{})}
	e.bufs.New = newCopyBuf
	return e
}

func newCopyBuf() any {
	b := make([]byte, copyBufSize)
	return &b
}

// acceptLoop accepts on ln until it is closed, starting a goroutine per
// connection.
func (e *copyEngine) acceptLoop(ln net.Listener) {
	defer e.accept.Done()
	var lastLog time.Time
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning, log at
			// most once a second.
			if time.Since(lastLog) >= time.Second {
				lastLog = time.Now()
				e.r.logger().Error("accept failed; retrying in 100ms", "listener", ln.Addr().String(), "err", err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		e.r.connOpened()
		go e.dialAndRelay(c)
	}
}

// dialAndRelay connects client to the backend and relays until both
// directions are done.
func (e *copyEngine) dialAndRelay(client net.Conn) {
	d := net.Dialer{Timeout: e.r.connectTimeout()}
	backend, err := d.DialContext(e.ctx, e.r.Backend.Network(), e.r.Backend.String())
	if err != nil {
		e.r.stats.failed.Add(1)
		e.r.logger().Warn("backend connect failed; closing client",
			"client", client.RemoteAddr().String(), "backend", e.r.Backend.String(), "err", err)
		client.Close()
		e.r.connDone(1)
		return
	}
	e.relay(client, backend)
}

// relay moves bytes between two connected sockets until both directions
// have ended, then closes both. It counts the connection as done.
func (e *copyEngine) relay(client, backend net.Conn) {
	defer e.r.connDone(1)
	p := &copyConn{client: client, backend: backend, idle: e.r.IdleTimeout, bufs: &e.bufs}
	if !e.track(p) {
		client.Close()
		backend.Close()
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
	if p.timer != nil {
		p.timer.Stop()
	}
	client.Close()
	backend.Close()
	if err := p.err(); err != nil && !errors.Is(err, errClosedByRelay) {
		e.r.logger().Info("connection aborted", "client", client.RemoteAddr().String(),
			"backend", backend.RemoteAddr().String(), "err", err)
	}
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
	for _, ln := range e.lns {
		ln.Close()
	}
	e.accept.Wait()
}

func (e *copyEngine) closeAll() {
	e.stopAccepting()
	e.cancel()
	e.mu.Lock()
	e.final = true
	live := make([]*copyConn, 0, len(e.live))
	for p := range e.live {
		live = append(live, p)
	}
	e.mu.Unlock()
	for _, p := range live {
		p.abort(errClosedByRelay, false)
	}
}

func (e *copyEngine) pipes() (open, idle int64) { return 0, 0 }

// alive is always true: the copy engine has no loop that could stall.
func (e *copyEngine) alive(time.Duration) bool { return true }

// errClosedByRelay marks connections the relay closed itself on shutdown.
var errClosedByRelay = errors.New("closed by relay shutdown")

// errIdle is the reason for closing a connection whose idle timeout fired.
var errIdle = errors.New("idle timeout")

// copyConn is one connection relayed by the copy engine.
type copyConn struct {
	client, backend net.Conn
	idle            time.Duration
	timer           *time.Timer
	last            atomic.Int64 // unix nanos of the last progress
	once            sync.Once
	reason          atomic.Pointer[error]
	bufs            *sync.Pool
}

func (p *copyConn) touch() { p.last.Store(time.Now().UnixNano()) }

func (p *copyConn) idleFor() time.Duration {
	return time.Duration(time.Now().UnixNano() - p.last.Load())
}

// checkIdle runs from the idle timer: it closes an idle connection or
// re-arms the timer for the rest of the window.
func (p *copyConn) checkIdle() {
	d := p.idleFor()
	if d >= p.idle {
		p.abort(errIdle, false)
		return
	}
	p.timer.Reset(p.idle - d)
}

func (p *copyConn) copyHalfAsync(dst, src net.Conn, done chan<- struct{}) {
	defer close(done)
	p.copyHalf(dst, src)
}

// copyBufSize is the user-space buffer of one copying direction.
const copyBufSize = 64 << 10

// readerOnly and writerOnly hide ReadFrom/WriteTo so that io.CopyBuffer
// really copies through our buffer. Otherwise the standard library would
// splice through pipes of its own, kept in a pool that only the garbage
// collector empties: fds held long after their connections closed.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

// copyHalf copies src to dst until src's EOF, then half-closes dst. With an
// idle timeout, a read deadline makes the copy return every half window so
// progress is recorded; a read deadline fires before any byte is consumed,
// so no byte is lost by it.
func (p *copyConn) copyHalf(dst, src net.Conn) {
	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	for {
		if p.idle > 0 {
			src.SetReadDeadline(time.Now().Add(p.idle / 2))
		}
		n, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
		if n > 0 {
			p.touch()
		}
		if err == nil {
			closeWrite(dst)
			return
		}
		if p.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) && p.err() == nil {
			continue
		}
		p.abort(err, true)
		return
	}
}

// abort records why the connection ends and closes both sockets, which
// unblocks both copying goroutines. With reset, the sockets are closed
// with RST so that each peer sees a failure, not a clean end of stream.
func (p *copyConn) abort(err error, reset bool) {
	p.once.Do(func() {
		p.reason.Store(&err)
		for _, c := range []net.Conn{p.client, p.backend} {
			if tc, ok := c.(*net.TCPConn); ok && reset {
				tc.SetLinger(0)
			}
			c.Close()
		}
	})
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
