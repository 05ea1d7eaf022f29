package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"rsp/internal/handover"
)

// crashRsp starts rsp as systemd would, with the listening socket ln
// (named web) and what store holds passed as LISTEN_FDS, and NOTIFY_SOCKET
// pointing at store.
func crashRsp(t *testing.T, ln *net.TCPListener, store *handover.FDStore, cfg string) *proc {
	t.Helper()
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	files, names, err := store.Files()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	script := `n="$1"; k="$2"; shift 2; LISTEN_PID=$$ LISTEN_FDS="$k" LISTEN_FDNAMES="$n" exec "$@"`
	all := append([]string{"web"}, names...)
	cmd := exec.Command("sh", "-c", script, "sh", strings.Join(all, ":"), strconv.Itoa(len(all)), rspBin, "-config", cfg)
	cmd.ExtraFiles = append([]*os.File{lf}, files...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+store.Path, "FDSTORE=65536")
	p := launch(t, cmd)
	p.waitStarted()
	return p
}

// crashSetup returns a store standing in for systemd's, and the listening
// socket that systemd would pass rsp as "web"; both close when the test
// ends.
func crashSetup(t *testing.T) (*handover.FDStore, *net.TCPListener) {
	t.Helper()
	store, err := handover.NewFDStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return store, ln
}

var crashTookRE = regexp.MustCompile(`msg="took over the live connections of an rsp that ended without handing over \(crash survival\)" conns=(\d+) reset=(\d+) bytes_in_pipes=(\d+)`)

// TestCrashSurvival: with handover = "crash", rsp keeps each established
// connection and each pipe in the file descriptor store while it lives;
// after kill -9 the next rsp, given what the store holds, resumes every
// stream mid-flight (some with bytes held in the dead process's pipes,
// one half-closed with bytes still coming back, one idle) byte-exact
// with no reset, serves new clients on the same socket, and in the end
// the store and the new process hold nothing of the old connections.
func TestCrashSurvival(t *testing.T) {
	store, ln := crashSetup(t)
	handed := make(chan struct{})
	var closeHanded sync.Once
	defer closeHanded.Do(func() { close(handed) })
	be := handoverBackend(t, handed)
	addr := ln.Addr().String()
	cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
conn_log = "all"
handover = "crash"
[frontend.f]
socket = "web"
backend = "b"
[backend.b]
server.s = { address = %q }
`, be.Addr()))
	p1 := crashRsp(t, ln, store, cfg)
	if !strings.Contains(p1.stderr.String(), "crash survival on") {
		t.Fatalf("rsp did not turn crash survival on:\n%s", p1.stderr.String())
	}
	baseSockets := socketFDs(t, p1.pid())

	const streams = 30
	ms := startCarriedStreams(t, addr, streams, 2000, handed)
	time.Sleep(300 * time.Millisecond) // mid-stream
	if fds, _ := store.Len(); fds < 2*(streams+2) {
		t.Fatalf("the store holds %d descriptors with %d connections live; want at least 2 each", fds, streams+2)
	}

	p1.cmd.Process.Kill() // SIGKILL: nothing runs in rsp after this
	p1.wait(10 * time.Second)
	oldPID := p1.pid()
	p2 := crashRsp(t, ln, store, cfg)
	m := crashTookRE.FindStringSubmatch(p2.stderr.String())
	if m == nil {
		t.Fatalf("new rsp logged no crash take-over:\n%s", p2.stderr.String())
	}
	closeHanded.Do(func() { close(handed) })
	t.Logf("after kill -9: %s", m[0])
	if m[2] != "0" {
		t.Errorf("%s connections reset after the crash; want none (no urgent data, no end under way)", m[2])
	}
	if n, _ := strconv.Atoi(m[1]); n < 2*streams/3+2 {
		t.Errorf("new rsp resumed %d connections; want at least %d", n, 2*streams/3+2)
	}
	if n, _ := strconv.Atoi(m[3]); n == 0 {
		t.Errorf("no bytes came in the dead rsp's pipes; the stalled streams should have filled them")
	}

	ms.stillServes(t, addr, "crash")
	ms.wait(t)

	// In the end the store holds the new journal and pooled pipes only,
	// and the new process no socket of a finished stream.
	var left []string
	if !eventually(10*time.Second, func() bool {
		files, names, err := store.Files()
		if err != nil {
			return false
		}
		for _, f := range files {
			f.Close()
		}
		left = left[:0]
		for _, name := range names {
			if strings.Contains(name, ".c.") || strings.Contains(name, "."+strconv.Itoa(oldPID)) {
				left = append(left, name)
			}
		}
		return len(left) == 0
	}) {
		t.Errorf("the store still holds %v once every stream ended", left)
	}
	if got := socketFDs(t, p2.pid()); got != baseSockets {
		t.Errorf("new rsp holds %d sockets once every stream ended; the first held %d before any client", got, baseSockets)
	}
	// One log line per connection from the new process, none reset.
	conns := regexp.MustCompile(`msg=conn .*server=s .*cause=(\S+)`)
	var lines [][]string
	eventually(5*time.Second, func() bool {
		lines = conns.FindAllStringSubmatch(p2.stderr.String(), -1)
		return len(lines) >= streams+3
	})
	if len(lines) != streams+3 {
		t.Errorf("%d connection log lines from the new rsp; want %d (the streams, the half-closed, the idle and the new client)", len(lines), streams+3)
	}
	for _, l := range lines {
		if l[1] != "client_close" && l[1] != "server_close" {
			t.Errorf("a connection ended with cause %s: %s", l[1], l[0])
		}
	}
	p2.signal(syscall.SIGTERM)
	p2.wait(40 * time.Second)
}

// TestCrashResets: what a crash leaves that cannot be resumed as it was
// ends in a reset, never a clean end of stream: a client whose backend
// was still connecting (rsp holds it with SO_LINGER 0 until it is
// journaled), and a connection that had urgent data (its byte may have
// been in rsp's memory). A stream that was fine resumes beside them.
func TestCrashResets(t *testing.T) {
	store, ln := crashSetup(t)
	be := echoBackend(t)
	hole, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
handover = "crash"
[frontend.f]
socket = "web"
backend = "b"
[backend.b]
server.s = { address = %q }
[frontend.h]
listen = "127.0.0.1:0"
backend = "hole"
connect_timeout = "60s"
[backend.hole]
server.h = { address = %q }
`, be.Addr(), blackHole(t)))
	p1 := crashRsp(t, ln, store, cfg)
	addr, holeAddr := ln.Addr().String(), listeningOn(p1, "h")
	fine, urgent := dial(t, addr), dial(t, addr)
	defer fine.Close()
	defer urgent.Close()
	for _, c := range []*net.TCPConn{fine, urgent} {
		fmt.Fprintf(c, "one\n")
		if l, err := readLine(c, 5*time.Second); err != nil || l != "one\n" {
			t.Fatalf("before the crash: %q, %v", l, err)
		}
	}
	raw, err := urgent.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { syscall.Sendto(int(fd), []byte("!"), syscall.MSG_OOB, nil) })
	dialing := dial(t, holeAddr)
	defer dialing.Close()
	time.Sleep(200 * time.Millisecond) // rsp sees both

	p1.cmd.Process.Kill()
	p1.wait(10 * time.Second)
	// The listener of frontend h was rsp's own: gone with it.
	dialing.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := dialing.Read(make([]byte, 1)); !isReset(err) {
		t.Errorf("client still connecting at the crash: read = %v; want a reset", err)
	}
	p2 := crashRsp(t, ln, store, cfg)
	m := crashTookRE.FindStringSubmatch(p2.stderr.String())
	if m == nil || m[1] != "1" || m[2] != "1" {
		t.Fatalf("want 1 connection resumed and 1 reset after the crash; got %q:\n%s", m, p2.stderr.String())
	}
	urgent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(urgent); !isReset(err) {
		t.Errorf("connection with urgent data at the crash: read = %v; want a reset", err)
	}
	fmt.Fprintf(fine, "two\n")
	if l, err := readLine(fine, 5*time.Second); err != nil || l != "two\n" {
		t.Errorf("connection resumed after the crash: %q, %v", l, err)
	}
}

// TestCrashStoreDropped: when no rsp takes the connections a crash left
// (systemd refused the restart, StartLimitBurst=, and dropped its store),
// their clients see a reset, not a clean end of stream: rsp keeps
// SO_LINGER 0 on a journaled connection's sockets until it ends cleanly.
func TestCrashStoreDropped(t *testing.T) {
	store, ln := crashSetup(t)
	be := echoBackend(t)
	cfg := writeConfig(t, "", fmt.Sprintf("[global]\nhandover = \"crash\"\n[frontend.f]\nsocket = \"web\"\nbackend = \"b\"\n[backend.b]\nserver.s = { address = %q }\n", be.Addr()))
	p := crashRsp(t, ln, store, cfg)
	c := dial(t, ln.Addr().String())
	defer c.Close()
	fmt.Fprintf(c, "one\n")
	if l, err := readLine(c, 5*time.Second); err != nil || l != "one\n" {
		t.Fatalf("before the crash: %q, %v", l, err)
	}
	p.cmd.Process.Kill()
	p.wait(10 * time.Second)
	store.Close() // nobody resumes them
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !isReset(err) {
		t.Errorf("client of a connection nobody resumed: read = %v; want a reset", err)
	}
}

// TestCrashJournalWaits: when systemd's queue is full (a busy PID 1), the
// stores of new connections wait in rsp, which says so in its metrics;
// meanwhile an event loop polls the notification socket for room, and once
// systemd reads again the idle loops send what waited with no traffic to
// wake them. Then rsp's metrics and STATUS= count every connection kept,
// and a crash resets none of them.
func TestCrashJournalWaits(t *testing.T) {
	store, ln := crashSetup(t)
	be := echoBackend(t)
	cfg := writeConfig(t, "", fmt.Sprintf("[global]\nhandover = \"crash\"\nmetrics = \"127.0.0.1:0\"\n[frontend.f]\nsocket = \"web\"\nbackend = \"b\"\n[backend.b]\nserver.s = { address = %q }\n", be.Addr()))
	p1 := crashRsp(t, ln, store, cfg)
	maddr := metricsAddr(t, p1)
	release := store.Hold()
	defer release()

	// Connections until some of their stores wait: past systemd's queue
	// (net.unix.max_dgram_qlen: 10, or 512 where systemd raised it) and
	// what rsp's socket buffers.
	var conns []*net.TCPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	journal := func() (kept, waiting float64) {
		s := scrapeMetrics(t, maddr)
		return s["rsp_crash_journal_connections"], s["rsp_crash_journal_waiting"]
	}
	var kept, waiting float64
	for len(conns) < 800 && waiting == 0 {
		for range 40 {
			i, c := len(conns), dial(t, ln.Addr().String())
			conns = append(conns, c)
			fmt.Fprintf(c, "one %d\n", i)
			if l, err := readLine(c, 5*time.Second); err != nil || l != fmt.Sprintf("one %d\n", i) {
				t.Fatalf("connection %d with systemd busy: %q, %v", i, l, err)
			}
		}
		kept, waiting = journal()
	}
	n := len(conns)
	if waiting == 0 || kept >= float64(n) {
		t.Fatalf("%d connections with systemd's queue full: rsp_crash_journal_connections %v, rsp_crash_journal_waiting %v; want under %d and some", n, kept, waiting, n)
	}
	if fd := pollsJournal(t, p1.pid()); fd < 0 {
		t.Error("no event loop polls the notification socket for room while stores wait")
	}

	// Watched from the store's side alone: a scrape would wake the loops.
	release()
	held, released := waiting, time.Now()
	stored := 0
	if !eventually(time.Minute, func() bool { stored = storedConns(t, store); return stored == n }) {
		t.Fatalf("once systemd reads again, the store holds %d connections; want %d", stored, n)
	}
	t.Logf("%v messages waited; every connection was in the store %v after systemd read again", held, time.Since(released).Round(time.Millisecond))
	if !eventually(5*time.Second, func() bool { kept, waiting = journal(); return kept == float64(n) && waiting == 0 }) {
		t.Errorf("with every connection stored: rsp_crash_journal_connections %v, rsp_crash_journal_waiting %v; want %d and 0", kept, waiting, n)
	}
	if !eventually(5*time.Second, func() bool { return pollsJournal(t, p1.pid()) < 0 }) {
		t.Error("an event loop still polls the notification socket with nothing waiting")
	}
	want := fmt.Sprintf(", %d kept in systemd's store", n)
	if !eventually(5*time.Second, func() bool { return strings.HasSuffix(store.Status(), want) }) {
		t.Errorf("STATUS=%q; want it to end %q", store.Status(), want)
	}

	p1.cmd.Process.Kill()
	p1.wait(10 * time.Second)
	p2 := crashRsp(t, ln, store, cfg)
	m := crashTookRE.FindStringSubmatch(p2.stderr.String())
	if m == nil || m[1] != strconv.Itoa(n) || m[2] != "0" {
		t.Fatalf("want %d connections resumed and none reset after the crash; got %q:\n%s", n, m, p2.stderr.String())
	}
	for i, c := range conns {
		fmt.Fprintf(c, "two %d\n", i)
		if l, err := readLine(c, 5*time.Second); err != nil || l != fmt.Sprintf("two %d\n", i) {
			t.Errorf("connection %d after the crash: %q, %v", i, l, err)
		}
		c.Close()
	}
	p2.signal(syscall.SIGTERM)
	p2.wait(40 * time.Second)
}

// storedConns returns how many connections store holds.
func storedConns(t *testing.T, store *handover.FDStore) int {
	t.Helper()
	files, names, err := store.Files()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, f := range files {
		f.Close()
		if strings.Contains(names[i], ".c.") {
			n++
		}
	}
	return n / 2 // two sockets each
}

// pollsJournal returns a socket that an epoll instance of process pid
// watches for room to write alone (EPOLLOUT, level-triggered, and the
// EPOLLERR|EPOLLHUP the kernel adds: what the event loops register only
// for the journal's notification socket), or -1 if none.
func pollsJournal(t *testing.T, pid int) int {
	t.Helper()
	watch := regexp.MustCompile(`(?m)^tfd:\s+(\d+)\s+events:\s+1c\s`)
	targets := fdTargets(t, pid)
	for fd, target := range targets {
		if target != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
		if err != nil {
			continue
		}
		for _, m := range watch.FindAllStringSubmatch(string(info), -1) {
			if tfd, _ := strconv.Atoi(m[1]); strings.HasPrefix(targets[tfd], "socket:") {
				return tfd
			}
		}
	}
	return -1
}
