package tests

import (
	"bufio"
	"bytes"
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
)

// handoverBackend serves the streams of TestHandoverSIGUSR2. A
// connection's first line names what to do:
//
//	"echo"       echo until EOF and close;
//	"stall"      wait for handed (rsp's pipes fill meanwhile), then echo;
//	"stream N"   read until the client's EOF, then send N bytes of seed
//	             N, the second half once handed is closed, then close: its
//	             client is half-closed while bytes flow back.
func handoverBackend(t *testing.T, handed <-chan struct{}) net.Listener {
	ln := listen(t)
	serveEach(ln, handoverServe(handed))
	return ln
}

// handoverServe is handoverBackend's handler of one connection.
func handoverServe(handed <-chan struct{}) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 1 && (f[0] == "echo" || f[0] == "stall"):
			if f[0] == "stall" {
				<-handed
			}
			if _, err := io.Copy(c, br); err == nil {
				c.CloseWrite()
			}
		case len(f) == 2 && f[0] == "stream":
			n, _ := strconv.Atoi(f[1])
			if _, err := io.Copy(io.Discard, br); err != nil {
				return
			}
			if _, err := send(&gate{w: c, at: n / 2, open: handed}, uint64(n), int64(n)); err == nil {
				c.CloseWrite()
			}
		}
	}
}

// lateBackend is a server whose listening queue is full until open is
// closed (connects to it wait, their SYNs dropped), and which then
// serves each connection with handle. It returns its address.
func lateBackend(t *testing.T, open <-chan struct{}, handle func(*net.TCPConn)) string {
	t.Helper()
	fd, addr := fullQueue(t)
	f := os.NewFile(uintptr(fd), "late backend")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		<-open
		serveEach(ln, handle)
	}()
	return addr
}

// gate writes to w, and waits for open once at bytes have gone.
type gate struct {
	w    io.Writer
	at   int
	n    int
	open <-chan struct{}
}

func (g *gate) Write(b []byte) (int, error) {
	if g.n < g.at && g.n+len(b) >= g.at {
		k, err := g.w.Write(b[:g.at-g.n])
		g.n += k
		if err != nil {
			return k, err
		}
		<-g.open
		m, err := g.w.Write(b[k:])
		g.n += m
		return k + m, err
	}
	m, err := g.w.Write(b)
	g.n += m
	return m, err
}

// echoGated is echoPaced whose sender waits for open halfway.
func echoGated(c *net.TCPConn, seed uint64, n int64, open <-chan struct{}) error {
	return echoVia(c, c, &gate{w: c, at: int(n / 2), open: open}, seed, n)
}

var handedRE = regexp.MustCompile(`msg="handed over" pid=(\d+) conns=(\d+)`)
var pendingRE = regexp.MustCompile(`msg="took over live connections" from="rsp pid \d+" .* not_yet_connected=(\d+)`)
var tookRE = regexp.MustCompile(`msg="took over live connections" from="rsp pid (\d+)" conns=(\d+) lost=(\d+) listeners=\d+ bytes_in_pipes=(\d+)`)

// exited reports whether pid has exited (gone, or a zombie not yet
// reaped).
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// TestHandoverSIGUSR2: SIGUSR2 makes rsp start its successor from its
// own binary and hand it the listener and every live connection: streams
// mid-flight (some with bytes held in rsp's pipes, one half-closed with
// bytes still coming back) finish byte-exact with no reset; clients not
// yet connected (connecting to a server that has not answered, halfway
// through a PROXY header or a ClientHello) are routed and connected by
// the successor, byte-exact; a connection idle at the hand-over keeps
// working; the old process exits 0; the new one serves new clients on
// the same address and, once every stream ended, holds no connection and
// no pipe.
func TestHandoverSIGUSR2(t *testing.T) {
	handed := make(chan struct{})
	var closeHanded sync.Once
	defer closeHanded.Do(func() { close(handed) })
	be := handoverBackend(t, handed)
	p := startRsp(t, "-config", writeConfig(t, "", fmt.Sprintf(`
[global]
conn_log = "all"
[frontend.f]
listen = "127.0.0.1:0"
backend = "b"
[frontend.hole]
listen = "127.0.0.1:0"
backend = "hole"
connect_timeout = "60s"
[frontend.hdr]
listen = "127.0.0.1:0"
backend = "b"
accept_proxy_from = "127.0.0.0/8"
connect_timeout = "60s"
[frontend.tls]
listen = "127.0.0.1:0"
backend = "b"
sni_timeout = "60s"
[frontend.tls.sni]
"a.example" = "e"
[backend.b]
server.s = { address = %q }
[backend.hole]
server.h = { address = %q }
[backend.e]
server.e = { address = %q }
`, be.Addr(), lateBackend(t, handed, handoverServe(handed)), echoBackend(t).Addr())))
	addr, holeAddr := listeningOn(p, "f"), listeningOn(p, "hole")
	baseSockets := socketFDs(t, p.pid())
	const streams = 60
	const size, stallSize = carriedSize, carriedStall
	ms := startCarriedStreams(t, addr, streams, 1000, handed)
	// Clients not yet connected at the hand-over: one whose server has
	// not answered the connect (its listening queue is full until the
	// hand-over), with its request sent; two halfway through a PROXY
	// header and a ClientHello. The successor takes them on.
	dialing := dial(t, holeAddr)
	defer dialing.Close()
	inHeader, inHello := dial(t, listeningOn(p, "hdr")), dial(t, listeningOn(p, "tls"))
	defer inHeader.Close()
	defer inHello.Close()
	const pendingSize = 256 << 10
	if _, err := dialing.Write([]byte("echo\n")); err != nil {
		t.Fatal(err)
	}
	pendingSent := make(chan digest, 1)
	go func() {
		// More than the socket buffers hold: it finishes once relayed.
		d, err := send(dialing, 77, pendingSize)
		if err == nil {
			dialing.CloseWrite()
		}
		pendingSent <- d
	}()
	fmt.Fprintf(inHeader, "PROXY TCP4 192.0.2.1")
	hello := clientHello(t, "a.example")
	inHello.Write(hello[:7])
	time.Sleep(200 * time.Millisecond) // mid-stream

	oldPID := p.pid()
	newPID := handOver(t, p)
	if !eventually(10*time.Second, func() bool { return exited(oldPID) }) {
		t.Fatalf("old rsp %d still runs after the hand-over", oldPID)
	}
	closeHanded.Do(func() { close(handed) })
	// The new rsp logs the take-over once the old one has let go: that
	// may come a moment after the old one exited.
	var m []string
	eventually(10*time.Second, func() bool {
		m = tookRE.FindStringSubmatch(p.stderr.String())
		return m != nil
	})
	if m == nil || m[1] != strconv.Itoa(oldPID) || m[3] != "0" {
		t.Fatalf("new rsp did not log taking over from %d with none lost:\n%s", oldPID, p.stderr.String())
	}
	if n, _ := strconv.Atoi(m[4]); n == 0 {
		t.Errorf("no bytes came in rsp's pipes; the stalled streams should have filled them")
	}
	// At least the gated streams, the stalled ones, the half-closed
	// one and the idle one were live.
	if n, _ := strconv.Atoi(m[2]); n < 2*streams/3+2 {
		t.Errorf("new rsp took over %d connections; want at least %d", n, 2*streams/3+2)
	}

	if m := pendingRE.FindStringSubmatch(p.stderr.String()); m == nil {
		t.Errorf("new rsp logged no count of clients not yet connected:\n%s", p.stderr.String())
	} else if n, _ := strconv.Atoi(m[1]); n < 3 {
		t.Errorf("new rsp did not log taking over the 3 clients not yet connected (%v):\n%s", m, p.stderr.String())
	}
	// The client whose connect was under way: connected by the
	// successor once its server answers, every byte back.
	dialing.SetDeadline(time.Now().Add(30 * time.Second))
	if got, err := receive(dialing); err != nil || got != <-pendingSent || got.n != pendingSize {
		t.Errorf("client still connecting at the hand-over: got back %v, %v; want %v", got, err, expected(77, pendingSize))
	}
	// The PROXY header and the ClientHello, finished: the successor reads
	// them and relays what follows.
	fmt.Fprintf(inHeader, " 198.51.100.2 4321 80\r\necho\n")
	inHello.Write(hello[7:])
	for what, c := range map[string]*net.TCPConn{"PROXY header": inHeader, "ClientHello": inHello} {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		sent, err := send(c, 78, 64<<10)
		if err == nil {
			err = c.CloseWrite()
		}
		var got digest
		if err == nil && what == "ClientHello" {
			// The echo server returns the hello first.
			back := make([]byte, len(hello))
			if _, err = io.ReadFull(c, back); err == nil && !bytes.Equal(back, hello) {
				err = fmt.Errorf("the ClientHello came back changed")
			}
		}
		if err == nil {
			got, err = receive(c)
		}
		if err != nil || got != sent {
			t.Errorf("client halfway through a %s at the hand-over: got back %v, %v; want %v", what, got, err, sent)
		}
	}
	if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "client=192.0.2.1:4321") }) {
		t.Errorf("the successor's log has no connection from 192.0.2.1:4321, the client the PROXY header named")
	}
	// The idle connection, and a new client on the same address.
	ms.stillServes(t, addr, "hand-over")

	ms.wait(t)

	// Nothing left in the new process once every stream ended.
	statsLine := regexp.MustCompile(`msg=stats active=(\d+) accepted=\d+ .*pipes=(\d+) idle_pipes=(\d+)`)
	var last []string
	if !eventually(10*time.Second, func() bool {
		before := len(statsLine.FindAllString(p.stderr.String(), -1))
		syscall.Kill(newPID, syscall.SIGUSR1)
		if !eventually(2*time.Second, func() bool { return len(statsLine.FindAllString(p.stderr.String(), -1)) > before }) {
			return false
		}
		all := statsLine.FindAllStringSubmatch(p.stderr.String(), -1)
		last = all[len(all)-1]
		return last[1] == "0" && last[2] == last[3]
	}) {
		t.Errorf("new rsp still holds connections or pipes after every stream ended: %v", last)
	}
	if got := socketFDs(t, newPID); got != baseSockets {
		t.Errorf("new rsp holds %d sockets once every stream ended; the old one held %d before any client", got, baseSockets)
	}
	// One log line per stream, by the process where it ended, with the
	// bytes of both processes and the server it had.
	full := regexp.MustCompile(fmt.Sprintf(`msg=conn .*server=s .*(bytes_in=%d bytes_out=%d|bytes_in=%d bytes_out=%d) `, size+len("echo\n"), size, stallSize+len("stall\n"), stallSize))
	n := 0
	eventually(5*time.Second, func() bool { n = len(full.FindAllString(p.stderr.String(), -1)); return n >= streams }) // the log is batched
	if n != streams {
		t.Errorf("%d connection log lines of whole streams on server s; want one for each of the %d streams", n, streams)
	}
	if n := strings.Count(p.stderr.String(), "cause=handover"); n != 0 {
		t.Errorf("%d connections reset at the hand-over; want none", n)
	}
	syscall.Kill(newPID, syscall.SIGTERM)
	if !eventually(10*time.Second, func() bool { return exited(newPID) }) {
		t.Errorf("new rsp %d did not stop on SIGTERM", newPID)
	}
}

// TestHandoverKeepsWaits: a client handed over while rsp waits for its
// PROXY header or its ClientHello waits no longer in all than the
// frontend allows: the successor takes the wait on where it was, so
// restarts cannot stretch it. The PROXY header's end comes at the connect
// timeout, a reset; the ClientHello's sends the client to the frontend's
// backend (an echo, so the client sees its bytes come back).
func TestHandoverKeepsWaits(t *testing.T) {
	const wait, handAt = 4 * time.Second, 2500 * time.Millisecond
	be := echoBackend(t)
	p := startRsp(t, "-config", writeConfig(t, "", fmt.Sprintf(`
[frontend.hdr]
listen = "127.0.0.1:0"
backend = "b"
accept_proxy_from = "127.0.0.0/8"
connect_timeout = %[2]q
[frontend.tls]
listen = "127.0.0.1:0"
backend = "b"
sni_timeout = %[2]q
[frontend.tls.sni]
"a.example" = "b"
[backend.b]
server.s = { address = %[1]q }
`, be.Addr(), wait.String())))
	start := time.Now()
	inHeader, inHello := dial(t, listeningOn(p, "hdr")), dial(t, listeningOn(p, "tls"))
	defer inHeader.Close()
	defer inHello.Close()
	fmt.Fprintf(inHeader, "PROXY TCP4 192.0.2.1")
	partial := clientHello(t, "a.example")[:7]
	inHello.Write(partial)
	time.Sleep(handAt - time.Since(start))
	handOver(t, p)
	// Ended by the successor within the frontend's wait, not a wait
	// begun anew at the hand-over (which would end past handAt+wait).
	limit := wait + handAt/2
	inHeader.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := inHeader.Read(make([]byte, 1)); !isReset(err) {
		t.Errorf("client with half a PROXY header: read = %v; want a reset", err)
	} else if took := time.Since(start); took < wait-100*time.Millisecond || took > limit {
		t.Errorf("client with half a PROXY header reset %v after it connected; want about %v (the connect timeout), well before %v", took, wait, handAt+wait)
	}
	inHello.SetReadDeadline(time.Now().Add(15 * time.Second))
	back := make([]byte, len(partial))
	if _, err := io.ReadFull(inHello, back); err != nil || !bytes.Equal(back, partial) {
		t.Errorf("client with part of a ClientHello: got back %x, %v; want %x from the frontend's backend", back, err, partial)
	} else if took := time.Since(start); took < wait-100*time.Millisecond || took > limit {
		t.Errorf("client with part of a ClientHello routed %v after it connected; want about %v (sni_timeout), well before %v", took, wait, handAt+wait)
	}
}

// TestHandoverHeaderDropped: a client halfway through its PROXY header
// when the hand-over goes to a file whose frontend no longer reads PROXY
// headers is reset, its header never relayed to the server as data.
func TestHandoverHeaderDropped(t *testing.T) {
	be := echoBackend(t)
	conf := `
[frontend.hdr]
listen = "127.0.0.1:0"
backend = "b"
%s
[backend.b]
server.s = { address = %q }
`
	path := writeConfig(t, "", fmt.Sprintf(conf, `accept_proxy_from = "127.0.0.0/8"`, be.Addr()))
	p := startRsp(t, "-config", path)
	c := dial(t, listeningOn(p, "hdr"))
	defer c.Close()
	fmt.Fprintf(c, "PROXY TCP4 192.0.2.1")
	time.Sleep(200 * time.Millisecond)
	// The same listen line: the successor takes the socket.
	if err := os.WriteFile(path, []byte(fmt.Sprintf(conf, "", be.Addr())), 0o644); err != nil {
		t.Fatal(err)
	}
	handOver(t, p)
	// Relayed as data, the half header would come back from the echo.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); !isReset(err) {
		t.Errorf("client halfway through a PROXY header: got %q, %v; want a reset", b, err)
	}
	if !eventually(5*time.Second, func() bool {
		m := tookRE.FindStringSubmatch(p.stderr.String())
		return m != nil && m[3] == "1"
	}) || !strings.Contains(p.stderr.String(), "no longer reads PROXY headers") {
		t.Errorf("the successor did not count the client lost, saying why:\n%s", p.stderr.String())
	}
}

// handOver sends p SIGUSR2 and waits for its hand-over; it returns the
// successor's pid, stopped at the test's end.
func handOver(t *testing.T, p *proc) int {
	t.Helper()
	p.signal(syscall.SIGUSR2)
	var newPID int
	if !eventually(20*time.Second, func() bool {
		m := handedRE.FindStringSubmatch(p.stderr.String())
		if m != nil {
			newPID, _ = strconv.Atoi(m[1])
		}
		return m != nil
	}) {
		t.Fatalf("no hand-over logged:\n%s", p.stderr.String())
	}
	t.Cleanup(func() {
		if !exited(newPID) {
			syscall.Kill(newPID, syscall.SIGTERM)
		}
	})
	return newPID
}

// carriedSize and carriedStall are the sizes of startCarriedStreams' streams:
// a stalled one sends more than rsp's send buffer towards the server that
// does not read (tcp_wmem, 4 MiB at most by default) and that server's
// window hold, so that rsp's pipes surely hold some of the rest.
const (
	carriedSize  = 4 << 20
	carriedStall = 24 << 20
)

// carriedStreams are the streams a hand-over or a crash must carry.
type carriedStreams struct {
	wg   sync.WaitGroup
	errs chan error
	idle *net.TCPConn // echoed once, then idle
}

// startCarriedStreams starts, through addr to a handoverBackend, n
// hash-checked streams (seeds from seed): a third flow paced whenever
// handed comes, a third send half and wait for it, and the servers of the
// rest wait for it, so that rsp's pipes hold bytes; one half-closed
// stream with bytes still coming back; and an idle connection. It returns
// once all have started.
func startCarriedStreams(t *testing.T, addr string, n int, seed uint64, handed <-chan struct{}) *carriedStreams {
	t.Helper()
	ms := &carriedStreams{errs: make(chan error, n+2)}
	started := make(chan struct{}, n+1)
	for i := range n {
		c := dial(t, addr)
		ms.wg.Add(1)
		go func() {
			defer ms.wg.Done()
			defer c.Close()
			var err error
			switch i % 3 {
			case 0:
				fmt.Fprintf(c, "echo\n")
				started <- struct{}{}
				err = echoPaced(c, seed+uint64(i), carriedSize, 32<<10, 60*time.Millisecond)
			case 1:
				fmt.Fprintf(c, "echo\n")
				started <- struct{}{}
				err = echoGated(c, seed+uint64(i), carriedSize, handed)
			case 2:
				fmt.Fprintf(c, "stall\n")
				started <- struct{}{}
				err = echoPaced(c, seed+uint64(i), carriedStall, carriedStall, 0)
			}
			if err != nil {
				ms.errs <- fmt.Errorf("stream %d (kind %d): %w", i, i%3, err)
			}
		}()
	}
	half := dial(t, addr)
	ms.wg.Add(1)
	go func() {
		defer ms.wg.Done()
		defer half.Close()
		half.SetDeadline(time.Now().Add(2 * time.Minute))
		fmt.Fprintf(half, "stream %d\n", carriedSize)
		half.CloseWrite()
		started <- struct{}{}
		got, err := receive(half)
		if want := expected(carriedSize, carriedSize); err != nil || got != want {
			ms.errs <- fmt.Errorf("half-closed stream: got %v, %v; want %v", got, err, want)
		}
	}()
	ms.idle = dial(t, addr)
	t.Cleanup(func() { ms.idle.Close() })
	fmt.Fprintf(ms.idle, "echo\nbefore\n")
	if l, err := readLine(ms.idle, 5*time.Second); err != nil || l != "before\n" {
		t.Fatalf("idle connection before: %q, %v", l, err)
	}
	for range n + 1 {
		<-started
	}
	return ms
}

// stillServes checks, after the event named when, that the idle
// connection still echoes and that a new client on addr is served.
func (ms *carriedStreams) stillServes(t *testing.T, addr, when string) {
	t.Helper()
	fmt.Fprintf(ms.idle, "after\n")
	if l, err := readLine(ms.idle, 5*time.Second); err != nil || l != "after\n" {
		t.Errorf("idle connection after the %s: %q, %v", when, l, err)
	}
	fresh := dial(t, addr)
	defer fresh.Close()
	fmt.Fprintf(fresh, "echo\n")
	if err := echoPaced(fresh, 7, 1<<20, 1<<20, 0); err != nil {
		t.Errorf("new client after the %s: %v", when, err)
	}
}

// wait waits for every stream, reports what went wrong, and closes the
// idle connection.
func (ms *carriedStreams) wait(t *testing.T) {
	t.Helper()
	ms.wg.Wait()
	close(ms.errs)
	for err := range ms.errs {
		t.Error(err)
	}
	ms.idle.Close()
}

// socketFDs counts the sockets among pid's descriptors.
func socketFDs(t *testing.T, pid int) int {
	t.Helper()
	n := 0
	for _, target := range fdTargets(t, pid) {
		if strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

// fdTargets returns what each of pid's descriptors refers to, as
// /proc/PID/fd shows it ("socket:[INODE]", "anon_inode:[eventpoll]", …).
func fdTargets(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	targets := make(map[int]string, len(ents))
	for _, e := range ents {
		fd, err1 := strconv.Atoi(e.Name())
		target, err2 := os.Readlink(dir + "/" + e.Name())
		if err1 == nil && err2 == nil {
			targets[fd] = target
		}
	}
	return targets
}

// TestHandoverFails: a hand-over that cannot happen leaves rsp serving
// as before. A configuration the new binary refuses stops it before
// anything moves; a successor that dies before it serves gives every
// connection back: streams frozen mid-flight finish byte-exact in the
// old process, which accepts again, and so does a client that was still
// connecting.
func TestHandoverFails(t *testing.T) {
	handed := make(chan struct{})
	var closeHanded sync.Once
	defer closeHanded.Do(func() { close(handed) })
	be := handoverBackend(t, handed)
	path := writeConfig(t, "", fmt.Sprintf(`
[frontend.f]
listen = "127.0.0.1:0"
backend = "b"
[frontend.late]
listen = "127.0.0.1:0"
backend = "late"
connect_timeout = "60s"
[backend.b]
server.s = { address = %q }
[backend.late]
server.l = { address = %q }
`, be.Addr(), lateBackend(t, handed, handoverServe(handed))))
	cmd := exec.Command(rspBin, "-config", path)
	cmd.Env = append(os.Environ(), "RSP_TEST_FAIL_TAKEOVER=1")
	p := launch(t, cmd)
	p.waitStarted()
	p.addr = listeningOn(p, "f")
	// Connecting through both failed hand-overs, to a server that answers
	// once the test is done with them.
	connecting := dial(t, listeningOn(p, "late"))
	defer connecting.Close()
	fmt.Fprintf(connecting, "echo\n")
	connectingDone := make(chan error, 1)
	go func() {
		connectingDone <- echoPaced(connecting, 55, 256<<10, 256<<10, 0)
	}()

	const streams = 10
	const size = 2 << 20
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		c := dial(t, p.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			kind := "echo"
			if i%2 == 1 {
				kind = "stall"
			}
			fmt.Fprintf(c, "%s\n", kind)
			var err error
			if kind == "echo" {
				err = echoGated(c, uint64(i), size, handed)
			} else {
				err = echoPaced(c, uint64(i), size, size, 0)
			}
			if err != nil {
				errs <- fmt.Errorf("stream %d (%s): %w", i, kind, err)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)

	// A file the new binary refuses: nothing is frozen.
	good, _ := os.ReadFile(path)
	os.WriteFile(path, []byte("[frontend.f]\nlisten = 1\n"), 0o644)
	p.signal(syscall.SIGUSR2)
	if !eventually(10*time.Second, func() bool {
		return strings.Count(p.stderr.String(), `msg="hand-over failed; this rsp serves on"`) == 1
	}) {
		t.Fatalf("no refusal logged for a bad file:\n%s", p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "check -config") {
		t.Errorf("the refusal does not say the new binary's check refused the file:\n%s", p.stderr.String())
	}
	os.WriteFile(path, good, 0o644)

	// A successor that fails before it serves.
	p.signal(syscall.SIGUSR2)
	if !eventually(15*time.Second, func() bool {
		return strings.Count(p.stderr.String(), `msg="hand-over failed; this rsp serves on"`) == 2
	}) {
		t.Fatalf("no failure logged for a successor that exits:\n%s", p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "RSP_TEST_FAIL_TAKEOVER") {
		t.Errorf("the successor did not run and fail:\n%s", p.stderr.String())
	}
	closeHanded.Do(func() { close(handed) })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := <-connectingDone; err != nil {
		t.Errorf("client connecting at both failed hand-overs: %v", err)
	}
	// The old process accepts again.
	fresh := dial(t, p.addr)
	fmt.Fprintf(fresh, "echo\n")
	if err := echoPaced(fresh, 99, 1<<20, 1<<20, 0); err != nil {
		t.Errorf("new client after the failed hand-over: %v", err)
	}
	fresh.Close()
	if s := p.stderr.String(); strings.Contains(s, "cause=handover") || strings.Contains(s, `msg="handed over"`) {
		t.Errorf("a connection was reset, or the hand-over claimed success:\n%s", s)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(15 * time.Second); code != 0 {
		t.Errorf("rsp exited %d after SIGTERM", code)
	}
}

// TestHandoverCopyRelay: the copy relay holds bytes in flight in user
// space, where no other process can take them: SIGUSR2 is refused with
// why, and rsp serves on, its connections untouched.
func TestHandoverCopyRelay(t *testing.T) {
	be := echoBackend(t)
	p := startRsp(t, "-listen", "127.0.0.1:0", "-backend", be.Addr().String(), "-relay", "copy")
	live := dial(t, p.addr)
	defer live.Close()
	if err := echoOne(live, "before"); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGUSR2)
	if !eventually(10*time.Second, func() bool {
		return strings.Contains(p.stderr.String(), `msg="hand-over failed; this rsp serves on"`)
	}) || !strings.Contains(p.stderr.String(), "splice relay only") {
		t.Fatalf("no refusal saying why:\n%s", p.stderr.String())
	}
	if err := echoOne(live, "after"); err != nil {
		t.Errorf("connection after the refused hand-over: %v", err)
	}
	fresh := dial(t, p.addr)
	defer fresh.Close()
	if err := echoOne(fresh, "new"); err != nil {
		t.Errorf("new client after the refused hand-over: %v", err)
	}
}

// TestHandoverToCopyRelay: a file switched to relay = "copy" cannot
// resume handed-over connections: the successor refuses before it says
// it serves, and the old rsp serves on with them.
func TestHandoverToCopyRelay(t *testing.T) {
	be := echoBackend(t)
	path := writeConfig(t, "", fmt.Sprintf("[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[backend.b]\nserver.s = { address = %q }\n", be.Addr()))
	p := startRsp(t, "-config", path)
	live := dial(t, p.addr)
	defer live.Close()
	if err := echoOne(live, "before"); err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(path)
	os.WriteFile(path, append([]byte("[global]\nrelay = \"copy\"\n"), text...), 0o644)
	p.signal(syscall.SIGUSR2)
	if !eventually(15*time.Second, func() bool {
		return strings.Contains(p.stderr.String(), `msg="hand-over failed; this rsp serves on"`)
	}) || !strings.Contains(p.stderr.String(), "cannot resume them") {
		t.Fatalf("no refusal saying why:\n%s", p.stderr.String())
	}
	if err := echoOne(live, "after"); err != nil {
		t.Errorf("connection after the refused hand-over: %v", err)
	}
}

// TestHandoverHalfClosedTail: a client that half-closed and reads its
// echo slowly, at the hand-over, still has bytes of it in rsp's pipe
// while the server has finished both ways (its socket hung up). The next
// rsp takes the connection over and delivers the whole tail, then the
// end; before, the hand-over reset it as "ending".
func TestHandoverHalfClosedTail(t *testing.T) {
	be := echoBackend(t)
	p := startRsp(t, "-listen", "127.0.0.1:0", "-backend", be.Addr().String())
	c := dial(t, listeningOn(p, "default"))
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10) })
	const size = 256 << 10
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	time.Sleep(300 * time.Millisecond) // the echo comes back and stalls at the client
	p.signal(syscall.SIGUSR2)
	if !eventually(20*time.Second, func() bool { return handedRE.MatchString(p.stderr.String()) }) {
		t.Fatalf("no hand-over logged:\n%s", p.stderr.String())
	}
	m := handedRE.FindStringSubmatch(p.stderr.String())
	newPID, _ := strconv.Atoi(m[1])
	t.Cleanup(func() {
		if !exited(newPID) {
			syscall.Kill(newPID, syscall.SIGKILL)
		}
	})
	if m[2] != "1" {
		t.Errorf("handed over %s connections; want the half-closed one:\n%s", m[2], p.stderr.String())
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if n != size || err != nil {
		t.Fatalf("the half-closed client got back %d of %d bytes, then %v; want all of them and EOF\n%s", n, size, err, p.stderr.String())
	}
}
