//go:build linux

package splice

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lockedBuffer is a log destination for several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// dialSeeded connects to addr with a deadline and returns n bytes drawn
// from seed, to send.
func dialSeeded(addr string, n int, seed uint64, limit time.Duration) (net.Conn, []byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	c.SetDeadline(time.Now().Add(limit))
	data := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(data)
	return c, data, nil
}

// echoErr is echo for other goroutines: it returns what went wrong.
func echoErr(addr string, n int, seed uint64) error {
	c, data, err := dialSeeded(addr, n, seed, 30*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- b
	}()
	if _, err := c.Write(data); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	back := <-got
	if len(back) != n || sha256.Sum256(back) != sha256.Sum256(data) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes, equal=%v", n, len(back), bytes.Equal(back, data))
	}
	return nil
}

// TestPipeBudget: under a user's pipe budget (fs.pipe-user-pages-soft, as
// the packaged unit's unprivileged user has), many concurrent streams
// share it: rsp's pipes never hold more pages than the limit, new pipes
// are made smaller than asked once it is tight (and counted), every
// stream still arrives whole, and once they end no pipe is counted busy.
func TestPipeBudget(t *testing.T) {
	const soft = 1024 // pages: 4 MiB, four 1 MiB pipes' worth
	be := startEcho(t)
	logs := &lockedBuffer{}
	r := &Relay{Loops: 2, test: testHooks{pipeBudget: soft}, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	addr := startRelay(t, r, be.Addr())
	e := r.impl.(*spliceEngine)
	var most int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			most = max(most, e.budget.held.Load())
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	const streams = 24
	errs := inParallel(streams, func(i int) error {
		if err := echoErr(addr, 8<<20, uint64(i)); err != nil {
			return fmt.Errorf("stream %d: %w", i, err)
		}
		return nil
	})
	for _, err := range errs() {
		t.Error(err)
	}
	close(stop)
	<-sampled
	waitIdle(t, r)
	if most > soft {
		t.Errorf("rsp's pipes held %d pages at most; the budget is %d", most, soft)
	}
	if n := e.budget.small.Load(); n == 0 {
		t.Errorf("no pipe was made smaller than 1 MiB with %d streams in a budget of four 1 MiB pipes", streams)
	}
	if n := e.budget.busy.Load(); n != 0 {
		t.Errorf("%d pipes counted in use once every stream ended", n)
	}
	snap := r.Snapshot(time.Second)
	if snap.PipeBudget != soft*3/4 || snap.SmallPipes == 0 {
		t.Errorf("snapshot says budget %d pages, %d small pipes; want %d and some", snap.PipeBudget, snap.SmallPipes, soft*3/4)
	}
	if n := strings.Count(logs.String(), "pipes made smaller than pipe_size"); n != 1 {
		t.Errorf("the budget's warning was logged %d times; want once:\n%s", n, logs.String())
	}
	t.Logf("%d streams under a budget of %d pages: %d pages held at most, %d pipes made small", streams, soft, most, e.budget.small.Load())
}

// startStalledSink starts a backend that reads nothing until release is
// closed, with a small receive buffer so that rsp's socket towards it
// fills soon; then it reads each stream to its end and answers with the
// stream's SHA-256.
func startStalledSink(t *testing.T, release <-chan struct{}) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveEach(t, ln, func(c net.Conn) {
		<-release
		h := sha256.New()
		io.Copy(h, c)
		c.Write(h.Sum(nil))
	})
	return ln
}

// TestPipeParked: under a pipe budget, once half of it is held,
// connections whose backend stops reading do not hold full pipes. Each read takes only what the
// destination socket has room for, and a pipe left holding bytes that
// cannot be written is shrunk to those bytes (parked), so the pipes still
// moving bytes keep their full size: none is made small while they
// stall, although the stalled streams would hold the whole budget at
// full size. Every stream still arrives whole once the backend reads
// again.
func TestPipeParked(t *testing.T) {
	const (
		soft    = 4096      // pages: a budget of 3,072, a share of at most 192
		size    = 512 << 10 // 128 pages: full size within the share
		streams = 24        // 24 full pipes would hold 3,072 pages
		payload = 8 << 20
	)
	release := make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // a test that stops early leaves no reader blocked
	be := startStalledSink(t, release)
	r := &Relay{Loops: 2, PipeSize: size, test: testHooks{pipeBudget: soft}}
	addr := startRelay(t, r, be.Addr())
	e := r.impl.(*spliceEngine)
	errs := inParallel(streams, func(i int) error { return sendAndHash(addr, payload, uint64(i)) })
	// Parking starts once the budget is half held (tight): the pipes
	// that stalled before that keep their full size.
	full := int64(soft*3/4/2/(size/pageSize) + 1)
	deadline := time.Now().Add(20 * time.Second)
	for e.budget.parked.Load() < streams-full && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	parked, held, busy, small := e.budget.parked.Load(), e.budget.held.Load(), e.budget.busy.Load(), e.budget.small.Load()
	unblock()
	for _, err := range errs() {
		t.Error(err)
	}
	waitIdle(t, r)
	t.Logf("%d stalled streams: %d pipes parked, %d in use, %d pages held, %d pipes made small; %d made small once all moved again", streams, parked, busy, held, small, e.budget.small.Load())
	if parked < streams-full {
		t.Errorf("%d of %d stalled streams' pipes were parked; want all but the %d that stalled before half the budget was held", parked, streams, full)
	}
	// A parked pipe holds what at most minFill and a page need.
	if most := full*int64(size/pageSize) + int64(streams)*pagesOf(minFill+2*pageSize); held > most {
		t.Errorf("stalled streams held %d pages of pipes; with the pipes parked, at most %d", held, most)
	}
	if small != 0 {
		// (Once the backend reads again, all of them move at once and
		// share the budget: pipes may be made small then.)
		t.Errorf("%d pipes were made smaller than pipe_size while the streams stalled: their pipes took the budget", small)
	}
	if n, p := e.budget.busy.Load(), e.budget.parked.Load(); n != 0 || p != 0 {
		t.Errorf("%d pipes counted in use and %d parked once every stream ended", n, p)
	}
}

// inParallel runs f(0) to f(n-1) in goroutines of their own; the function
// it returns waits for all of them and returns the errors they returned.
func inParallel(n int, f func(i int) error) func() []error {
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- f(i) }()
	}
	return func() []error {
		var out []error
		for range n {
			if err := <-errs; err != nil {
				out = append(out, err)
			}
		}
		return out
	}
}

// sendAndHash sends n seeded bytes to addr, half-closes, and checks that
// the answer is their SHA-256.
func sendAndHash(addr string, n int, seed uint64) error {
	c, data, err := dialSeeded(addr, n, seed, 60*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(data); err != nil {
		return fmt.Errorf("stream %d: %w", seed, err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if want := sha256.Sum256(data); err != nil || !bytes.Equal(got, want[:]) {
		return fmt.Errorf("stream %d: %d bytes: backend's hash %x, want %x (%v)", seed, n, got, want, err)
	}
	return nil
}

// TestPipeParkSlots: under a tight budget, a pipe whose bytes sit in
// many slots (small segments, a slot each) cannot shrink to their byte
// count; park takes the smallest size the kernel accepts instead of
// giving up, counts it parked, and fit grows it back within the share
// once it is empty.
func TestPipeParkSlots(t *testing.T) {
	b := &pipeBudget{soft: 16384, limit: 12288}
	pp := &pipePool{max: 4, budget: b}
	p, err := pp.get()
	if err != nil {
		t.Fatal(err)
	}
	defer pp.put(p, false)
	if p.size != defaultPipeSize {
		t.Fatalf("a new pipe holds %d bytes; want %d", p.size, defaultPipeSize)
	}
	// 40 chunks of 10 bytes, each from its own page: 40 slots, 400 bytes.
	const chunks = 40
	src := make([]byte, chunks*pageSize)
	iov := make([]unix.Iovec, chunks)
	for i := range iov {
		iov[i].Base = &src[i*pageSize]
		iov[i].SetLen(10)
	}
	if n, err := unix.Vmsplice(p.w, iov, 0); err != nil || n != chunks*10 {
		t.Fatalf("vmsplice: %d, %v", n, err)
	}
	b.held.Add(b.limit / 2) // the rest of a tight budget, held by other pipes
	held := b.held.Load()
	pp.park(p, chunks*10)
	// 16 and 32 slots cannot take 40 buffers; 64 can.
	if p.size != 64*pageSize || !p.parked || b.parked.Load() != 1 {
		t.Fatalf("parked with 40 slots in use: %d bytes, parked %v (%d counted); want %d bytes, parked", p.size, p.parked, b.parked.Load(), 64*pageSize)
	}
	if got, want := b.held.Load(), held-int64(defaultPipeSize/pageSize-64); got != want {
		t.Errorf("budget holds %d pages after the park; want %d", got, want)
	}
	if n, err := unix.Read(p.r, make([]byte, chunks*10)); err != nil || n != chunks*10 {
		t.Fatalf("draining the parked pipe: %d bytes, %v", n, err)
	}
	pp.fit(p, defaultPipeSize)
	if p.size != defaultPipeSize || p.parked || b.parked.Load() != 0 || b.small.Load() != 0 {
		t.Errorf("unparked: %d bytes, parked %v (%d counted), %d small; want %d bytes, none", p.size, p.parked, b.parked.Load(), b.small.Load(), defaultPipeSize)
	}
	if got, want := b.held.Load(), held; got != want {
		t.Errorf("budget holds %d pages after the unpark; want %d", got, want)
	}
}

// TestPipePooledWhenTight: under a tight budget an idle pooled pipe holds
// the least size, not its full one, and is grown again when taken.
func TestPipePooledWhenTight(t *testing.T) {
	b := &pipeBudget{soft: 16384, limit: 12288}
	pp := &pipePool{max: 4, budget: b}
	p, err := pp.get()
	if err != nil {
		t.Fatal(err)
	}
	defer pp.drain()
	b.held.Add(b.limit / 2) // other pipes hold half the budget: tight
	pp.put(p, true)
	if len(pp.free) != 1 || p.size != minPipePages*pageSize {
		t.Fatalf("pooled under a tight budget: %d pooled, %d bytes; want 1 of %d", len(pp.free), p.size, minPipePages*pageSize)
	}
	if got, want := b.held.Load(), b.limit/2+minPipePages; got != want {
		t.Errorf("budget holds %d pages with the pooled pipe; want %d", got, want)
	}
	b.held.Add(-b.limit / 2)
	if q, err := pp.get(); err != nil || q != p || p.size != defaultPipeSize {
		t.Errorf("taken again: same %v, %d bytes, %v; want it grown to %d", q == p, p.size, err, defaultPipeSize)
	}
	pp.put(p, true)
}
