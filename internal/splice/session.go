package splice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// This file holds what both relays decide the same way about one
// connection: which backend to try next, whether a failed connect is
// retried, how a connection's end is logged, and whether it ends with a
// reset. The splice engine dials without blocking inside its event loop
// and the copy engine dials from a goroutine, but both call these.

// Why a connection ended, as logged. A connection whose both directions
// finished (each side's EOF passed on) ends with no reason.
var (
	// errClosedByRelay: the drain timeout ran out and the relay closed
	// what was left.
	errClosedByRelay = errors.New("closed at drain timeout")
	// errIdle: no byte moved either way for the route's IdleTimeout.
	errIdle = errors.New("idle timeout")
	// errHalfClose: one direction had ended and nothing moved for the
	// route's HalfCloseTimeout.
	errHalfClose = errors.New("half-close timeout")
	// errUndeliverable: a peer went away while bytes for it were still
	// in flight; the other peer is reset so that it cannot mistake the
	// truncated stream for a whole one.
	errUndeliverable = errors.New("peer closed with bytes for it still in flight")
	// errPeerAborted: a Unix peer closed with bytes it had not read; what
	// it wrote was delivered, then the other peer is reset, as a direct
	// Unix peer would see ECONNRESET after the last byte.
	errPeerAborted = errors.New("unix peer closed with unread bytes")
)

// dialing is a connection's progress through its backend connects: the
// route it was accepted under, the client, and the targets whose connect
// failed. It is embedded in each relay's connection state.
type dialing struct {
	rt      *Route
	peer    netip.AddrPort
	tried   []Target // targets whose connect failed; nil if none did
	lastErr error    // why the last connect failed, or why none could be tried
	// cause is why the connection ends when the relay decided it before
	// any byte moved (no server, connect failed), if causeSet.
	cause    Cause
	causeSet bool
	// connectCause is how the last failed connect failed
	// (CauseConnectFailed or CauseConnectTimeout).
	connectCause Cause
	limited      bool // counted in rt.Limit
	// sources is the limiter that counted the connection; nil if none.
	sources SourceLimiter
}

// takeSource counts the connection against the route's per-source
// limits; an error refuses it.
func (d *dialing) takeSource(now int64) error {
	s := d.rt.Sources
	if s == nil || !d.peer.IsValid() {
		return nil
	}
	if err := s.Take(d.peer.Addr(), now); err != nil {
		return fmt.Errorf("%w: %w", errSourceLimit, err)
	}
	d.sources = s
	return nil
}

// holdLimits counts a connection handed over by another process against
// the route's frontend and per-source limits, whatever they say: it is
// open already. Its end releases them as for any other.
func (d *dialing) holdLimits(now int64) {
	if d.rt.Limit != nil {
		d.rt.Limit.hold()
		d.limited = true
	}
	if s := d.rt.Sources; s != nil && d.peer.IsValid() {
		s.Hold(d.peer.Addr(), now)
		d.sources = s
	}
}

// releaseSource gives back what takeSource counted.
func (d *dialing) releaseSource() {
	if d.sources != nil {
		d.sources.Release(d.peer.Addr())
		d.sources = nil
	}
}

// backendName is the backend the connection goes to, for logs.
func (d *dialing) backendName() string { return d.rt.Backend }

// setCause records why the connection is about to end, with err saying
// what failed.
func (d *dialing) setCause(c Cause, err error) {
	d.cause, d.causeSet, d.lastErr = c, true, err
}

// pick asks the route's Picker for the next target. On error the client
// cannot be served: the failure is counted, and the caller resets the
// client. A connection whose connect failed and found no other server to
// retry on ends for that connect's failure, not for want of a server.
func (d *dialing) pick(r *Relay) (Target, error) {
	t, err := d.rt.Picker.Pick(d.peer, d.tried)
	if err != nil {
		r.stats.failed.Add(1)
		if len(d.tried) > 0 {
			d.setCause(d.connectCause, fmt.Errorf("%w; no other server to retry on: %w", d.lastErr, err))
		} else {
			d.setCause(CauseNoServer, err)
		}
		if r.OnEnd == nil {
			r.logs.warn(r.logger(), "no backend", "no backend for client; resetting it",
				"frontend", d.rt.Name, "client", d.peer.String(), "err", err)
		}
	}
	return t, err
}

// errConnectTimeout: a backend connect took longer than the route's
// connect timeout.
var errConnectTimeout = errors.New("connect timeout")

// failed records that connecting to t failed with err: t is told and
// released. It reports whether another target may be tried; if not, the
// failure is counted, and the caller resets the client.
// stopping forbids a retry (the relay is shutting down).
func (d *dialing) failed(r *Relay, t Target, err error, stopping bool) (retry bool) {
	t.Connected(err)
	t.Release()
	d.tried = append(d.tried, t)
	cause := CauseConnectFailed
	var ne net.Error
	if errors.Is(err, errConnectTimeout) || errors.As(err, &ne) && ne.Timeout() {
		cause = CauseConnectTimeout
	}
	d.connectCause = cause
	d.lastErr = fmt.Errorf("server %s (%s): %w", t.Name(), t.Addr(), err)
	if len(d.tried) <= d.rt.Retries && !stopping {
		r.logger().Debug("backend connect failed; retrying on another server", "frontend", d.rt.Name,
			"client", d.peer.String(), "server", t.Name(), "backend", t.Addr().String(), "err", err)
		return true
	}
	r.stats.failed.Add(1)
	d.setCause(cause, d.lastErr)
	if r.OnEnd == nil {
		r.logs.warn(r.logger(), "connect failed", "backend connect failed; resetting client", "frontend", d.rt.Name,
			"client", d.peer.String(), "server", t.Name(), "backend", t.Addr().String(), "err", err, "tries", len(d.tried))
	}
	return false
}

// report tells the relay's OnEnd about a connection that ended; without
// OnEnd, an end that is not clean is logged (rate limited by cause).
func (r *Relay) report(ci *ConnInfo) {
	if r.OnEnd != nil {
		r.OnEnd(ci)
		return
	}
	if ci.Cause.Clean() {
		return
	}
	reason := ci.Cause.String()
	if ci.Err != nil {
		reason = ci.Err.Error()
	}
	backend := ""
	if ci.ServerAddr != nil {
		backend = ci.ServerAddr.String()
	}
	r.logs.info(r.logger(), ci.Cause.String(), "connection closed", "frontend", ci.Frontend,
		"client", ci.Client.String(), "backend", backend, "cause", ci.Cause.String(), "reason", reason)
}

// flushStall is how long a connection that is to be reset once the bytes
// queued for a peer are delivered waits for a reader that takes nothing
// more; flushPoll is how often the copy relay looks at the queue.
const (
	flushStall = 5 * time.Second
	flushPoll  = 10 * time.Millisecond
)

// Log rate limits: each cause may log logBurst lines per logWindow; the
// lines beyond are counted and the count is reported on the next line of
// that cause that is logged. A client resetting thousands of connections a
// second cannot flood the journal.
const (
	logBurst  = 10
	logWindow = time.Second
	// logCauses bounds the causes tracked; a cause beyond it shares one
	// bucket, so a stream of distinct error texts stays bounded too.
	logCauses = 64
)

// logLimiter rate-limits per-connection log lines by cause. It is shared by
// every loop and goroutine of a relay and used only on error paths.
type logLimiter struct {
	mu     sync.Mutex
	causes map[string]*logBucket
}

type logBucket struct {
	start      time.Time // start of the current window
	n          int       // lines logged in the window
	suppressed int       // lines dropped since the last one logged
}

// allow reports whether a line of cause may be logged now, burst lines
// per logWindow, and how many lines of that cause were suppressed since
// the last one logged.
func (ll *logLimiter) allow(cause string, burst int, now time.Time) (ok bool, suppressed int) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if ll.causes == nil {
		ll.causes = map[string]*logBucket{}
	}
	b := ll.causes[cause]
	if b == nil {
		if len(ll.causes) >= logCauses {
			cause = "other"
			b = ll.causes[cause]
		}
		if b == nil {
			b = &logBucket{start: now}
			ll.causes[cause] = b
		}
	}
	if now.Sub(b.start) >= logWindow {
		b.start, b.n = now, 0
	}
	if b.n >= burst {
		b.suppressed++
		return false, 0
	}
	b.n++
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// log logs msg at level unless cause has had burst lines in this window.
func (ll *logLimiter) log(l *slog.Logger, level slog.Level, burst int, cause, msg string, args ...any) {
	ok, suppressed := ll.allow(cause, burst, time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.Log(context.Background(), level, msg, args...)
}

// flush logs, for each cause, how many lines were suppressed and not yet
// reported (at shutdown).
func (ll *logLimiter) flush(l *slog.Logger) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	for cause, b := range ll.causes {
		if b.suppressed > 0 {
			l.Info("connection log lines suppressed by the rate limit", "cause", cause, "suppressed", b.suppressed)
			b.suppressed = 0
		}
	}
}

func (ll *logLimiter) info(l *slog.Logger, cause, msg string, args ...any) {
	ll.log(l, slog.LevelInfo, logBurst, cause, msg, args...)
}

func (ll *logLimiter) warn(l *slog.Logger, cause, msg string, args ...any) {
	ll.log(l, slog.LevelWarn, logBurst, cause, msg, args...)
}
