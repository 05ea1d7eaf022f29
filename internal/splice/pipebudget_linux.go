//go:build linux

package splice

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

// pipeBudget is what the kernel lets this process's user hold in pipes,
// and what rsp's pipes hold of it, in pages. An unprivileged user (the
// packaged unit's DynamicUser=) may hold fs.pipe-user-pages-soft pages of
// pipe buffers (16,384 by default: 64 pipes of 1 MiB); past it the kernel
// refuses F_SETPIPE_SZ and gives each new pipe 2 pages, which makes each
// splice move 8 KiB and costs several times the CPU per GiB. rsp sizes
// its pipes to stay under it instead: a new pipe gets a fair share of it
// among the pipes moving bytes, a pipe whose destination is full is
// parked (shrunk to its bytes), and pipes beyond the share are not
// pooled. Every loop of a relay shares one.
type pipeBudget struct {
	limit int64        // pages rsp aims to hold at most; 0: no limit
	soft  int64        // fs.pipe-user-pages-soft; 0: none applies
	held  atomic.Int64 // pages of rsp's open pipes, pooled or in use
	busy  atomic.Int64 // pipes in use
	// parked counts the pipes in use that were shrunk to the bytes they
	// hold while their destination is full; they move nothing until it
	// drains, so the fair share leaves them out.
	parked atomic.Int64
	// small counts the pipes made smaller than pipe_size, by rsp for the
	// budget or by the kernel.
	small atomic.Int64
	// log says, once, when the budget first makes a pipe small.
	log    *slog.Logger
	warned atomic.Bool
}

// minPipePages is the smallest size rsp asks for: the kernel's default
// pipe (64 KiB), which an unprivileged user gets while under the soft
// limit.
const minPipePages = 16

// newPipeBudget reads the limit that applies to this process: none for
// a user with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, or when the sysctl is 0.
func newPipeBudget() *pipeBudget {
	b := &pipeBudget{}
	if privilegedPipes() && initialUserNS() {
		return b
	}
	raw, err := os.ReadFile("/proc/sys/fs/pipe-user-pages-soft")
	if err != nil {
		return b
	}
	soft, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || soft <= 0 {
		return b
	}
	// A quarter is left for what the kernel counts that rsp does not
	// (pipes of other processes of the same user) and for pipes made
	// while others are being sized.
	b.soft, b.limit = soft, soft*3/4
	return b
}

// privilegedPipes reports whether this process's effective capabilities
// exempt it from the per-user pipe limits.
func privilegedPipes() bool {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			const capSysAdmin, capSysResource = 21, 24
			return err == nil && caps&(1<<capSysAdmin|1<<capSysResource) != 0
		}
	}
	return false
}

// initialUserNS reports whether this process runs in the initial user
// namespace, where its capabilities are those the kernel's pipe limits
// ask about (capable() looks there).
func initialUserNS() bool {
	raw, err := os.ReadFile("/proc/self/uid_map")
	return err == nil && strings.Join(strings.Fields(string(raw)), " ") == "0 0 4294967295"
}

// pagesOf returns the pages of a pipe asked to hold want bytes: the
// kernel rounds up to a power of two.
func pagesOf(want int) int64 {
	pages := int64(1)
	for pages*int64(pageSize) < int64(want) {
		pages *= 2
	}
	return pages
}

// size returns the capacity to ask for a pipe, given what was asked (want
// bytes), and whether that is less: want, or its fair share of the budget
// among the pipes in use, halved down to minPipePages. No pipe takes more
// than a sixteenth of the budget, and each leaves the pipes in use room
// for the smallest size.
func (b *pipeBudget) size(want int) (size int, small bool) {
	pages := pagesOf(want)
	if b == nil || b.limit == 0 {
		return int(pages) * pageSize, false
	}
	busy := b.busy.Load()
	moving := max(busy-b.parked.Load(), 0)
	// Parked pipes hold their pages in held already: room is left for
	// the moving ones.
	allowed := min(b.limit/(moving+1), b.limit/16, b.limit-b.held.Load()-minPipePages*moving)
	asked := pages
	for pages > minPipePages && pages > allowed {
		pages /= 2
	}
	return int(pages) * pageSize, pages < asked
}

// keep reports whether an empty pipe of size bytes may wait in a pool:
// not one larger than a new pipe's share would be, whose pages a new pipe
// needs more. Pipes within the share are kept: making a pipe anew costs
// four system calls, each time a direction drains.
func (b *pipeBudget) keep(size int) bool {
	if b == nil || b.limit == 0 {
		return true
	}
	pages := int64(size / pageSize)
	moving := max(b.busy.Load()-b.parked.Load(), 0)
	return pages <= max(min(b.limit/(moving+1), b.limit/16), minPipePages)
}

// tight reports whether a budget applies and rsp's pipes hold more than
// half of it: then reads are sized to their destination's room and
// blocked pipes are parked. Below that, a few busy pipes keep their full
// size at no extra system calls (8 streams at 1 MiB each hold 2,048 of
// the default 12,288 pages).
func (b *pipeBudget) tight() bool {
	return b.limited() && 2*b.held.Load() > b.limit
}

// limited reports whether a budget applies.
func (b *pipeBudget) limited() bool { return b != nil && b.limit > 0 }

// hold counts n bytes more (or fewer) of open pipes, and busy more (or
// fewer) pipes in use.
func (b *pipeBudget) hold(n, busy int) {
	if b != nil {
		b.held.Add(int64(n / pageSize))
		b.busy.Add(int64(busy))
	}
}

// park counts pipes parked (n > 0) or moving again (n < 0).
func (b *pipeBudget) park(n int) {
	if b != nil {
		b.parked.Add(int64(n))
	}
}

// use counts pipes taken from (n > 0) or given back to (n < 0) a pool.
func (b *pipeBudget) use(n int) {
	if b != nil {
		b.busy.Add(int64(n))
	}
}

// countSmall counts a pipe of size bytes made smaller than pipe_size
// (want), and says so the first time.
func (b *pipeBudget) countSmall(size, want int) {
	if b == nil {
		return
	}
	b.small.Add(1)
	if b.log != nil && b.limit > 0 && b.warned.CompareAndSwap(false, true) {
		b.log.Warn("pipes made smaller than pipe_size to stay within the user's pipe budget: each splice moves less (raise fs.pipe-user-pages-soft for busy hosts; rsp_pipes_small_total counts them)",
			"pipe_size", want, "granted", size, "pipe_user_pages_soft", b.soft, "budget_pages", b.limit)
	}
}
