// Package splice relays TCP connections to a backend, moving payload
// socket → pipe → socket inside the kernel.
//
// Typical usage:
//
//	r := &splice.Relay{Backend: backendAddr, IdleTimeout: 10 * time.Minute}
//	if err := r.Start(listeners); err != nil { ... }
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
// The package knows file descriptors, pipes and sockets; it knows nothing
// about configuration files or how a backend was chosen.
package splice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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

// Relay accepts client connections on listeners and relays each one to
// Backend. The zero value with Backend set is ready to Start; every other
// field's zero value means its documented default.
type Relay struct {
	// Backend is where every client connection is forwarded: a
	// *net.TCPAddr or a *net.UnixAddr.
	Backend net.Addr
	// Mode selects splice (default) or copy relaying.
	Mode Mode
	// ConnectTimeout bounds the backend connect; zero means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection after no byte has moved in either
	// direction for this long; zero disables it.
	IdleTimeout time.Duration
	// Loops is the number of event loops; zero means one per CPU
	// (GOMAXPROCS).
	Loops int
	// PipeSize is the capacity asked of each pipe with F_SETPIPE_SZ; zero
	// means 1 MiB. The kernel may grant less (pipe-max-size,
	// pipe-user-pages-soft); rsp uses what it grants.
	PipeSize int
	// MaxIdlePipes is how many empty pipes each loop keeps for reuse; zero
	// means 32. Pipes beyond it are closed when returned.
	MaxIdlePipes int
	// Logger receives connection errors; nil means slog.Default().
	Logger *slog.Logger

	stats counters

	// Test hooks: pretend the kernel refuses splice (EINVAL), or that no
	// pipe can be made (EMFILE).
	testNoSplice bool
	testNoPipes  bool

	mu      sync.Mutex
	started bool
	impl    engine
	zero    chan struct{} // closed when active reaches zero while draining
	drain   atomic.Bool
}

// engine is one relaying implementation: the epoll splice engine or the
// goroutine copy engine.
type engine interface {
	// stopAccepting stops taking new connections and releases the relay's
	// hold on the listeners.
	stopAccepting()
	// closeAll closes every live connection and releases the engine's
	// resources.
	closeAll()
	// pipes reports pipes open and pipes idle in pools.
	pipes() (open, idle int64)
	// alive reports whether every event loop answered within timeout.
	alive(timeout time.Duration) bool
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

// Start begins accepting on listeners and relaying to Backend. It returns
// once the listeners are being served. The relay takes ownership of the
// listeners: it closes them when it stops accepting, and nothing else may
// call Accept on them.
func (r *Relay) Start(listeners []net.Listener) error {
	if r.Backend == nil {
		return errors.New("relay has no backend address")
	}
	if len(listeners) == 0 {
		return errors.New("relay has no listeners")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return ErrStarted
	}
	r.zero = make(chan struct{})
	var (
		e   engine
		err error
	)
	if r.Mode == ModeCopy {
		e, err = startCopy(r, listeners)
	} else {
		e, err = startSplice(r, listeners)
	}
	if err != nil {
		return err
	}
	r.impl = e
	r.started = true
	return nil
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
		err = fmt.Errorf("closing %d connections still open: %w", r.stats.active.Load(), ctx.Err())
	}
	e.closeAll()
	return err
}

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

// connOpened counts a newly accepted connection.
func (r *Relay) connOpened() {
	r.stats.accepted.Add(1)
	r.stats.active.Add(1)
}

// connDone counts n connections as finished and, while draining, signals
// Shutdown when none is left.
func (r *Relay) connDone(n int64) {
	left := r.stats.active.Add(-n)
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

func (r *Relay) connectTimeout() time.Duration {
	if r.ConnectTimeout > 0 {
		return r.ConnectTimeout
	}
	return DefaultConnectTimeout
}

func (r *Relay) maxIdlePipes() int {
	if r.MaxIdlePipes > 0 {
		return r.MaxIdlePipes
	}
	return defaultMaxIdlePipes
}
