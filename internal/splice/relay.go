// Package splice relays TCP connections to backends, moving payload
// socket → pipe → socket inside the kernel.
//
// Typical usage:
//
//	r := &splice.Relay{MaxConn: 10000}
//	if err := r.Start(); err != nil { ... }
//	f := splice.NewFrontend(&splice.Route{Picker: picker, IdleTimeout: 10 * time.Minute})
//	r.Serve(listener, f)   // and more listeners; f.Set(route) reroutes new connections
//	...
//	err := r.Shutdown(ctx) // stop accepting, drain, then close what is left
//
// On Linux, with Mode ModeSplice (the default), a few epoll event loops (one
// per core) own every socket: they accept, dial the backend without
// blocking, and splice bytes through pipes taken from a bounded pool only
// while bytes are in flight. An idle connection costs a small struct and two
// socket fds; no goroutine, no pipe, no buffer. With ModeCopy, off Linux, or
// where the kernel refuses to splice a socket type, each connection is
// relayed by two goroutines running io.Copy, with the same half-close
// semantics.
//
// The package knows file descriptors, pipes and sockets. Which backend a
// connection goes to is asked of a Picker; the package knows nothing about
// configuration files, balancing or health.
package splice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode selects how payload is moved between the two sockets of a connection.
type Mode int

const (
	// ModeSplice moves bytes with splice(2) through kernel pipes, driven by
	// epoll event loops. Off Linux it behaves as ModeCopy.
	ModeSplice Mode = iota
	// ModeCopy moves bytes with io.Copy, two goroutines per connection.
	ModeCopy
)

// String returns the flag spelling of m ("splice" or "copy").
func (m Mode) String() string {
	switch m {
	case ModeSplice:
		return "splice"
	case ModeCopy:
		return "copy"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode turns "splice" or "copy" into a Mode.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "splice":
		return ModeSplice, nil
	case "copy":
		return ModeCopy, nil
	}
	return 0, fmt.Errorf("unknown relay mode %q: use splice or copy", s)
}

// Defaults used when the corresponding Relay field is zero.
const (
	// DefaultConnectTimeout bounds a backend connect; HAProxy setups
	// commonly use 5 s for "timeout connect".
	DefaultConnectTimeout = 5 * time.Second
	// defaultMaxIdlePipes is how many empty pipes each event loop keeps
	// for reuse (two fds each). Enough to cover a burst of concurrently
	// active connections without creating pipes, small enough that an
	// idle proxy holds few fds.
	defaultMaxIdlePipes = 32
)

// Target is one backend server a connection can be relayed to.
type Target interface {
	// Addr is where to connect: a *net.TCPAddr or a *net.UnixAddr.
	Addr() net.Addr
	// Name names the server in logs.
	Name() string
	// Connected is told the outcome of each connect to this target: nil
	// when it succeeded.
	Connected(err error)
	// Release is called once for every target Pick returned, when the
	// connection (or the failed connect attempt) using it has ended.
	Release()
}

// Picker chooses the backend for each connect attempt.
type Picker interface {
	// Pick returns the target for a connection from client; tried lists
	// the targets whose connect already failed for this connection. An
	// error means no target can take it: the client is closed.
	Pick(client netip.AddrPort, tried []Target) (Target, error)
}

// Route says where a frontend's new connections go and how long they may
// last. A connection keeps the Route it was accepted under.
type Route struct {
	// Name names the frontend in logs.
	Name string
	// Backend names the pool the Picker picks from, in logs.
	Backend string
	// Picker chooses each connection's backend.
	Picker Picker
	// ConnectTimeout bounds one backend connect; zero means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection after no byte has moved in either
	// direction for this long; zero disables it.
	IdleTimeout time.Duration
	// HalfCloseTimeout closes a connection this long after one side
	// finished sending (its FIN was passed on) while the other has not;
	// zero disables it.
	HalfCloseTimeout time.Duration
	// Retries is how many more targets a connection may try after a
	// failed connect.
	Retries int
	// ACL, if not nil, says which client addresses may connect; one it
	// refuses is reset at once, before any backend is dialed
	// (CauseDenied). Unix clients have no address and are not checked.
	ACL *ACL
	// Sources, if not nil, bounds what each client address may take
	// (connections at once, new ones per second); a client beyond it is
	// reset at once (CauseSourceLimit). Checked after ACL.
	Sources SourceLimiter
	// Source, if valid, is the local address of backend connections.
	Source netip.Addr
	// Header, if set, makes clients send a header (the PROXY protocol)
	// before their bytes, naming the client the route then uses for its
	// ACL, limits, picking and logs. Clients it does not trust are
	// refused; one whose header is missing, malformed or later than the
	// connect timeout is reset. The header is never forwarded.
	Header *HeaderRule
	// Hello, if set, routes each connection by the server name of the
	// TLS ClientHello it starts with, read without consuming it: the
	// bytes go to the server as they came.
	Hello *HelloRule
	// Preamble, if set, returns bytes sent to the server once connected,
	// before any byte of the client's (a PROXY protocol header), given
	// the client's address and the address it connected to (zero for a
	// Unix socket).
	Preamble func(client, local netip.AddrPort) []byte
	// Limit, if not nil, bounds the connections of the frontend: a client
	// beyond it is reset at once (CauseMaxConn). Share one ConnLimit
	// between the routes of successive reloads.
	Limit *ConnLimit
	// ClientKeepAlive sets TCP keepalive and TCP_USER_TIMEOUT on client
	// sockets; ServerKeepAlive on backend sockets. The zero value turns
	// keepalive off and keeps the kernel's user timeout.
	ClientKeepAlive, ServerKeepAlive KeepAlive
}

// SourceLimiter bounds what each client address may take. Event loops
// call it concurrently.
type SourceLimiter interface {
	// Take counts a new connection from addr at now (a monotonic clock in
	// ns); an error refuses it, saying which limit.
	Take(addr netip.Addr, now int64) error
	// Release ends a connection counted by a successful Take or by Hold.
	Release(addr netip.Addr)
	// Hold counts a connection from addr that is open already (handed
	// over by another process), whatever the limits.
	Hold(addr netip.Addr, now int64)
}

// KeepAlive configures how a TCP socket notices a peer that vanished: TCP
// keepalive probes and TCP_USER_TIMEOUT. Both relays apply the same
// settings.
type KeepAlive struct {
	// Idle is how long a connection is quiet before the first probe;
	// zero turns keepalive off.
	Idle time.Duration
	// Interval is the time between probes; zero means Idle.
	Interval time.Duration
	// Count is how many unanswered probes end the connection; zero keeps
	// the kernel's default (net.ipv4.tcp_keepalive_probes, 9).
	Count int
	// UserTimeout bounds how long sent bytes may stay unacknowledged
	// before the connection is ended (TCP_USER_TIMEOUT); zero keeps the
	// kernel's default.
	UserTimeout time.Duration
}

func (ka KeepAlive) interval() time.Duration {
	if ka.Interval > 0 {
		return ka.Interval
	}
	return ka.Idle
}

func (rt *Route) connectTimeout() time.Duration {
	if rt.ConnectTimeout > 0 {
		return rt.ConnectTimeout
	}
	return DefaultConnectTimeout
}

// shortestTimeout is the smallest timeout of rt that is set.
func (rt *Route) shortestTimeout() time.Duration {
	t := rt.connectTimeout()
	ds := []time.Duration{rt.IdleTimeout, rt.HalfCloseTimeout}
	if rt.Hello != nil {
		ds = append(ds, rt.Hello.timeout())
	}
	for _, d := range ds {
		if d > 0 && d < t {
			t = d
		}
	}
	return t
}

// Frontend holds the Route of one or more listeners. Set swaps it while
// the listeners keep serving: connections accepted afterwards follow the
// new Route, established ones keep theirs.
type Frontend struct {
	rt atomic.Pointer[Route]
}

// NewFrontend returns a Frontend routing by rt.
func NewFrontend(rt *Route) *Frontend {
	f := &Frontend{}
	f.rt.Store(rt)
	return f
}

// Set makes rt the route of connections accepted from now on.
func (f *Frontend) Set(rt *Route) { f.rt.Store(rt) }

// Route returns the current route.
func (f *Frontend) Route() *Route { return f.rt.Load() }

// Relay accepts client connections on the listeners it serves and relays
// each one to the target its frontend's Route picks. The zero value is
// ready to Start; every field's zero value means its documented default.
type Relay struct {
	// Mode selects splice (default) or copy relaying.
	Mode Mode
	// MaxConn is the most connections relayed at once; at the limit the
	// relay stops accepting and the kernel's backlog holds new clients
	// until a connection ends. Zero means no limit.
	MaxConn int
	// Loops is the number of event loops; zero means one per P
	// (GOMAXPROCS). Each loop holds a P while it runs, so a process whose
	// other goroutines must not wait should have a P more than loops.
	Loops int
	// PipeSize is the capacity asked of each pipe with F_SETPIPE_SZ; zero
	// means 1 MiB. The kernel may grant less (pipe-max-size,
	// pipe-user-pages-soft); rsp uses what it grants.
	PipeSize int
	// NotSentLowat is how many bytes not yet sent a TCP socket the splice
	// relay writes to may queue, once a write to it has blocked
	// (TCP_NOTSENT_LOWAT); zero means 128 KiB, negative leaves the
	// kernel's setting (net.ipv4.tcp_notsent_lowat, by default no limit).
	// Bytes beyond it wait in the pipe and in the source's socket, where
	// TCP's flow control holds them back, instead of in the send queue.
	NotSentLowat int
	// MaxIdlePipes is how many empty pipes each loop keeps for reuse; zero
	// means 32. Pipes beyond it are closed when returned.
	MaxIdlePipes int
	// Logger receives connection errors; nil means slog.Default().
	Logger *slog.Logger
	// Journal, if set, records the connections for a process that
	// resumes them after this one crashed (splice relay only).
	Journal Journal
	// OnEnd, if set, is called once for every connection that ends, on
	// the goroutine that ended it (often an event loop: it must not
	// block), with a ConnInfo valid only during the call. Without it,
	// ends that are not clean are logged to Logger, rate limited.
	OnEnd func(*ConnInfo)

	stats counters
	logs  logLimiter // rate limits per-connection log lines by cause
	test  testHooks  // set by this package's tests only

	epoch time.Time // zero of the engines' clocks (Clock)

	mu      sync.Mutex
	started bool
	impl    engine
	zero    chan struct{} // closed when active reaches zero while draining
	drain   atomic.Bool
	full    atomic.Bool  // accepting paused at MaxConn
	maxConn atomic.Int64 // MaxConn, changed by SetMaxConn
}

// engine is one relaying implementation: the epoll splice engine or the
// goroutine copy engine.
type engine interface {
	// serve starts accepting on a duplicate of ln's socket for f.
	serve(ln net.Listener, f *Frontend) error
	// unserve stops accepting on ln; its connections go on.
	unserve(ln net.Listener)
	// stopAccepting stops taking new connections on every listener.
	stopAccepting()
	// resumeAccepting resumes accepting paused at MaxConn.
	resumeAccepting()
	// closeAll closes every live connection and releases the engine's
	// resources.
	closeAll()
	// pipes reports pipes open and pipes idle in pools.
	pipes() (open, idle int64)
	// alive reports whether every event loop answered within timeout.
	alive(timeout time.Duration) bool
	// snapshot adds the engine's counters to snap, waiting at most
	// timeout for each event loop.
	snapshot(snap *Snapshot, timeout time.Duration)
	// conns lists the live connections.
	conns(timeout time.Duration) []ConnInfo
	// kill resets the live connections relayed to the target named
	// server and returns how many.
	kill(server string) int
	// freeze stops accepting and takes the established connections out.
	freeze() ([]FrozenConn, error)
	// thaw resumes a frozen connection.
	thaw(fc FrozenConn, rt *Route, t Target) error
	// unfreeze lets a frozen engine accept again.
	unfreeze()
}

// testHooks make a Relay pretend that the kernel refuses what tests
// cannot make it refuse on demand. Only this package's tests set them.
type testHooks struct {
	noSplice bool // every splice fails with EINVAL (a socket type that cannot splice)
	noPipes  bool // every new pipe fails with EMFILE
	// pipeBudget, if set, is the fs.pipe-user-pages-soft the relay
	// sizes its pipes against, as if unprivileged.
	pipeBudget int64
}

// Stats is a snapshot of a Relay's counters.
type Stats struct {
	Active    int64 // connections currently relayed or connecting
	Accepted  int64 // connections accepted since Start
	Failed    int64 // connections closed because the backend could not be reached
	Pipes     int64 // pipes currently open (each two fds)
	IdlePipes int64 // of those, pipes waiting empty in a pool
}

type counters struct {
	active   atomic.Int64
	accepted atomic.Int64
	failed   atomic.Int64
}

// ErrStarted is returned by Start on a Relay that was already started.
var ErrStarted = errors.New("relay already started")

// errNotStarted is returned by Serve before Start.
var errNotStarted = errors.New("relay not started")

// Start readies the relay; Serve then gives it listeners.
func (r *Relay) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return ErrStarted
	}
	r.zero = make(chan struct{})
	r.epoch = time.Now()
	r.maxConn.Store(int64(max(r.MaxConn, 0)))
	var (
		e   engine
		err error
	)
	if r.Mode == ModeCopy {
		e = newCopyEngine(r)
	} else {
		e, err = startSplice(r)
	}
	if err != nil {
		return err
	}
	r.impl = e
	r.started = true
	return nil
}

// Serve starts accepting connections on ln and routing them by f. The
// relay accepts on its own duplicate of ln's socket: the caller keeps ln
// and may close it at once or keep it (a socket from systemd, say) to
// Serve again later. Closing a duplicate never shuts the socket down, so
// connections queued in its backlog are not lost.
func (r *Relay) Serve(ln net.Listener, f *Frontend) error {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e == nil {
		return errNotStarted
	}
	if f == nil || f.Route() == nil || f.Route().Picker == nil {
		return fmt.Errorf("listener %s: frontend has no route", ln.Addr())
	}
	return e.serve(ln, f)
}

// SetMaxConn changes MaxConn of a started relay (0: no limit). Raising it
// resumes accepting at once.
func (r *Relay) SetMaxConn(n int) {
	r.maxConn.Store(int64(max(n, 0)))
	r.connDone(0)
}

// Unserve stops accepting on ln. Connections accepted from it go on.
func (r *Relay) Unserve(ln net.Listener) {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e != nil {
		e.unserve(ln)
	}
}

// Shutdown stops accepting new connections, waits for live ones to finish
// until ctx is done, then closes whatever is left. It returns an error
// wrapping ctx.Err() if connections had to be closed, nil if all finished
// on their own.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e == nil {
		return nil
	}
	e.stopAccepting()
	r.drain.Store(true)
	r.connDone(0) // wake the waiter if nothing is live
	var err error
	select {
	case <-r.zero:
	case <-ctx.Done():
		// Both may be ready (nothing live and ctx already done): select
		// picks at random, so look at zero again.
		select {
		case <-r.zero:
		default:
			err = fmt.Errorf("resetting %d connections still open: %w", r.stats.active.Load(), ctx.Err())
		}
	}
	e.closeAll()
	r.logs.flush(r.logger())
	return err
}

// Clock returns the relay's monotonic clock in ns, the one its engines
// pass to a SourceLimiter: a sweep of the limiter's idle entries must use
// it too.
func (r *Relay) Clock() int64 { return int64(time.Since(r.epoch)) }

// Stats returns the relay's current counters.
func (r *Relay) Stats() Stats {
	s := Stats{
		Active:   r.stats.active.Load(),
		Accepted: r.stats.accepted.Load(),
		Failed:   r.stats.failed.Load(),
	}
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e != nil {
		s.Pipes, s.IdlePipes = e.pipes()
	}
	return s
}

// Alive reports whether the relay's event loops are responsive: each must
// answer a no-op command within timeout. A relay not started is not alive.
func (r *Relay) Alive(timeout time.Duration) bool {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	return e != nil && e.alive(timeout)
}

// admit takes a connection slot before an accept; false means MaxConn
// connections are live. A slot not used must be given back with unadmit.
func (r *Relay) admit() bool {
	n := r.stats.active.Add(1)
	if m := r.maxConn.Load(); m > 0 && n > m {
		r.stats.active.Add(-1)
		return false
	}
	return true
}

// admitAlways counts a connection resumed from another process: it was
// admitted there, so MaxConn does not turn it away here.
func (r *Relay) admitAlways() bool {
	r.stats.active.Add(1)
	return true
}

// unadmit gives back a slot taken by admit for an accept that found no
// connection.
func (r *Relay) unadmit() { r.connDone(1) }

// pausedFull records that an engine stopped accepting at MaxConn. It
// reports whether a slot freed meanwhile, in which case the caller
// resumes at once: connDone only wakes engines it sees paused.
func (r *Relay) pausedFull() (resume bool) {
	r.full.Store(true)
	if m := r.maxConn.Load(); m == 0 || r.stats.active.Load() < m {
		r.full.Store(false)
		return true
	}
	return false
}

// connDone counts n connections as finished: it wakes accepting paused
// at MaxConn and, while draining, signals Shutdown when none is left.
func (r *Relay) connDone(n int64) {
	left := r.stats.active.Add(-n)
	if r.full.Load() {
		if m := r.maxConn.Load(); (m == 0 || left < m) && r.full.CompareAndSwap(true, false) {
			r.impl.resumeAccepting()
		}
	}
	if left == 0 && r.drain.Load() {
		r.mu.Lock()
		select {
		case <-r.zero:
		default:
			close(r.zero)
		}
		r.mu.Unlock()
	}
}

func (r *Relay) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

// DefaultNotSentLowat is NotSentLowat's default, and notsent_lowat's:
// 128 KiB, the value the option's author suggested.
const DefaultNotSentLowat = 128 << 10

// notSentLowat returns the TCP_NOTSENT_LOWAT to set; 0: none.
func (r *Relay) notSentLowat() int {
	switch {
	case r.NotSentLowat < 0:
		return 0
	case r.NotSentLowat == 0:
		return DefaultNotSentLowat
	}
	return r.NotSentLowat
}

func (r *Relay) maxIdlePipes() int {
	if r.MaxIdlePipes > 0 {
		return r.MaxIdlePipes
	}
	return defaultMaxIdlePipes
}
