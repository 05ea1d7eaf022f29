//go:build linux

package splice

import (
	"cmp"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// pageSize is the size of one pipe slot's page: a pipe of size bytes has
// size/pageSize slots.
var pageSize = os.Getpagesize()

// pipe is a kernel pipe used as the in-kernel buffer of one direction of
// one connection while bytes are in flight.
type pipe struct {
	r, w int // read and write ends
	size int // capacity in bytes
	// jref and owner are the pipe's and its connection's refs in the
	// pool's journal; 0 when there is none.
	jref, owner int32
	// parked says the pipe was shrunk to the bytes it holds while its
	// destination could take no more (pipePool.park).
	parked bool
	// sndbuf is the destination's send buffer size as last read for
	// fillFor (SO_SNDBUF, which TCP grows on its own); 0 asks again.
	// Kept here, not in the connection, since only a pipe in use needs it.
	sndbuf int32
}

// pipePool keeps a bounded number of empty pipes for one event loop. It is
// owned by that loop's goroutine; only the counters are read elsewhere.
//
// Invariant: every pipe in free is empty. A pipe that still holds bytes
// is closed, never pooled, so one connection's bytes can never reach
// another connection.
type pipePool struct {
	free     []*pipe
	max      int
	size     int          // F_SETPIPE_SZ request; 0 keeps the kernel default
	open     atomic.Int64 // pipes created and not yet closed, pooled or in use
	idle     atomic.Int64 // len(free), readable from other goroutines
	created  atomic.Int64 // pipes ever created (for tests and stats)
	fail     bool         // test hook: every new pipe fails with EMFILE
	granted  int          // capacity of the last pipe made; 0 before the first
	asked    int          // capacity asked of the last pipe made
	budget   *pipeBudget  // the user's pipe pages, shared by the relay's loops; nil: none
	j        LoopJournal  // records each pipe; nil when off
	jpending bool         // a PipeEnd is left for j.Flush
}

// defaultPipeSize is the capacity asked for each pipe when PipeSize is
// zero: 1 MiB, the kernel's default pipe-max-size. Each splice moves up to
// 16 times more per system call than through the kernel's 64 KiB pipes,
// which halves the proxy's CPU per GiB (README, design table). An empty
// pooled pipe holds no pages, so the size costs memory only while bytes
// are in flight.
const defaultPipeSize = 1 << 20

// get returns an empty pipe from the pool, or a new one. It returns nil
// with the error when no pipe can be made (typically EMFILE).
func (pp *pipePool) get() (*pipe, error) {
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free[n-1] = nil
		pp.free = pp.free[:n-1]
		pp.idle.Add(-1)
		pp.budget.use(1)
		if want := cmp.Or(pp.size, defaultPipeSize); pp.budget.limited() && p.size < want {
			pp.fit(p, want) // made small while the budget was tight
		}
		return p, nil
	}
	if pp.fail {
		return nil, unix.EMFILE
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	p := &pipe{r: fds[0], w: fds[1], size: defaultPipeSize}
	size, small := pp.budget.size(cmp.Or(pp.size, defaultPipeSize))
	pp.asked = size
	// F_SETPIPE_SZ rounds up to pages; it fails above
	// /proc/sys/fs/pipe-max-size (unless privileged), and the kernel may
	// give less once the user's pipe-user-pages-soft is used up. Either
	// way, ask the pipe what it really holds.
	if n, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size); err == nil {
		p.size = n
	} else if n, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0); err == nil {
		p.size = n
	}
	pp.granted = p.size
	pp.budget.hold(p.size, 1)
	if small || p.size < size {
		pp.budget.countSmall(p.size, cmp.Or(pp.size, defaultPipeSize))
	}
	if pp.j != nil {
		ref, err := pp.j.Pipe(p.r, p.w)
		if err != nil {
			pp.budget.hold(-p.size, -1)
			unix.Close(p.r)
			unix.Close(p.w)
			return nil, err
		}
		p.jref = ref
	}
	pp.open.Add(1)
	pp.created.Add(1)
	return p, nil
}

// resize asks the kernel to make p hold size bytes and counts what it
// granted in the budget.
func (pp *pipePool) resize(p *pipe, size int) error {
	n, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size)
	if err == nil {
		pp.budget.hold(n-p.size, 0)
		p.size = n
	}
	return err
}

// unpark counts p as moving again; it reports whether it was parked.
func (pp *pipePool) unpark(p *pipe) bool {
	if !p.parked {
		return false
	}
	p.parked = false
	pp.budget.park(-1)
	return true
}

// park marks p parked when the pipe budget is tight: its destination
// took no more with n bytes still in it. It is shrunk to what those bytes
// need, so that a connection whose peer reads slowly holds a few pages of
// the budget, not a full pipe's, and the pipes still moving bytes keep
// their full size. The kernel refuses (EBUSY) a size whose slots cannot
// take the bytes (many small segments hold a slot each): the next size up
// is tried, down to none. A parked pipe is left out of the fair share.
func (pp *pipePool) park(p *pipe, n int) {
	if !pp.budget.tight() {
		return
	}
	// One slot more: the first may hold the rest of a partly written page.
	for size := max(int(pagesOf(n+pageSize)), minPipePages) * pageSize; size < p.size; size *= 2 {
		if err := pp.resize(p, size); err != unix.EBUSY {
			break
		}
	}
	if !p.parked {
		p.parked = true
		pp.budget.park(1)
	}
}

// fit makes p, empty, hold need bytes as far as a new pipe's share
// allows, and a moving pipe again if it was parked. A parked pipe that
// the share keeps below need and pipe_size counts as made small.
func (pp *pipePool) fit(p *pipe, need int) {
	parked := pp.unpark(p)
	want := cmp.Or(pp.size, defaultPipeSize)
	share, small := pp.budget.size(want)
	if size := min(share, int(pagesOf(need))*pageSize); p.size < size {
		pp.resize(p, size)
	}
	if parked && small && p.size < need {
		pp.budget.countSmall(p.size, want)
	}
}

// put returns a pipe. An empty pipe goes back to the pool while it has
// room; a pipe holding bytes (dirty) or one beyond the bound is closed.
func (pp *pipePool) put(p *pipe, empty bool) {
	pp.budget.use(-1)
	p.sndbuf = 0
	pp.unpark(p)
	if empty && len(pp.free) < pp.max && pp.budget.tight() && p.size > minPipePages*pageSize {
		// Idle pipes must not hold a tight budget: pooled at the least
		// size, and grown again when taken (two system calls in all;
		// closing it and making it anew would be four).
		pp.resize(p, minPipePages*pageSize)
	}
	if empty && len(pp.free) < pp.max && pp.budget.keep(p.size) {
		if pp.j != nil && p.owner != 0 {
			pp.j.Own(p.jref, 0, false) // nobody's: a successor ignores it
			p.owner = 0
		}
		pp.free = append(pp.free, p)
		pp.idle.Add(1)
		return
	}
	pp.destroy(p, !empty)
}

// destroy closes p; dirty says it holds bytes, which are lost: its
// connection can no longer be resumed after a crash.
func (pp *pipePool) destroy(p *pipe, dirty bool) {
	if pp.j != nil {
		if dirty {
			pp.j.Taint(p.owner)
		}
		if !pp.j.PipeEnd(p.jref) {
			pp.jpending = true
		}
	}
	unix.Close(p.r)
	unix.Close(p.w)
	pp.open.Add(-1)
	pp.budget.hold(-p.size, 0)
}

// drain closes every pooled pipe.
func (pp *pipePool) drain() {
	for i, p := range pp.free {
		pp.destroy(p, false)
		pp.free[i] = nil
	}
	pp.idle.Add(-int64(len(pp.free)))
	pp.free = pp.free[:0]
}
