// The endpoints of the stream contract (contract_test.go): each side of a
// connection writes its stream with its pacing, reads its peer's with its
// own, ends its side in its close style, and reports what it observed.
// An endpoint that is to be killed runs in a child process: this test
// binary, re-executed with contractChildEnv set, which writes the stream on
// the socket it inherits as fd 3.

package tests

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// endKind is how one side (read or write) of an endpoint ended.
type endKind int

const (
	endComplete     endKind = iota // a write side: every byte written
	endEOF                         // a read side: a clean EOF
	endReset                       // ECONNRESET, or EPIPE on a write
	endDeadline                    // still open (blocked) at the deadline
	endSelfClosed                  // the endpoint closed its own socket while reading
	endKilled                      // the endpoint's process was killed
	endNotConnected                // the server never got a connection
	endOther                       // any other error
)

func (k endKind) String() string {
	return [...]string{"complete", "EOF", "reset", "open at deadline", "closed by itself", "killed", "never connected", "error"}[k]
}

// classify names how an I/O error ended a side.
func classify(err error) endKind {
	switch {
	case err == nil:
		return endComplete
	case errors.Is(err, io.EOF):
		return endEOF
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return endReset
	case errors.Is(err, os.ErrDeadlineExceeded):
		return endDeadline
	case errors.Is(err, net.ErrClosed):
		return endSelfClosed
	}
	return endOther
}

// urgentObs is what a reader saw of the urgent byte.
type urgentObs struct {
	seen   bool
	b      byte
	atMark bool // SIOCATMARK held where the reader expected the mark
}

func (u urgentObs) String() string {
	if !u.seen {
		return "no urgent byte"
	}
	return fmt.Sprintf("urgent %#02x (at mark: %v)", u.b, u.atMark)
}

// readObs is what an endpoint observed of its peer's stream.
type readObs struct {
	got    digest
	end    endKind
	err    error
	urgent urgentObs
	took   time.Duration // from the start of the run to the end of the read side
	// unreadAtKill is, for a killed endpoint, what its socket held unread
	// when it died (stopped first, so it read no more): more than 0
	// means its kernel reset the connection rather than sending a FIN.
	unreadAtKill int
}

func (o readObs) String() string {
	s := fmt.Sprintf("%v then %v", o.got, o.end)
	if o.end == endOther {
		s += fmt.Sprintf(" (%v)", o.err)
	}
	return s
}

// writeObs is what an endpoint observed of its own writing: n bytes
// accepted by the kernel (for a killed endpoint, the last count it
// reported) and how writing ended.
type writeObs struct {
	n   int64
	end endKind
	err error
}

func (o writeObs) String() string {
	s := fmt.Sprintf("wrote %d bytes, %v", o.n, o.end)
	if o.end == endOther {
		s += fmt.Sprintf(" (%v)", o.err)
	}
	return s
}

// sideObs is one endpoint's observations.
type sideObs struct {
	read  readObs
	write writeObs
}

// pairObs is one run of a scenario: both endpoints' observations and the
// transports they had.
type pairObs struct {
	via            bool // through rsp, not direct
	clientTr       transport
	serverTr       transport
	client, server sideObs
	setupErr       error  // the client could not connect at all
	rspLog         string // what a shared rsp logged during the run
}

// connector connects one run's two endpoints: dial gives the client's
// socket, accept the server's, each within the given time.
type connector struct {
	via      bool
	clientTr transport
	serverTr transport
	dial     func(timeout time.Duration) (net.Conn, error)
	accept   func(deadline time.Time) (net.Conn, error)
}

// runPair runs one connection of sc through cn and returns what both
// endpoints observed. Every wait is bounded by the scenario's budget.
func runPair(sc *scenario, cn connector) pairObs {
	obs := pairObs{via: cn.via, clientTr: cn.clientTr, serverTr: cn.serverTr}
	client, server := sc.endpoints()
	start := time.Now()
	deadline := start.Add(sc.budget())
	cc, err := cn.dial(5 * time.Second)
	if err != nil {
		obs.setupErr = fmt.Errorf("client connect: %w", err)
		return obs
	}
	clientDone := make(chan sideObs, 1)
	go func() { clientDone <- runEndpoint(cc, client, start, deadline) }()

	// A client that gives up may legitimately never reach the server
	// through a proxy; wait for it a little, not the whole budget.
	acceptBy := deadline
	if client.mayLeaveUnconnected() {
		acceptBy = time.Now().Add(2 * time.Second)
	}
	conn, err := cn.accept(acceptBy)
	if err != nil {
		obs.server.read = readObs{end: endNotConnected, err: err}
		obs.server.write = writeObs{end: endNotConnected, err: err}
	} else {
		obs.server = runEndpoint(conn, server, start, deadline)
	}
	obs.client = <-clientDone
	return obs
}

// runEndpoint plays e on c until e is done or the deadline passes, and
// closes c.
func runEndpoint(c net.Conn, e *endpoint, start, deadline time.Time) sideObs {
	if e.close == killed {
		return runKilledEndpoint(c, e, start, deadline)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	readDone := make(chan readObs, 1)
	go func() { readDone <- readFlow(c, e.in, start, deadline) }()
	w := writeFlow(c, e.out, nil)
	if w.end != endComplete {
		// Writing failed (the connection is gone, or stuck until the
		// deadline): let the read side see how it ends, then close.
		return sideObs{read: <-readDone, write: w}
	}
	var r readObs
	switch e.close {
	case closeShutdown:
		c.(interface{ CloseWrite() error }).CloseWrite()
		r = <-readDone
	case closeNow:
		c.Close()
		r = <-readDone
	case closeAfterRead:
		r = <-readDone
	case resetNow:
		setLingerZero(c)
		c.Close()
		r = <-readDone
	case resetAfterRead:
		r = <-readDone
		setLingerZero(c)
	}
	return sideObs{read: r, write: w}
}

// setLingerZero makes the next close of c abortive (SO_LINGER on, 0 s):
// TCP sends a reset instead of a FIN. Unix sockets accept the option and
// ignore it.
func setLingerZero(c net.Conn) {
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	})
}

// readFlow reads f from c with f's read pacing until EOF, an error, or
// the deadline, and stops at f's urgent mark to fetch the urgent byte.
func readFlow(c net.Conn, f *flow, start, deadline time.Time) readObs {
	h := sha256.New()
	var (
		obs           readObs
		n             int64
		gaps          = f.read.gaps
		paused, urged bool
	)
	chunk := f.read.chunk
	if chunk <= 0 {
		chunk = 256 << 10
	}
	buf := make([]byte, chunk)
	finish := func(err error) readObs {
		obs.got = digest{n: n}
		copy(obs.got.sum[:], h.Sum(nil))
		obs.end, obs.err = classify(err), err
		obs.took = time.Since(start)
		return obs
	}
	for {
		limit := int64(chunk)
		if f.urgentAt >= 0 && !urged {
			if n == f.urgentAt {
				obs.urgent = readUrgent(c, deadline)
				urged = true
			} else {
				limit = min(limit, f.urgentAt-n)
			}
		}
		if f.read.pauseAt >= 0 && !paused {
			if n == f.read.pauseAt {
				if f.read.pauseFor < 0 {
					time.Sleep(time.Until(deadline))
					return finish(os.ErrDeadlineExceeded)
				}
				sleepOrResume(f.read.pauseFor, f.read.resume)
				paused = true
			} else {
				limit = min(limit, f.read.pauseAt-n)
			}
		}
		var (
			k   int
			err error
		)
		if urged && n == f.urgentAt {
			k, err = readAtMark(c, buf[:limit], deadline)
		} else {
			k, err = c.Read(buf[:limit])
		}
		h.Write(buf[:k])
		n += int64(k)
		if err != nil {
			return finish(err)
		}
		if gaps > 0 {
			gaps--
			time.Sleep(f.read.gap)
		}
	}
}

// markRetry is how long a read at an urgent mark waits for readiness
// before it asks the socket again.
const markRetry = 20 * time.Millisecond

// readAtMark reads from c positioned at its urgent mark, until the
// deadline. Linux answers a non-blocking read there with EAGAIN whenever
// a signal is pending on the reading thread (tcp_recvmsg stops at the
// mark "if we have read anything or have SIGURG pending"), even with
// bytes or the end of the stream behind the mark. Go then waits for a
// readiness edge that may never come, since the bytes and the FIN or
// reset arrived before; a test process that starts and stops rsp gets
// SIGCHLD often enough to hit it (a direct connection stalled so in a
// long run, seed 1277). Short deadlines make the read ask again.
func readAtMark(c net.Conn, b []byte, deadline time.Time) (int, error) {
	defer c.SetReadDeadline(deadline)
	for {
		try := time.Now().Add(markRetry)
		if try.After(deadline) {
			try = deadline
		}
		c.SetReadDeadline(try)
		k, err := c.Read(b)
		if k > 0 || !errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(deadline) {
			return k, err
		}
	}
}

// sleepOrResume sleeps for d, or until resume closes (a nil resume never
// does).
func sleepOrResume(d time.Duration, resume <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-resume:
	}
}

// readUrgent waits briefly for the urgent byte at the reader's position:
// recv(MSG_OOB) answers EINVAL while no urgent byte is pending and EAGAIN
// while one is announced but not here yet. It gives up after two seconds,
// which is what a relay that drops urgent data (the copy relay) costs.
func readUrgent(c net.Conn, deadline time.Time) urgentObs {
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return urgentObs{}
	}
	until := time.Now().Add(2 * time.Second)
	if deadline.Before(until) {
		until = deadline
	}
	for time.Now().Before(until) {
		var (
			obs  urgentObs
			rerr error
		)
		raw.Control(func(fd uintptr) {
			var b [1]byte
			k, _, err2 := unix.Recvfrom(int(fd), b[:], unix.MSG_OOB|unix.MSG_DONTWAIT)
			if err2 == nil && k == 1 {
				// The mark is asked after the urgent byte is read (reading
				// it leaves the mark where it is): asked before, an urgent
				// byte arriving in between was seen off its mark.
				mark, err := unix.IoctlGetInt(int(fd), unix.SIOCATMARK)
				obs = urgentObs{seen: true, b: b[0], atMark: err == nil && mark == 1}
			}
			rerr = err2
		})
		if obs.seen {
			return obs
		}
		if rerr != nil && !errors.Is(rerr, unix.EINVAL) && !errors.Is(rerr, unix.EAGAIN) {
			return urgentObs{} // the connection is gone
		}
		time.Sleep(5 * time.Millisecond)
	}
	return urgentObs{}
}

// writeFlow writes f's stream on c with f's write pacing, sending the
// urgent byte at its offset, and calls progress (if not nil) with the
// bytes written so far after every write.
func writeFlow(c net.Conn, f *flow, progress func(int64)) writeObs {
	src := newStream(f.seed)
	piece := int64(contractBigWrite)
	if f.write.pieces > 0 {
		piece = (f.size + int64(f.write.pieces) - 1) / int64(f.write.pieces)
	}
	buf := make([]byte, min(piece, max(f.size, 1)))
	var (
		n                   int64
		urgentSent, stalled bool
	)
	for n < f.size || (f.urgentAt == n && !urgentSent) {
		if f.urgentAt == n && !urgentSent {
			if err := sendUrgent(c, f.urgent); err != nil {
				return writeObs{n: n, end: classify(err), err: err}
			}
			urgentSent = true
			continue
		}
		if f.write.stallAt == n && !stalled {
			sleepOrResume(f.write.stallFor, f.write.resume)
			stalled = true
		}
		k := min(piece, f.size-n)
		if f.urgentAt > n && !urgentSent {
			k = min(k, f.urgentAt-n)
		}
		if f.write.stallAt > n && !stalled {
			k = min(k, f.write.stallAt-n)
		}
		io.ReadFull(src, buf[:k])
		m, err := c.Write(buf[:k])
		n += int64(m)
		if progress != nil {
			progress(n)
		}
		if err != nil {
			return writeObs{n: n, end: classify(err), err: err}
		}
		if f.write.gap > 0 && n < f.size {
			time.Sleep(f.write.gap)
		}
	}
	return writeObs{n: n, end: endComplete}
}

// sendUrgent sends b as TCP urgent data (MSG_OOB).
func sendUrgent(c net.Conn, b byte) error {
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return fmt.Errorf("urgent byte: %w", err)
	}
	var serr error
	err = raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), []byte{b}, unix.MSG_OOB, nil)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err != nil {
		return fmt.Errorf("urgent byte: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("urgent byte: %w", os.NewSyscallError("sendto", serr))
	}
	return nil
}

// contractChildEnv, when set, makes this test binary a killable endpoint
// (see contractChild) instead of running tests.
const contractChildEnv = "RSP_CONTRACT_CHILD"

// childSpec is what a killable endpoint writes, passed as JSON in
// contractChildEnv.
type childSpec struct {
	Seed   uint64
	Size   int64
	Pieces int
	Gap    time.Duration
}

// init turns the test binary into a killable endpoint when asked, before
// TestMain builds anything.
func init() {
	if spec := os.Getenv(contractChildEnv); spec != "" {
		os.Exit(contractChild(spec))
	}
}

// contractChild is the killable endpoint: it drains what comes on fd 3,
// writes its stream there, reporting "w N" after every write and "done"
// at the end on stdout, and then waits to be killed (a minute at most, in
// case its parent died first).
func contractChild(spec string) int {
	var cs childSpec
	if err := json.Unmarshal([]byte(spec), &cs); err != nil {
		fmt.Fprintln(os.Stderr, "contract child:", err)
		return 2
	}
	c, err := net.FileConn(os.NewFile(3, "conn"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "contract child:", err)
		return 2
	}
	go io.Copy(io.Discard, c)
	f := &flow{seed: cs.Seed, size: cs.Size, urgentAt: -1,
		write: writePacing{pieces: cs.Pieces, gap: cs.Gap, stallAt: -1}}
	w := writeFlow(c, f, func(n int64) { fmt.Printf("w %d\n", n) })
	if w.end == endComplete {
		fmt.Println("done")
	} else {
		fmt.Println("failed", w.err)
	}
	time.Sleep(time.Minute)
	return 0
}

// runKilledEndpoint hands c to a child process that plays e and kills it
// with SIGKILL after e.killAfter, or once it has written its stream, or at
// the deadline, whichever comes first. The write side reports the last
// count the child announced: the kernel had accepted at least that many
// bytes before the kill.
func runKilledEndpoint(c net.Conn, e *endpoint, start, deadline time.Time) sideObs {
	fail := func(err error) sideObs {
		c.Close()
		return sideObs{read: readObs{end: endOther, err: err}, write: writeObs{end: endOther, err: err}}
	}
	f, err := c.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		return fail(fmt.Errorf("socket for the child: %w", err))
	}
	c.Close() // the child owns the socket now: its death closes it
	defer f.Close()
	spec, _ := json.Marshal(childSpec{Seed: e.out.seed, Size: e.out.size, Pieces: e.out.write.pieces, Gap: e.out.write.gap})
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), contractChildEnv+"="+string(spec))
	cmd.ExtraFiles = []*os.File{f}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fail(fmt.Errorf("child stdout: %w", err))
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start child: %w", err))
	}
	// This process's copy stays open until the kill, to see what the
	// child left unread: the child is stopped, its socket looked at, then
	// killed, and the copy closed so that the death closes the socket.
	var once sync.Once
	unread := 0
	kill := func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGSTOP)
			waitStopped(cmd.Process.Pid)
			unread, _ = unix.IoctlGetInt(int(f.Fd()), unix.SIOCINQ)
			cmd.Process.Kill()
			f.Close()
		})
	}
	timer := time.AfterFunc(time.Until(deadline), kill)
	defer timer.Stop()
	if e.killAfter > 0 {
		t := time.AfterFunc(e.killAfter, kill)
		defer t.Stop()
	}
	var written int64
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		line := lines.Text()
		if v, ok := strings.CutPrefix(line, "w "); ok {
			written, _ = strconv.ParseInt(v, 10, 64)
		} else if line == "done" || strings.HasPrefix(line, "failed") {
			kill()
		}
	}
	kill()
	cmd.Wait()
	took := time.Since(start)
	return sideObs{read: readObs{end: endKilled, took: took, unreadAtKill: unread}, write: writeObs{n: written, end: endKilled}}
}

// waitStopped waits, up to 200 ms, until process pid is stopped.
func waitStopped(pid int) {
	for range 200 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) && (s[i+2] == 'T' || s[i+2] == 't') {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
