//go:build linux

package splice

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// acceptBatch bounds the accepts done per listener wakeup, so a
	// connection storm cannot starve established connections. The
	// listener is level-triggered, so what is left wakes us again.
	acceptBatch = 64
	// maxEvents is the epoll_wait batch size.
	maxEvents = 256
	// acceptPause is how long a loop stops accepting after EMFILE/ENFILE
	// (no fd for the new socket): a level-triggered listener would
	// otherwise wake the loop in a busy spin.
	acceptPause = 100 * time.Millisecond
	// minTick and maxTick bound the sweep that enforces connect and idle
	// timeouts.
	minTick = 10 * time.Millisecond
	maxTick = time.Second
	// yieldEvery is how often a busy loop yields to the Go scheduler. A
	// goroutine that has not yielded for 10 ms looks stuck to the
	// runtime's monitor (sysmon): it takes the loop's P while the loop
	// waits in epoll_wait, and then polls every 20 µs for a while. A yield
	// wakes a thread for the spare P (see Relay.Loops), so not more often
	// than needed: every 1 ms cost three times the futex calls of every
	// 5 ms for the same effect (README, design table).
	yieldEvery = 5 * time.Millisecond
)

// Commands posted to a loop from other goroutines.
const (
	cmdStopAccept = iota + 1
	cmdCloseAll
	cmdPing    // no-op: proves the loop is turning
	cmdServe   // start accepting on a listener
	cmdUnserve // stop accepting on a listener
	cmdResume  // a connection slot freed below MaxConn
	cmdAdopt   // relay a connection another loop accepted
	cmdSnapshot
	cmdConns
	cmdKill
	cmdFreeze // take the established connections out for a hand-over
	cmdThaw   // resume a connection frozen by another process
	cmdUnstop // accept again: a hand-over did not happen
)

type command struct {
	op   int
	ln   *listener     // cmdServe, cmdUnserve; cmdAdopt: the accepting loop's listener
	done chan struct{} // closed when carried out; nil if nobody waits
	fd   int           // cmdAdopt: the accepted client socket
	peer netip.AddrPort
	// cmdSnapshot fills snap; cmdConns appends to conns; cmdKill resets
	// the connections to server and counts them in killed.
	snap   *Snapshot
	conns  *[]ConnInfo
	server string
	killed *int
	// cmdFreeze appends to frozen; cmdThaw resumes thaw.
	frozen *[]FrozenConn
	thaw   *thawing
}

// loop is one epoll event loop. Everything it owns (connections, pipes,
// its listener duplicates) is touched only by its own goroutine, except
// the command queue, guarded by mu.
type loop struct {
	e      *spliceEngine
	index  int // in e.loops, for logs
	epfd   int
	wakefd int // eventfd that wakes the loop for commands
	lns    []*listener
	events []unix.EpollEvent

	byFD  []*conn // connection owning each socket fd
	live  conn    // sentinel of the list of live connections
	nlive int
	// load is nlive as other loops see it, plus connections handed to
	// this loop and not yet adopted; the accepting loop balances by it.
	load   atomic.Int32
	dead   atomic.Bool // the loop failed and exited: it takes nothing more
	nextID uint32
	ready  []*conn // connections with work left after their budget ran out
	pool   pipePool
	now    int64 // monotonic ns, refreshed after each epoll_wait
	yield  int64 // when the loop next yields to the Go scheduler
	tick   int64
	sweep  int64 // when the next timeout sweep is due

	accepting bool        // listeners are registered
	stopped   bool        // stopAccepting ran: never accept again
	resumeAt  int64       // when accepting resumes after EMFILE; 0 if not paused
	full      bool        // accepting paused at MaxConn
	scratch   []byte      // buffer for the no-pipe fallback, made on first use
	noSplice  bool        // test hook: pretend the kernel refuses to splice
	lowat     int         // TCP_NOTSENT_LOWAT set on each TCP socket (capSendQueue); 0: none
	j         LoopJournal // records connections for crash survival; nil when off
	jpending  bool        // j has messages to send again (Flush)
	jwait     int         // j.WaitFD() polled for writing; -1 none

	tally   tally    // counters of this loop's connections
	busy    int64    // ns spent outside epoll_wait
	answers uint64   // snapshots answered: orders them
	info    ConnInfo // what the ended connection reports to Relay.OnEnd

	mu     sync.Mutex
	cmds   []command
	exited bool // the loop is gone: commands are answered at once
}

func newLoop(e *spliceEngine, index int) (*loop, error) {
	l := &loop{
		e:      e,
		index:  index,
		events: make([]unix.EpollEvent, maxEvents),
		pool:   pipePool{max: e.r.maxIdlePipes(), size: e.r.PipeSize, fail: e.r.test.noPipes, budget: e.budget},
		tick:   int64(maxTick),
		jwait:  -1,

		noSplice:  e.r.test.noSplice,
		lowat:     e.r.notSentLowat(),
		accepting: true,
	}
	if e.r.Journal != nil {
		l.j = e.r.Journal.Loop(index)
		l.pool.j = l.j
	}
	l.live.next, l.live.prev = &l.live, &l.live
	var err error
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if l.wakefd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		unix.Close(l.epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.wakefd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.wakefd, &ev); err != nil {
		l.release()
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return l, nil
}

// useTimeouts makes the sweep tick short enough for rt's timeouts.
func (l *loop) useTimeouts(rt *Route) { l.useTick(tickFor(rt)) }

// useTick makes the sweep tick at most t.
func (l *loop) useTick(t int64) {
	if t < l.tick {
		l.setTick(t)
		if l.sweep > l.now+t {
			l.sweep = l.now + t
		}
	}
}

// setTick changes how often the loop sweeps for timeouts.
func (l *loop) setTick(t int64) {
	l.tick = t
	l.e.r.logger().Debug("timeout sweep interval changed", "loop", l.index, "every", time.Duration(t).String())
}

// tickFor is the sweep tick that enforces rt's timeouts to within an
// eighth of the shortest.
func tickFor(rt *Route) int64 {
	return int64(min(max(rt.shortestTimeout()/8, minTick), maxTick))
}

// release closes the loop's own fds.
func (l *loop) release() {
	for _, ln := range l.lns {
		unix.Close(ln.fd)
	}
	l.lns = nil
	l.pool.drain()
	if l.wakefd > 0 {
		unix.Close(l.wakefd)
	}
	if l.epfd > 0 {
		unix.Close(l.epfd)
	}
}

// post queues a command for the loop and wakes it. The returned channel
// is closed once the loop has carried the command out.
func (l *loop) post(op int) <-chan struct{} {
	return l.postListener(op, nil)
}

// postListener posts a command about a listener. A listener posted to a
// loop that has exited is closed.
func (l *loop) postListener(op int, ln *listener) <-chan struct{} {
	done := make(chan struct{})
	if !l.enqueue(command{op: op, ln: ln, done: done}) {
		if ln != nil && ln.fd >= 0 {
			unix.Close(ln.fd)
		}
		close(done)
	}
	return done
}

// adopt hands a connection accepted by another loop to l, which relays
// it as if it had accepted it. If l has exited, the connection is closed.
func (l *loop) adopt(fd int, peer netip.AddrPort, ln *listener) {
	l.load.Add(1)
	if !l.enqueue(command{op: cmdAdopt, ln: ln, fd: fd, peer: peer}) {
		l.dropAdopted(fd)
	}
}

// enqueue queues c for the loop and wakes it. It reports false if the
// loop has exited: the caller then disposes of what c carries, outside
// l.mu (closing a connection may post to this loop again).
func (l *loop) enqueue(c command) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.exited {
		return false
	}
	l.cmds = append(l.cmds, c)
	one := [8]byte{1}
	unix.Write(l.wakefd, one[:])
	return true
}

// dropAdopted resets a handed-over connection l will not relay.
func (l *loop) dropAdopted(fd int) {
	l.load.Add(-1)
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(fd)
	l.e.r.connDone(1)
}

// run is the event loop. It returns after cmdCloseAll.
func (l *loop) run(wg *sync.WaitGroup) {
	defer wg.Done()
	l.now = l.e.now()
	l.sweep = l.now + l.tick
	for {
		idle := l.e.now()
		l.busy += idle - l.now
		n, err := unix.EpollWait(l.epfd, l.events, l.waitTimeout(idle))
		l.now = l.e.now()
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// EBADF/EINVAL would mean our own epoll fd is broken: a bug,
			// not a runtime condition. Close everything rather than spin;
			// the dead loop takes no more connections and the relay
			// reports itself not alive (the watchdog restarts it).
			l.e.r.logger().Error("epoll_wait failed; event loop stopped, its connections reset", "err", err)
			l.dead.Store(true)
			l.exit(fmt.Errorf("event loop failed: %w", err))
			return
		}
		for i := range n {
			ev := &l.events[i]
			fd := int(ev.Fd)
			if fd == l.wakefd {
				if l.runCommands() {
					return
				}
				continue
			}
			if fd < len(l.byFD) {
				if c := l.byFD[fd]; c != nil && c.id == uint32(ev.Pad) {
					l.onEvent(c, fd, ev.Events)
					continue
				}
			}
			if ln := l.listenerOf(fd); ln != nil {
				l.acceptBatch(ln)
			}
			// Otherwise a stale event for a connection closed earlier in
			// this batch: ignore it.
		}
		l.runReady()
		if l.j != nil {
			l.flushJournal()
		}
		if l.now >= l.sweep {
			l.sweepTimeouts()
		}
		if l.now >= l.yield {
			l.yield = l.now + int64(yieldEvery)
			runtime.Gosched()
		}
	}
}

// waitTimeout is the epoll_wait timeout in ms: 0 when work is queued,
// until the next sweep when connections or a paused accept need timers,
// forever otherwise.
func (l *loop) waitTimeout(now int64) int {
	if len(l.ready) > 0 {
		return 0
	}
	if l.nlive == 0 && l.resumeAt == 0 && !l.jpending && !l.pool.jpending {
		return -1
	}
	d := l.sweep - now
	if d <= 0 {
		return 0
	}
	return int((d + int64(time.Millisecond) - 1) / int64(time.Millisecond))
}

// runCommands carries out queued commands; it reports whether the loop
// must exit.
func (l *loop) runCommands() bool {
	var buf [8]byte
	unix.Read(l.wakefd, buf[:])
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	exit := false
	for _, c := range cmds {
		switch c.op {
		case cmdStopAccept:
			l.stopAccepting()
		case cmdCloseAll:
			exit = true
		case cmdServe:
			l.addListener(c.ln)
		case cmdUnserve:
			l.removeListener(c.ln.key)
		case cmdResume:
			l.resumeFull()
		case cmdAdopt:
			l.load.Add(-1)
			l.open(c.fd, c.peer, c.ln)
		case cmdSnapshot:
			l.fill(c.snap)
		case cmdConns:
			l.listConns(c.conns)
		case cmdKill:
			*c.killed = l.kill(c.server)
		case cmdFreeze:
			l.freezeConns(c.frozen)
			if l.jpending || l.pool.jpending {
				// Removed before the hand-over stores them again:
				// systemd would keep one copy, under the old name.
				l.jpending, l.pool.jpending = l.j.Flush(true), false
			}
		case cmdThaw:
			l.thawConn(c.thaw)
		case cmdUnstop:
			// Listeners come again by cmdServe; addListener registers
			// them once accepting is on.
			l.stopped = false
			if l.canAccept() && !l.accepting {
				l.registerListeners() // none yet: sets accepting
			}
		}
	}
	if exit {
		l.exit(errClosedByRelay)
	}
	for _, c := range cmds {
		if c.done != nil {
			close(c.done)
		}
	}
	return exit
}

// exit resets every connection for reason, closes the loop's own fds, and
// answers any command posted meanwhile.
func (l *loop) exit(reason error) {
	l.stopAccepting()
	l.closeAll(reason)
	l.mu.Lock()
	l.exited = true
	pending := l.cmds
	l.cmds = nil
	l.release()
	l.mu.Unlock()
	for _, c := range pending {
		if c.op == cmdSnapshot {
			l.fill(c.snap) // the loop's final counters
		}
		if c.op == cmdAdopt {
			l.dropAdopted(c.fd)
		} else if c.op == cmdThaw {
			l.load.Add(-1)
			dropThawed(c.thaw.fc, c.thaw.t)
			l.e.r.connDone(1)
		} else if c.ln != nil && c.ln.fd >= 0 {
			unix.Close(c.ln.fd)
		}
		if c.done != nil {
			close(c.done)
		}
	}
}

// closeAll resets every live connection, for reason.
func (l *loop) closeAll(reason error) {
	for l.live.next != &l.live {
		l.finish(l.live.next, reason, true)
	}
}

// sweepTimeouts enforces connect, idle and half-close timeouts and
// resumes a paused accept.
func (l *loop) sweepTimeouts() {
	l.sweep = l.now + int64(maxTick)
	if l.resumeAt != 0 && l.now >= l.resumeAt {
		l.resumeAt = 0
		if l.canAccept() && !l.accepting {
			if err := l.registerListeners(); err != nil {
				l.pauseAccept(err)
			}
		}
	}
	// The tick follows the routes of the connections still live: once the
	// last connection of a route with a short timeout has gone (a reload
	// changed it), the loop stops waking up for it.
	tick := int64(maxTick)
	for c := l.live.next; c != &l.live; {
		next := c.next
		rt := c.rt
		switch {
		case c.hello:
			if l.now >= c.deadline {
				l.routed(c, "", fmt.Sprintf("no whole ClientHello within %v", rt.Hello.timeout()))
			}
		case c.header:
			if l.now >= c.deadline {
				l.finish(c, wrapHeader(fmt.Sprintf("none came within %v (the connect timeout)", rt.connectTimeout())), true)
			}
		case c.connecting:
			if l.now >= c.deadline {
				l.connectFailed(c, fmt.Errorf("%w after %v", errConnectTimeout, rt.connectTimeout()))
			}
		case c.flushTo != nil:
			l.flushed(c)
		case rt.IdleTimeout > 0 && l.now-c.last >= int64(rt.IdleTimeout):
			l.finish(c, errIdle, true)
		case rt.HalfCloseTimeout > 0 && c.halfAt != 0 && l.now-max(c.halfAt, c.last) >= int64(rt.HalfCloseTimeout):
			l.finish(c, errHalfClose, true)
		}
		switch {
		case c.closed:
		case c.flushTo != nil:
			tick = int64(minTick) // watching a send queue drain
		default:
			tick = min(tick, tickFor(rt))
		}
		c = next
	}
	if tick != l.tick {
		l.setTick(tick)
	}
	l.sweep = min(l.now+tick, l.sweep)
	if l.resumeAt != 0 {
		l.sweep = min(l.sweep, l.resumeAt)
	}
}

// runReady services connections whose byte budget ran out while they
// still had work, so that edge-triggered readiness is not lost.
func (l *loop) runReady() {
	if len(l.ready) == 0 {
		return
	}
	batch := l.ready
	l.ready = nil
	for i, c := range batch {
		batch[i] = nil
		c.queued = false
		if c.closed {
			continue
		}
		l.service(c)
	}
	if l.ready == nil {
		l.ready = batch[:0]
	}
}
