package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// idServer is a backend that greets each connection with its name and a
// newline, then echoes. kill closes its listener and every connection.
type idServer struct {
	name string
	ln   net.Listener
	addr string
	mu   sync.Mutex
	open []net.Conn
}

func newIDServer(t *testing.T, name string) *idServer {
	t.Helper()
	s := &idServer{name: name}
	s.start(t, "127.0.0.1:0")
	t.Cleanup(s.kill)
	return s
}

func (s *idServer) start(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.ln, s.addr = ln, ln.Addr().String()
	serveEach(ln, func(c *net.TCPConn) {
		s.mu.Lock()
		s.open = append(s.open, c)
		s.mu.Unlock()
		defer c.Close()
		fmt.Fprintf(c, "%s\n", s.name)
		if _, err := io.Copy(c, c); err == nil {
			c.CloseWrite()
		}
	})
}

func (s *idServer) kill() {
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.open {
		c.Close()
	}
	s.open = nil
}

// writeConfig writes a configuration file for the test.
func writeConfig(t *testing.T, path, text string) string {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "rsp.conf")
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// servers renders [backend.NAME.server.*] sections.
func servers(backend string, ss []*idServer, extra map[string]string) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "[backend.%s.server.%s]\naddress = %q\n%s\n", backend, s.name, s.addr, extra[s.name])
	}
	return b.String()
}

// which connects through addr and returns the greeting's server name; the
// connection is returned open.
func which(t *testing.T, addr string, local string) (string, net.Conn) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	line, err := readLine(c, 5*time.Second)
	if err != nil {
		c.Close()
		t.Fatalf("no greeting through rsp: %v", err)
	}
	return strings.TrimSpace(line), c
}

// tally makes n connections one after another, each ended in both
// directions before the next, and counts them per server. Waiting for
// the server's end to come back through rsp means rsp has finished the
// connection too, so a loaded machine does not leave earlier
// connections counted as active when the next is placed (which would
// rightly steer random and leastconn away from the server that had it).
func tally(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		name, c := which(t, addr, "")
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("connection to %s did not end cleanly: %v", name, err)
		}
		c.Close()
		got[name]++
	}
	return got
}

func within(got, want, tol int) bool { return got >= want-tol && got <= want+tol }

// TestBalanceAlgorithms: distribution over 3 servers for each algorithm,
// through the built binary, in both relay modes.
func TestBalanceAlgorithms(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			a, b, c := newIDServer(t, "a"), newIDServer(t, "b"), newIDServer(t, "c")
			three := []*idServer{a, b, c}
			start := func(balance string, weights map[string]string) *proc {
				conf := fmt.Sprintf("[global]\nrelay = %q\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\nbalance = %q\n%s",
					mode, balance, servers("app", three, weights))
				return startRsp(t, "-config", writeConfig(t, "", conf))
			}

			// roundrobin, weights 1:2:3 over 60: exactly 10/20/30.
			p := start("roundrobin", map[string]string{"a": "weight = 1", "b": "weight = 2", "c": "weight = 3"})
			got := tally(t, p.addr, 60)
			t.Logf("roundrobin 1:2:3 over 60: %v", got)
			if got["a"] != 10 || got["b"] != 20 || got["c"] != 30 {
				t.Errorf("roundrobin 1:2:3 over 60 gave %v, want a:10 b:20 c:30", got)
			}
			p.signal(syscall.SIGTERM)
			p.wait(5 * time.Second)

			// leastconn: held connections spread by weight 2:1:1 (4/2/2 of
			// 8); sequential short ones spread evenly (±6 of 20 each).
			p = start("leastconn", map[string]string{"a": "weight = 2"})
			held := map[string]int{}
			var conns []net.Conn
			for range 8 {
				name, c := which(t, p.addr, "")
				held[name]++
				conns = append(conns, c)
			}
			t.Logf("leastconn 2:1:1 holding 8: %v", held)
			if held["a"] != 4 || held["b"] != 2 || held["c"] != 2 {
				t.Errorf("leastconn 2:1:1 holding 8 gave %v, want a:4 b:2 c:2", held)
			}
			closeAll(conns)
			p.signal(syscall.SIGTERM)
			p.wait(5 * time.Second)

			// random (two choices) with weights 1:1:2 over 400: shares
			// within 0.1 of 0.25/0.25/0.5, at least 4 standard deviations
			// of a binomial draw (over 200 with ±20, c's 3, and c = 79
			// came up in CI); an unweighted pick (133 each) still fails.
			p = start("random", map[string]string{"c": "weight = 2"})
			got = tally(t, p.addr, 400)
			t.Logf("random 1:1:2 over 400: %v", got)
			if !within(got["a"], 100, 40) || !within(got["b"], 100, 40) || !within(got["c"], 200, 40) {
				t.Errorf("random 1:1:2 over 400 gave %v, want about 100/100/200 (±40)", got)
			}
			p.signal(syscall.SIGTERM)
			p.wait(5 * time.Second)
		})
	}
}

// TestSourceHash: a client address keeps its server; removing a server by
// reload moves only the clients it had.
func TestSourceHash(t *testing.T) {
	a, b, c := newIDServer(t, "a"), newIDServer(t, "b"), newIDServer(t, "c")
	head := "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\nbalance = \"source\"\n"
	path := writeConfig(t, "", head+servers("app", []*idServer{a, b, c}, nil))
	p := startRsp(t, "-config", path)
	const clients = 90
	first := map[string]string{}
	count := map[string]int{}
	for i := range clients {
		ip := fmt.Sprintf("127.3.%d.%d", i/200, 1+i%200)
		name, conn := which(t, p.addr, ip)
		conn.Close()
		again, conn := which(t, p.addr, ip)
		conn.Close()
		if again != name {
			t.Fatalf("client %s went to %s, then to %s", ip, name, again)
		}
		first[ip] = name
		count[name]++
	}
	t.Logf("source over %d clients: %v", clients, count)
	for _, s := range []string{"a", "b", "c"} {
		if !within(count[s], clients/3, clients/5) {
			t.Errorf("server %s has %d of %d clients, want about a third", s, count[s], clients)
		}
	}
	writeConfig(t, path, head+servers("app", []*idServer{a, b}, nil))
	p.signal(syscall.SIGHUP)
	if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "configuration reloaded") }) {
		t.Fatal("reload not logged")
	}
	moved := 0
	for ip, was := range first {
		name, conn := which(t, p.addr, ip)
		conn.Close()
		if name != was {
			moved++
			if was != "c" {
				t.Errorf("client %s moved from %s to %s although only c was removed", ip, was, name)
			}
		}
	}
	t.Logf("removing c moved %d clients (c had %d)", moved, count["c"])
	if moved != count["c"] {
		t.Errorf("%d clients moved, want exactly c's %d", moved, count["c"])
	}
}

// TestHealthChecks: a killed server is marked down within fall × interval
// and no client fails after that; back up, it rejoins after rise checks.
func TestHealthChecks(t *testing.T) {
	a, b := newIDServer(t, "a"), newIDServer(t, "b")
	conf := "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\nretries = 0\neject_after = 0\n" +
		"[backend.app.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n" + servers("app", []*idServer{a, b}, nil)
	p := startRsp(t, "-config", writeConfig(t, "", conf))
	if got := tally(t, p.addr, 10); got["a"] != 5 || got["b"] != 5 {
		t.Fatalf("both up: %v", got)
	}
	b.kill()
	killed := time.Now()
	if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), `msg="server down" server=app/b`) }) {
		t.Fatal("killed server not marked down")
	}
	// fall × interval = 200ms, plus a check's timeout and scheduling.
	if d := time.Since(killed); d > 1500*time.Millisecond {
		t.Errorf("marked down after %v, want within about 2 × 100ms", d)
	}
	if got := tally(t, p.addr, 20); got["a"] != 20 {
		t.Errorf("with b down: %v, want all 20 on a and no failure", got)
	}
	b.start(t, b.addr)
	if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), `msg="server up" server=app/b`) }) {
		t.Fatal("restarted server not marked up")
	}
	if got := tally(t, p.addr, 10); got["b"] != 5 {
		t.Errorf("b back: %v, want 5 of 10 on b", got)
	}
	if n := strings.Count(p.stderr.String(), `msg="server down" server=app/b`); n != 1 {
		t.Errorf("server down logged %d times, want once", n)
	}
}

// TestRetryAndAllDown: a dead server is hidden by a retry on another; with
// every server dead the client is closed at once, with the reason logged.
func TestRetryAndAllDown(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			a := newIDServer(t, "a")
			dead := closedPort(t)
			conf := fmt.Sprintf("[global]\nrelay = %q\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\nretries = 1\neject_after = 0\n"+
				"[backend.app.server.dead]\naddress = %q\n", mode, dead) + servers("app", []*idServer{a}, nil)
			p := startRsp(t, "-config", writeConfig(t, "", conf))
			if got := tally(t, p.addr, 20); got["a"] != 20 {
				t.Fatalf("got %v, want all 20 connections served by a", got)
			}
			a.kill()
			start := time.Now()
			if c := dialOrReset(t, p.addr); c != nil {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := c.Read(make([]byte, 1))
				if err != io.EOF && !isReset(err) {
					t.Fatalf("all servers dead: read = %v, want the client closed", err)
				}
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("client closed after %v, want at once", d)
			}
			if !eventually(2*time.Second, func() bool {
				return strings.Contains(p.stderr.String(), "cause=connect_failed") &&
					strings.Contains(p.stderr.String(), "tries=2")
			}) {
				t.Errorf("failure after the retry not logged")
			}
		})
	}
}

// TestMaxConn: at the global maxconn the next client waits in the
// backlog, and proceeds when a connection closes; a full server is
// skipped for the next one.
func TestMaxConn(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			a, b := newIDServer(t, "a"), newIDServer(t, "b")
			conf := fmt.Sprintf("[global]\nrelay = %q\nmaxconn = 3\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\n", mode) +
				servers("app", []*idServer{a, b}, map[string]string{"a": "maxconn = 1"})
			p := startRsp(t, "-config", writeConfig(t, "", conf))
			held := map[string]int{}
			var conns []net.Conn
			for range 3 {
				name, c := which(t, p.addr, "")
				held[name]++
				conns = append(conns, c)
			}
			if held["a"] != 1 || held["b"] != 2 {
				t.Errorf("with a's maxconn 1, 3 connections went %v, want a:1 b:2", held)
			}
			// The 4th is accepted by the kernel but not by rsp.
			c := dial(t, p.addr)
			defer c.Close()
			if line, err := readLine(c, 500*time.Millisecond); err == nil {
				t.Fatalf("4th client served (%q) with maxconn 3 connections live", line)
			}
			conns[0].Close()
			line, err := readLine(c, 5*time.Second)
			if err != nil {
				t.Fatalf("4th client not served after a connection closed: %v", err)
			}
			t.Logf("4th client served by %s after one closed", strings.TrimSpace(line))
			closeAll(conns[1:])
		})
	}
}

// TestHalfCloseTimeout: a connection whose client sent FIN and whose
// backend never answers is closed after half_close_timeout.
func TestHalfCloseTimeout(t *testing.T) {
	silent := listen(t)
	serveEach(silent, func(c *net.TCPConn) {
		defer c.Close()
		io.Copy(io.Discard, c) // reads to EOF, never answers, never closes
		time.Sleep(10 * time.Second)
	})
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, mode, silent.Addr(), "-half-close-timeout", "300ms", "-idle-timeout", "1m")
			c := dial(t, p.addr)
			defer c.Close()
			c.Write([]byte("request"))
			c.CloseWrite()
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := c.Read(make([]byte, 1))
			if err != io.EOF && !isReset(err) {
				t.Fatalf("read = %v, want the connection closed by the half-close timeout", err)
			}
			if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
				t.Errorf("closed after %v, want about 300ms", d)
			}
			if !eventually(2*time.Second, func() bool { return strings.Contains(p.stderr.String(), "half-close timeout") }) {
				t.Error("half-close timeout not logged")
			}
		})
	}
}

var listeningRE = regexp.MustCompile(`msg=listening frontend=(\S+) listen=(\S+)`)

// listeningOn returns the address rsp last logged for frontend name, or "".
func listeningOn(p *proc, name string) string {
	addr := ""
	for _, m := range listeningRE.FindAllStringSubmatch(p.stderr.String(), -1) {
		if m[1] == name {
			addr = m[2]
		}
	}
	return addr
}

// TestReloadUnderLoad: while a client streams through an old connection,
// reloads change the backend, add a frontend and remove it; the stream
// loses no byte, new connections follow the new config, a broken config
// is refused and the old one keeps serving; systemd hears RELOADING=1
// then READY=1.
func TestReloadUnderLoad(t *testing.T) {
	echo := echoBackend(t)
	a, b := newIDServer(t, "a"), newIDServer(t, "b")
	ns := newNotifySocket(t)
	confFor := func(backend string, extra string) string {
		return "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"" + backend + "\"\n" + extra +
			fmt.Sprintf("[backend.echo.server.e]\naddress = %q\n", echo.Addr().String()) +
			servers("ida", []*idServer{a}, nil) + servers("idb", []*idServer{b}, nil)
	}
	path := writeConfig(t, "", confFor("echo", ""))
	cmd := exec.Command(rspBin, "-config", path)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	p := launch(t, cmd)
	p.waitStarted()

	// A 256 MiB echo stream through the first configuration.
	// Connected (and relayed to echo: a first byte came back) before any
	// reload.
	sc := dial(t, p.addr)
	defer sc.Close()
	sc.Write([]byte{0})
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(sc, make([]byte, 1)); err != nil {
		t.Fatalf("stream connection: %v", err)
	}
	sc.SetReadDeadline(time.Time{})
	streamDone := make(chan error, 1)
	go func() { streamDone <- echoThroughSlow(sc, 42, 256<<20) }()

	reloads := 0
	reload := func(text string) {
		t.Helper()
		writeConfig(t, path, text)
		before := strings.Count(p.stderr.String(), "configuration reloaded") + strings.Count(p.stderr.String(), "reload refused")
		p.signal(syscall.SIGHUP)
		reloads++
		if !eventually(5*time.Second, func() bool {
			return strings.Count(p.stderr.String(), "configuration reloaded")+strings.Count(p.stderr.String(), "reload refused") > before
		}) {
			t.Fatalf("reload %d not logged", reloads)
		}
	}

	reload(confFor("ida", ""))
	if name, c := which(t, p.addr, ""); name != "a" {
		t.Errorf("after reload to ida, new connection went to %q", name)
	} else {
		c.Close()
	}
	reload(confFor("idb", "[frontend.g]\nlisten = \"127.0.0.2:0\"\nbackend = \"ida\"\n"))
	if name, c := which(t, p.addr, ""); name != "b" {
		t.Errorf("after reload to idb, new connection went to %q", name)
	} else {
		c.Close()
	}
	gAddr := listeningOn(p, "g")
	if gAddr == "" {
		t.Fatalf("added frontend g not listening:\n%s", p.stderr.String())
	}
	if name, c := which(t, gAddr, ""); name != "a" {
		t.Errorf("new frontend g served by %q, want a", name)
	} else {
		c.Close()
	}
	reload("[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"nope\"\n")
	if !strings.Contains(p.stderr.String(), "reload refused") || !strings.Contains(p.stderr.String(), `no backend named \"nope\"`) {
		t.Errorf("broken config not refused with its error:\n%s", p.stderr.String())
	}
	if name, c := which(t, gAddr, ""); name != "a" {
		t.Errorf("after a refused reload frontend g served by %q, want a", name)
	} else {
		c.Close()
	}
	select {
	case err := <-streamDone:
		t.Fatalf("stream ended (%v) before the reloads were done: the test proves nothing", err)
	default:
	}
	reload(confFor("idb", ""))
	if c, err := net.DialTimeout("tcp", gAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("removed frontend g still accepts on %s", gAddr)
	}
	if err := <-streamDone; err != nil {
		t.Fatalf("stream across %d reloads: %v", reloads, err)
	}
	t.Logf("256 MiB stream intact across %d reloads", reloads)
	if i, ok := ns.has("RELOADING=1"); !ok || ns.count("READY=1") < 2 {
		t.Errorf("notify: RELOADING=1 at %d, READY=1 %d times (%q)", i, ns.count("READY=1"), ns.msgs)
	}
}

// echoThroughSlow is echoThrough paced to last a second or more, so that
// reloads happen while its bytes flow.
func echoThroughSlow(c *net.TCPConn, seed uint64, n int64) error {
	return echoPaced(c, seed, n, 4<<20, 20*time.Millisecond)
}

// echoPaced sends n bytes from seed through c, pausing for pause after
// every per bytes, half-closes, and checks that the same bytes come back.
func echoPaced(c *net.TCPConn, seed uint64, n int64, per int, pause time.Duration) error {
	return echoVia(c, c, &pacer{w: c, per: per, pause: pause}, seed, n)
}

// echoVia sends n bytes from seed through w, a writer to c, half-closes
// c, and checks that the same bytes come back through r, a reader of c.
func echoVia(c *net.TCPConn, r io.Reader, w io.Writer, seed uint64, n int64) error {
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	got := make(chan error, 1)
	var back digest
	go func() {
		var err error
		back, err = receive(bufio.NewReader(r))
		got <- err
	}()
	sent, err := send(w, seed, n)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	c.CloseWrite()
	if err := <-got; err != nil {
		return fmt.Errorf("receive after %d bytes: %w", back.n, err)
	}
	if back != sent {
		return fmt.Errorf("echo differs: sent %v, got back %v", sent, back)
	}
	return nil
}

// pacer pauses after every per bytes written.
type pacer struct {
	w     io.Writer
	per   int
	pause time.Duration
	n     int
}

func (p *pacer) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.n += n
	if p.n >= p.per {
		p.n = 0
		time.Sleep(p.pause)
	}
	return n, err
}

// TestConfigErrorsCLI: 'rsp check' and 'rsp -config' on good and broken
// files, and the flags -config excludes.
func TestConfigErrorsCLI(t *testing.T) {
	out, err := exec.Command(rspBin, "check", "-config", "../packaging/rsp.conf").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration OK: 1 frontends, 1 backends, 2 servers") {
		t.Fatalf("check of the example config: %v\n%s", err, out)
	}
	bad := writeConfig(t, "", "[frontend.f]\nlisten = \":1\"\nbackend = \"app\"\nidle_timout = \"1s\"\n[backend.app]\nserver.s = { address = \"nohost\" }\n")
	cmd := exec.Command(rspBin, "check", "-config", bad)
	out, _ = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("check of a broken config exited %d, want 1", cmd.ProcessState.ExitCode())
	}
	for _, w := range []string{bad + `:4: unknown key "idle_timout" in [frontend.f]; did you mean "idle_timeout"?`,
		bad + `:6: server app/s: address "nohost"`} {
		if !strings.Contains(string(out), w) {
			t.Errorf("check output lacks %q:\n%s", w, out)
		}
	}
	code, stderr := runRsp(t, exec.Command(rspBin, "-config", bad))
	if code != 2 || !strings.Contains(stderr, "rsp: "+bad+":4:") {
		t.Errorf("rsp -config broken: exit %d\n%s", code, stderr)
	}
	code, stderr = runRsp(t, exec.Command(rspBin, "-config", bad, "-listen", ":1"))
	checkOneLine(t, code, stderr, []string{"-listen cannot be combined with -config"})
	code, stderr = runRsp(t, exec.Command(rspBin, "-config", filepath.Join(t.TempDir(), "missing.conf")))
	if code != 2 || !strings.Contains(stderr, "missing.conf: no such file") {
		t.Errorf("missing config: exit %d\n%s", code, stderr)
	}
	sock := writeConfig(t, "", "[frontend.f]\nsocket = \"web\"\nbackend = \"app\"\n[backend.app]\nserver.s = { address = \"127.0.0.1:1\" }\n")
	code, stderr = runRsp(t, exec.Command(rspBin, "-config", sock))
	checkOneLine(t, code, stderr, []string{sock + ":1: frontend f: socket \"web\" was not passed by systemd"})
}

// TestNamedSockets: sockets passed by systemd map onto frontends by
// FileDescriptorName=; a name no socket has is refused with file:line.
func TestNamedSockets(t *testing.T) {
	a, b := newIDServer(t, "a"), newIDServer(t, "b")
	lnA, lnB := listen(t), listen(t)
	conf := "[frontend.fa]\nsocket = \"web\"\nbackend = \"ida\"\n[frontend.fb]\nsocket = \"admin\"\nbackend = \"idb\"\n" +
		servers("ida", []*idServer{a}, nil) + servers("idb", []*idServer{b}, nil)
	path := writeConfig(t, "", conf)
	p := launch(t, activatedPair(t, lnA, lnB, "web:admin", "-config", path))
	p.waitStarted()
	for _, tc := range []struct {
		ln   net.Listener
		want string
	}{{lnA, "a"}, {lnB, "b"}} {
		if name, c := which(t, tc.ln.Addr().String(), ""); name != tc.want {
			t.Errorf("socket %s served by %q, want %q", tc.ln.Addr(), name, tc.want)
		} else {
			c.Close()
		}
	}
	bad := writeConfig(t, "", strings.Replace(conf, `"admin"`, `"adm"`, 1))
	code, stderr := runRsp(t, activatedPair(t, lnA, lnB, "web:admin", "-config", bad))
	if code != 2 || !strings.Contains(stderr, bad+`:4: frontend fb: systemd passed no socket named "adm" (passed: web, admin)`) {
		t.Errorf("unknown socket name: exit %d\n%s", code, stderr)
	}
	// One socket taken by two frontends (any socket, and by name) would
	// be served twice, its connections routed to one of them at random.
	twice := writeConfig(t, "", strings.Replace(conf, `socket = "admin"`, `socket = "*"`, 1))
	code, stderr = runRsp(t, activatedPair(t, lnA, lnB, "web:admin", "-config", twice))
	if code != 2 || !strings.Contains(stderr, `frontends fa and fb both take the systemd socket "web"`) {
		t.Errorf("a socket taken by two frontends: exit %d\n%s", code, stderr)
	}
}

// activatedPair runs rsp with two listeners passed as fds 3 and 4.
func activatedPair(t *testing.T, l1, l2 net.Listener, names string, args ...string) *exec.Cmd {
	t.Helper()
	var files []*os.File
	for _, ln := range []net.Listener{l1, l2} {
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	script := `n="$1"; shift; LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES="$n" exec "$@"`
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh", names, rspBin}, args...)...)
	cmd.ExtraFiles = files
	return cmd
}

// closedPort returns a loopback address where nothing listens: connects
// are refused.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
