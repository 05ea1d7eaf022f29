//go:build linux

package splice

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spliceEngine runs the epoll event loops of ModeSplice.
type spliceEngine struct {
	r       *Relay
	budget  *pipeBudget // the user's pipe pages, shared by the loops' pools
	loops   []*loop
	start   time.Time
	handoff *copyEngine // relays connections whose sockets cannot splice
	// fdPause is when accepting may resume after a loop ran out of file
	// descriptors (engine clock); every loop stops accepting until then.
	fdPause atomic.Int64
	// lastParts is each loop's last answer to a snapshot, used when a
	// loop does not answer in time; guarded by snapMu.
	snapMu    sync.Mutex
	lastParts []*Snapshot
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// balanceSlack is how many more connections the accepting loop may hold
// than the least loaded one before it hands new connections over. Each
// listener wakes one loop (EPOLLEXCLUSIVE), usually the same one: 8
// streams opened together landed 8/0, 2/6 and 1/7 on two loops, leaving
// one core's loop idle.
const balanceSlack = 1

// lighter returns the least loaded loop if from holds more than
// balanceSlack connections beyond it, else nil: keep the connection.
func (e *spliceEngine) lighter(from *loop) *loop {
	if len(e.loops) < 2 {
		return nil
	}
	best, min := from, from.load.Load()
	for _, l := range e.loops {
		if n := l.load.Load(); n < min && !l.dead.Load() {
			best, min = l, n
		}
	}
	if best == from || from.load.Load()-min <= balanceSlack {
		return nil
	}
	return best
}

func startSplice(r *Relay) (engine, error) {
	n := r.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	e := &spliceEngine{
		r:       r,
		start:   r.epoch, // the relay's Clock
		handoff: newCopyEngine(r),
		budget:  newPipeBudget(),
	}
	if r.test.pipeBudget > 0 {
		e.budget = &pipeBudget{soft: r.test.pipeBudget, limit: r.test.pipeBudget * 3 / 4}
	}
	e.budget.log = r.logger()
	for i := 0; i < n; i++ {
		l, err := newLoop(e, i)
		if err != nil {
			for _, l := range e.loops {
				l.release()
			}
			return nil, err
		}
		e.loops = append(e.loops, l)
	}
	e.reportPipeSize()
	for _, l := range e.loops {
		e.wg.Add(1)
		go l.run(&e.wg)
	}
	testHookStarted(e)
	return e, nil
}

// reportPipeSize makes the first pipe, before the loops run, and says what
// the kernel granted if it is less than was asked: F_SETPIPE_SZ fails
// above fs.pipe-max-size, and the kernel gives unprivileged users small
// pipes past fs.pipe-user-pages-soft. The pipe stays in the pool.
func (e *spliceEngine) reportPipeSize() {
	l := e.loops[0]
	p, err := l.pool.get()
	if err != nil {
		return
	}
	asked := cmp.Or(e.r.PipeSize, defaultPipeSize)
	if p.size < l.pool.asked {
		maxSize, _ := os.ReadFile("/proc/sys/fs/pipe-max-size")
		e.r.logger().Warn("pipes are smaller than asked; each splice moves less (raise fs.pipe-max-size, or lower pipe_size)",
			"pipe_size", asked, "granted", p.size, "pipe_max_size", strings.TrimSpace(string(maxSize)))
	}
	l.pool.put(p, true)
}

// serve gives every loop its own duplicate of ln's socket.
func (e *spliceEngine) serve(ln net.Listener, f *Frontend) error {
	fd, err := listenerFD(ln)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// Accepted sockets inherit TCP_NODELAY from their listener: setting it
	// once here saves a system call per connection.
	domain, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	tcp := domain == unix.AF_INET || domain == unix.AF_INET6
	nodelay := tcp && unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) == nil
	dups := make([]int, 0, len(e.loops))
	for range e.loops {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeFDs(dups)
			return fmt.Errorf("listener %s: duplicate fd: %w", ln.Addr(), err)
		}
		dups = append(dups, dup)
	}
	opts := &clientOpts{}
	for i, l := range e.loops {
		<-l.postListener(cmdServe, &listener{fd: dups[i], key: ln, fe: f, tcp: tcp, nodelay: nodelay, opts: opts})
	}
	return nil
}

func (e *spliceEngine) unserve(ln net.Listener) {
	for _, l := range e.loops {
		<-l.postListener(cmdUnserve, &listener{fd: -1, key: ln})
	}
}

// listenerFD returns a duplicate of ln's socket fd, close-on-exec and
// non-blocking.
func listenerFD(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("listener %s: %T has no file descriptor", ln.Addr(), ln)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	fd := -1
	var dupErr error
	err = raw.Control(func(s uintptr) {
		fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err == nil {
		err = dupErr
	}
	if err != nil {
		return -1, fmt.Errorf("listener %s: duplicate fd: %w", ln.Addr(), err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listener %s: set non-blocking: %w", ln.Addr(), err)
	}
	return fd, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// now returns the engine's monotonic clock in nanoseconds.
func (e *spliceEngine) now() int64 { return int64(time.Since(e.start)) }

func (e *spliceEngine) stopAccepting() {
	for _, l := range e.loops {
		<-l.post(cmdStopAccept)
	}
	e.handoff.stopAccepting()
}

// resumeAccepting wakes loops paused at MaxConn; it does not wait, since
// it runs on a loop's own goroutine.
func (e *spliceEngine) resumeAccepting() {
	for _, l := range e.loops {
		l.post(cmdResume)
	}
}

func (e *spliceEngine) closeAll() {
	e.closeOnce.Do(func() {
		for _, l := range e.loops {
			<-l.post(cmdCloseAll)
		}
		e.wg.Wait()
		e.handoff.closeAll()
	})
}

func (e *spliceEngine) pipes() (open, idle int64) {
	for _, l := range e.loops {
		open += l.pool.open.Load()
		idle += l.pool.idle.Load()
	}
	return open, idle
}

func (e *spliceEngine) alive(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, l := range e.loops {
		if l.dead.Load() {
			return false
		}
		select {
		case <-l.post(cmdPing):
		case <-t.C:
			return false
		}
	}
	return true
}

// pipesCreated reports how many pipes the loops ever made (for tests).
func (e *spliceEngine) pipesCreated() (n int64) {
	for _, l := range e.loops {
		n += l.pool.created.Load()
	}
	return n
}
