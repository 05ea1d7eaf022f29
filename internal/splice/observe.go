package splice

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Cause is why a connection ended, as counted in metrics and written in
// the connection log.
type Cause uint8

// The causes of a connection's end.
const (
	// CauseClientClose: both directions finished; the client sent its
	// FIN first.
	CauseClientClose Cause = iota
	// CauseServerClose: both directions finished; the server sent its
	// FIN first.
	CauseServerClose
	// CauseClientReset: the client's socket failed (a reset, a keepalive
	// or user timeout, a failed read or write); the server was reset.
	CauseClientReset
	// CauseServerReset: the server's socket failed; the client was reset.
	CauseServerReset
	// CauseIdleTimeout: nothing moved either way for the idle timeout.
	CauseIdleTimeout
	// CauseConnectTimeout: the last backend connect timed out.
	CauseConnectTimeout
	// CauseHalfCloseTimeout: one direction had ended and nothing moved
	// for the half-close timeout.
	CauseHalfCloseTimeout
	// CauseConnectFailed: the last backend connect failed.
	CauseConnectFailed
	// CauseNoServer: no server could take the connection (all down,
	// drained, in maintenance or full).
	CauseNoServer
	// CauseMaxConn: refused at the frontend's maxconn.
	CauseMaxConn
	// CauseDrained: finished on its own while rsp was shutting down.
	CauseDrained
	// CauseDrainTimeout: reset when the drain timeout ran out.
	CauseDrainTimeout
	// CauseKilled: reset by a request (rsp ctl maint -kill).
	CauseKilled
	// CauseUndeliverable: a peer left with bytes for it in flight, or a
	// Unix peer closed with bytes unread; the other peer was reset.
	CauseUndeliverable
	// CauseError: anything else (an internal failure, out of fds).
	CauseError
	// CauseDenied: the client's address is refused by the frontend's
	// access list.
	CauseDenied
	// CauseBadHeader: the client's PROXY header was refused: from a
	// client not trusted to send one, missing, malformed, or too late.
	CauseBadHeader
	// CauseNoRoute: the frontend routes by TLS server name, and the
	// client's (none, not TLS, too late, or a name no route takes) is
	// refused by its configuration.
	CauseNoRoute
	// CauseSourceLimit: the client's address (or its prefix) is at its
	// per-source limit: connections at once, or new ones per second.
	CauseSourceLimit
	// CauseHandover: reset when rsp handed its connections to its next
	// process, since it could not carry this one (not yet connected,
	// reading a PROXY header or ClientHello, or ending).
	CauseHandover
	// NumCauses is the number of causes.
	NumCauses
)

var causeNames = [NumCauses]string{
	CauseClientClose: "client_close", CauseServerClose: "server_close",
	CauseClientReset: "client_reset", CauseServerReset: "server_reset",
	CauseIdleTimeout: "idle_timeout", CauseConnectTimeout: "connect_timeout",
	CauseHalfCloseTimeout: "half_close_timeout", CauseConnectFailed: "connect_failed",
	CauseNoServer: "no_server", CauseMaxConn: "maxconn", CauseDrained: "drained",
	CauseDrainTimeout: "drain_timeout", CauseKilled: "killed",
	CauseUndeliverable: "undeliverable", CauseError: "error", CauseDenied: "denied",
	CauseBadHeader: "bad_header", CauseNoRoute: "no_route", CauseSourceLimit: "source_limit", CauseHandover: "handover",
}

// String returns the cause's name in metrics and logs ("client_close").
func (c Cause) String() string {
	if c < NumCauses {
		return causeNames[c]
	}
	return "unknown"
}

// Clean reports whether c is a connection that ended without a reset.
func (c Cause) Clean() bool {
	return c == CauseClientClose || c == CauseServerClose || c == CauseDrained
}

// ConnInfo describes one connection, live or ended.
type ConnInfo struct {
	ID         uint64         // unique within the process
	Frontend   string         // the route's name
	Backend    string         // the route's backend
	Client     netip.AddrPort // zero for a Unix client
	Server     string         // the target's name ("backend/server"); "" if none was connected
	ServerAddr net.Addr       // the target's address; nil if none
	Start      time.Time      // when it was accepted
	Connect    time.Duration  // accept to backend connected; 0 if never connected
	Duration   time.Duration  // accept to end; for a live connection, its age
	BytesIn    int64          // client → server, delivered to the server's socket
	BytesOut   int64          // server → client, delivered to the client's socket
	Tries      int            // backend connects attempted
	Cause      Cause          // why it ended; meaningless while live
	Err        error          // what failed, for an end that is not clean; else nil
	Relay      Mode           // the relay that moved its bytes at the end
}

// connectBounds are the upper bounds, in seconds, of the connect-time
// histogram's buckets: from 100 µs (loopback) to the default connect
// timeout.
var connectBounds = [...]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// ConnectBuckets returns the upper bounds, in seconds, of the buckets of
// ServerStats.ConnectCounts.
func ConnectBuckets() []float64 { return connectBounds[:] }

// FrontendStats counts a frontend's connections and bytes.
type FrontendStats struct {
	Accepted int64            // connections accepted
	Active   int64            // connections live now
	Ended    [NumCauses]int64 // connections ended, by cause
	BytesIn  int64            // client → server
	BytesOut int64            // server → client
}

// ServerStats counts one server's connects and bytes.
type ServerStats struct {
	Attempts int64 // connects started
	Failures int64 // connects that failed or timed out
	Retries  int64 // failed connects after which another server was tried
	Connects int64 // connects that succeeded
	BytesIn  int64 // client → server
	BytesOut int64 // server → client
	// ConnectCounts counts successful connects by time taken: element i
	// those within ConnectBuckets()[i] and above the bound before; the
	// last element those above every bound.
	ConnectCounts [len(connectBounds) + 1]int64
	// ConnectTime is the sum of the times counted in ConnectCounts.
	ConnectTime time.Duration
}

// Snapshot is a relay's counters at one moment: those of ended
// connections and those of live ones, summed.
type Snapshot struct {
	Frontends map[string]*FrontendStats // by route name
	Servers   map[string]*ServerStats   // by target name
	Spliced   int64                     // bytes moved by splice(2)
	Copied    int64                     // bytes moved through user-space buffers
	LoopBusy  []time.Duration           // per event loop, time spent outside epoll_wait
	Active    int64                     // connections live now
	Accepted  int64                     // connections accepted since Start
	Pipes     int64                     // pipes open (each two fds)
	IdlePipes int64                     // of those, pipes waiting empty in pools
	PipeSize  int                       // capacity the kernel granted each pipe; 0 before the first
	// PipeBudget is how many pages of pipes rsp allows itself, as an
	// unprivileged user under fs.pipe-user-pages-soft (0: no limit);
	// PipePages what its open pipes hold; SmallPipes how many pipes were
	// made smaller than asked to stay within it.
	PipeBudget, PipePages, SmallPipes int64

	stamp uint64 // one loop's part: its answer number
}

// tally is the counters one event loop, or the copy engine, keeps. An
// event loop's is touched only by that loop's goroutine: a scrape asks
// the loop for it (cmdSnapshot), so counting costs a plain add, with no
// atomic or lock, on the paths that move bytes.
type tally struct {
	frontends map[string]*FrontendStats
	servers   map[string]*ServerStats
	copied    int64 // bytes moved through user-space buffers
}

// frontend returns the counters of the route named name.
func (t *tally) frontend(name string) *FrontendStats {
	if t.frontends == nil {
		t.frontends = map[string]*FrontendStats{}
	}
	f := t.frontends[name]
	if f == nil {
		f = &FrontendStats{}
		t.frontends[name] = f
	}
	return f
}

// server returns the counters of the target named name.
func (t *tally) server(name string) *ServerStats {
	if t.servers == nil {
		t.servers = map[string]*ServerStats{}
	}
	s := t.servers[name]
	if s == nil {
		s = &ServerStats{}
		t.servers[name] = s
	}
	return s
}

// observeConnect counts a successful connect that took d.
func (s *ServerStats) observeConnect(d time.Duration) {
	s.Connects++
	s.ConnectTime += d
	sec := d.Seconds()
	i := 0
	for i < len(connectBounds) && sec > connectBounds[i] {
		i++
	}
	s.ConnectCounts[i]++
}

// addTo adds t's counters to snap.
func (t *tally) addTo(snap *Snapshot) {
	for name, f := range t.frontends {
		snap.frontend(name).add(f)
	}
	for name, s := range t.servers {
		snap.server(name).add(s)
	}
	snap.Copied += t.copied
}

func (snap *Snapshot) frontend(name string) *FrontendStats {
	if snap.Frontends == nil {
		snap.Frontends = map[string]*FrontendStats{}
	}
	f := snap.Frontends[name]
	if f == nil {
		f = &FrontendStats{}
		snap.Frontends[name] = f
	}
	return f
}

func (snap *Snapshot) server(name string) *ServerStats {
	if snap.Servers == nil {
		snap.Servers = map[string]*ServerStats{}
	}
	s := snap.Servers[name]
	if s == nil {
		s = &ServerStats{}
		snap.Servers[name] = s
	}
	return s
}

func (f *FrontendStats) add(o *FrontendStats) {
	f.Accepted += o.Accepted
	f.Active += o.Active
	for i := range f.Ended {
		f.Ended[i] += o.Ended[i]
	}
	f.BytesIn += o.BytesIn
	f.BytesOut += o.BytesOut
}

func (s *ServerStats) add(o *ServerStats) {
	s.Attempts += o.Attempts
	s.Failures += o.Failures
	s.Retries += o.Retries
	s.Connects += o.Connects
	s.BytesIn += o.BytesIn
	s.BytesOut += o.BytesOut
	for i := range s.ConnectCounts {
		s.ConnectCounts[i] += o.ConnectCounts[i]
	}
	s.ConnectTime += o.ConnectTime
}

// addLive adds a live connection's bytes so far to snap.
func (snap *Snapshot) addLive(frontend, server string, in, out int64) {
	f := snap.frontend(frontend)
	f.BytesIn += in
	f.BytesOut += out
	if server != "" {
		s := snap.server(server)
		s.BytesIn += in
		s.BytesOut += out
	}
}

// Snapshot returns the relay's counters now. It asks each event loop for
// its own, waiting at most timeout in all; a loop that does not answer in
// time counts with its last answer, so that no counter goes back.
func (r *Relay) Snapshot(timeout time.Duration) *Snapshot {
	snap := &Snapshot{}
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e != nil {
		e.snapshot(snap, timeout)
		snap.Pipes, snap.IdlePipes = e.pipes()
	}
	snap.Active = r.stats.active.Load()
	snap.Accepted = r.stats.accepted.Load()
	var total int64
	for _, f := range snap.Frontends {
		total += f.BytesIn + f.BytesOut
	}
	snap.Spliced = total - snap.Copied
	return snap
}

// connsTimeout bounds how long Conns waits for each event loop.
const connsTimeout = 2 * time.Second

// Conns returns the live connections, as far as each event loop answers
// within a few seconds.
func (r *Relay) Conns() []ConnInfo {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e == nil {
		return nil
	}
	return e.conns(connsTimeout)
}

// Kill resets every live connection relayed to the target named server,
// and returns how many it reset. They end with CauseKilled.
func (r *Relay) Kill(server string) int {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e == nil {
		return 0
	}
	return e.kill(server)
}

// lastTarget is the server a connection is reported with: the one it is
// connected to, else the last one whose connect failed, else nil.
func lastTarget(t Target, tried []Target) Target {
	if t == nil && len(tried) > 0 {
		return tried[len(tried)-1]
	}
	return t
}

// errKilled: a connection reset by Kill.
var errKilled = errors.New("reset on request (server put in maintenance with -kill)")

// errMaxConn: a connection refused at its frontend's maxconn.
var errMaxConn = errors.New("frontend maxconn reached")

// errSourceLimit: a connection refused at its client's per-source limit.
var errSourceLimit = errors.New("per-source limit")

// errDenied: a connection refused by its frontend's access list.
var errDenied = errors.New("client address refused by the frontend's allow/deny list")

// ConnLimit bounds the connections of one frontend across all its
// listeners. It is shared by the routes of successive reloads, so that
// connections accepted before a reload still count. The zero value has
// no limit.
type ConnLimit struct {
	max atomic.Int64
	n   atomic.Int64
}

// SetMax sets the most connections at once; 0 means no limit.
func (cl *ConnLimit) SetMax(n int) { cl.max.Store(int64(max(n, 0))) }

// Max returns the limit; 0 means none.
func (cl *ConnLimit) Max() int { return int(cl.max.Load()) }

// take counts a new connection; false means the limit is reached and
// nothing was counted.
func (cl *ConnLimit) take() bool {
	n := cl.n.Add(1)
	if m := cl.max.Load(); m > 0 && n > m {
		cl.n.Add(-1)
		return false
	}
	return true
}

func (cl *ConnLimit) release() { cl.n.Add(-1) }

// hold counts a connection that is open already (handed over), whatever
// the limit.
func (cl *ConnLimit) hold() { cl.n.Add(1) }

// peerError is a failure of one peer's socket: a reset, a failed read or
// write. It tells a client's failure from a server's.
type peerError struct {
	server bool // the server's socket failed; else the client's
	err    error
}

func (e *peerError) Error() string { return e.err.Error() }
func (e *peerError) Unwrap() error { return e.err }

// endCause classifies why a connection ended. reason is what ended it:
// nil for a clean end, or for one whose cause the relay set when it
// decided it (d.causeSet). clean tells whether both streams were
// delivered whole; clientFirst whether the client's stream ended first.
func endCause(reason error, d *dialing, clean, clientFirst, draining bool) Cause {
	if d.causeSet {
		return d.cause
	}
	if reason == nil {
		switch {
		case !clean:
			return CauseError
		case draining:
			return CauseDrained
		case clientFirst:
			return CauseClientClose
		}
		return CauseServerClose
	}
	var pe *peerError
	switch {
	case errors.Is(reason, errIdle):
		return CauseIdleTimeout
	case errors.Is(reason, errHalfClose):
		return CauseHalfCloseTimeout
	case errors.Is(reason, errClosedByRelay):
		return CauseDrainTimeout
	case errors.Is(reason, errKilled):
		return CauseKilled
	case errors.Is(reason, errMaxConn):
		return CauseMaxConn
	case errors.Is(reason, errDenied):
		return CauseDenied
	case errors.Is(reason, errBadHeader):
		return CauseBadHeader
	case errors.Is(reason, errNoRoute):
		return CauseNoRoute
	case errors.Is(reason, errSourceLimit):
		return CauseSourceLimit
	case errors.Is(reason, errHandover):
		return CauseHandover
	case errors.Is(reason, errUndeliverable), errors.Is(reason, errPeerAborted):
		return CauseUndeliverable
	case errors.As(reason, &pe):
		if pe.server {
			return CauseServerReset
		}
		return CauseClientReset
	}
	return CauseError
}

// lockedTally is the copy engine's tally: its connections run on many
// goroutines, so a mutex guards it, taken once per connect and per end.
type lockedTally struct {
	mu sync.Mutex
	t  tally
}
