package tests

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// activatedCmd runs rsp with ln (a TCP or Unix listener) passed as fd 3
// under the systemd socket-activation protocol.
func activatedCmd(t testing.TB, ln net.Listener, name string, args ...string) *exec.Cmd {
	t.Helper()
	f, err := ln.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return activatedFile(f, name, args...)
}

// activatedFile runs rsp with the listening socket f passed as fd 3, named
// name in LISTEN_FDNAMES. LISTEN_PID must be rsp's own PID, which is known
// only in the child: a shell sets it and execs rsp.
func activatedFile(f *os.File, name string, args ...string) *exec.Cmd {
	script := `n="$1"; shift; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES="$n" exec "$@"`
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh", name, rspBin}, args...)...)
	cmd.ExtraFiles = []*os.File{f}
	return cmd
}

// listeningInodes returns the socket inodes pid holds that are in LISTEN
// state (from /proc/net/tcp and tcp6).
func listeningInodes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	listening := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 9 && fields[3] == "0A" { // TCP_LISTEN
				listening[fields[9]] = true
			}
		}
	}
	held := map[string]bool{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(target, "socket:["); ok {
			ino = strings.TrimSuffix(ino, "]")
			if listening[ino] {
				held[ino] = true
			}
		}
	}
	return held
}

func inodeOf(t *testing.T, ln net.Listener) string {
	t.Helper()
	sc, _ := ln.(*net.TCPListener).SyscallConn()
	var st syscall.Stat_t
	sc.Control(func(fd uintptr) { syscall.Fstat(int(fd), &st) })
	return strconv.FormatUint(st.Ino, 10)
}

// TestSocketActivation: given a socket on fd 3 with LISTEN_FDS, rsp serves
// it, binds nothing of its own, and ignores -listen.
func TestSocketActivation(t *testing.T) {
	backend := echoBackend(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			ln := listen(t)
			unused := freePort(t)
			cmd := activatedCmd(t, ln, "web", "-backend", backend.Addr().String(), "-relay", mode,
				"-listen", "127.0.0.1:"+strconv.Itoa(unused))
			p := launch(t, cmd)
			p.waitStarted()
			if !strings.Contains(p.stderr.String(), "socket_activated=true") {
				t.Fatalf("rsp did not report socket activation:\n%s", p.stderr.String())
			}
			if err := echoThrough(ln.Addr().String(), 31, 4<<20); err != nil {
				t.Fatalf("through the passed socket: %v", err)
			}
			held := listeningInodes(t, p.pid())
			want := inodeOf(t, ln)
			if len(held) != 1 || !held[want] {
				t.Fatalf("rsp holds listening sockets %v, want only the passed one %s", held, want)
			}
			if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(unused), time.Second); err == nil {
				c.Close()
				t.Fatal("rsp bound -listen although systemd passed a socket")
			}
			// Stopping rsp must not close the socket for systemd: our
			// copy still accepts (the kernel queues) after rsp exits.
			p.signal(syscall.SIGTERM)
			if code := p.wait(10 * time.Second); code != 0 {
				t.Fatalf("exit code %d", code)
			}
			c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
			if err != nil {
				t.Fatalf("the passed socket stopped accepting after rsp exited: %v", err)
			}
			c.Close()
		})
	}
}

// TestSystemdSocketActivate runs rsp under systemd's own
// systemd-socket-activate, which binds the socket and passes it.
func TestSystemdSocketActivate(t *testing.T) {
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed (Debian package systemd)")
	}
	backend := echoBackend(t)
	port := strconv.Itoa(freePort(t))
	p := launch(t, exec.Command(tool, "-l", "127.0.0.1:"+port, "--fdname=web", rspBin, "-backend", backend.Addr().String()))
	// systemd-socket-activate starts rsp on the first connection.
	var c net.Conn
	if !eventually(5*time.Second, func() bool {
		c, err = net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
		return err == nil
	}) {
		t.Fatalf("systemd-socket-activate never listened: %v\n%s", err, p.stderr.String())
	}
	c.Close()
	if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "socket_activated=true") }) {
		t.Fatalf("rsp not socket-activated:\n%s", p.stderr.String())
	}
	if err := echoThrough("127.0.0.1:"+port, 41, 8<<20); err != nil {
		t.Fatal(err)
	}
}

// notifySocket listens on a unixgram socket as systemd would and collects
// what rsp sends.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

// has reports whether a message containing s arrived, and its index.
func (n *notifySocket) has(s string) (int, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, m := range n.msgs {
		if strings.Contains(m, s) {
			return i, true
		}
	}
	return -1, false
}

func (n *notifySocket) count(s string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := 0
	for _, m := range n.msgs {
		if strings.Contains(m, s) {
			k++
		}
	}
	return k
}

// TestNotify: READY=1 once serving, STATUS= with the live connection
// count, WATCHDOG=1 pings, STOPPING=1 on SIGTERM.
func TestNotify(t *testing.T) {
	backend := echoBackend(t)
	ns := newNotifySocket(t)
	ln := listen(t)
	cmd := activatedCmd(t, ln, "web", "-backend", backend.Addr().String())
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path, "WATCHDOG_USEC=400000")
	p := launch(t, cmd)
	p.waitStarted()
	if !eventually(5*time.Second, func() bool { _, ok := ns.has("READY=1"); return ok }) {
		t.Fatalf("no READY=1 (got %q)", ns.msgs)
	}
	c := dial(t, ln.Addr().String())
	defer c.Close()
	if !eventually(5*time.Second, func() bool { _, ok := ns.has("STATUS=1 active connections"); return ok }) {
		t.Fatalf("no STATUS= with 1 active connection (got %q)", ns.msgs)
	}
	if !eventually(5*time.Second, func() bool { return ns.count("WATCHDOG=1") >= 2 }) {
		t.Fatalf("no watchdog pings with WATCHDOG_USEC set (got %q)", ns.msgs)
	}
	c.Close()
	p.signal(syscall.SIGTERM)
	p.wait(10 * time.Second)
	stop, ok := ns.has("STOPPING=1")
	ready, _ := ns.has("READY=1")
	if !ok || stop < ready {
		t.Fatalf("no STOPPING=1 after READY=1 (got %q)", ns.msgs)
	}
}

// TestJournalLogFormat: under journald (JOURNAL_STREAM set) log lines carry
// no timestamp; otherwise they do.
func TestJournalLogFormat(t *testing.T) {
	backend := echoBackend(t)
	for _, journal := range []bool{false, true} {
		cmd := exec.Command(rspBin, "-listen", "127.0.0.1:0", "-backend", backend.Addr().String())
		if journal {
			cmd.Env = append(os.Environ(), "JOURNAL_STREAM=8:12345")
		}
		p := launch(t, cmd)
		p.waitStarted()
		first, _ := bufio.NewReader(strings.NewReader(p.stderr.String())).ReadString('\n')
		if hasTime := strings.HasPrefix(first, "time="); hasTime == journal {
			t.Fatalf("JOURNAL_STREAM set=%v: log line %q", journal, first)
		}
	}
}
