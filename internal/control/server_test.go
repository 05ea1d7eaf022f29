package control

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// echo answers with its arguments joined by "|", and fails on "fail".
var echo = HandlerFunc(func(peer Peer, args []string, out io.Writer) error {
	if args[0] == "fail" {
		fmt.Fprint(out, "partial output")
		return errors.New("it broke\nbadly")
	}
	if args[0] == "peer" {
		fmt.Fprintf(out, "%d %d\n", peer.UID, peer.PID)
		return nil
	}
	fmt.Fprintln(out, strings.Join(args, "|"))
	return nil
})

func serve(t *testing.T, h Handler) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rsp.ctl")
	s, err := Listen(path, h, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// TestRoundTrip: a request's arguments arrive whole (spaces included),
// output comes back line by line, an error comes back as its reason on
// one line, and output lines that look like a status are only output.
func TestRoundTrip(t *testing.T) {
	_, path := serve(t, echo)
	var out bytes.Buffer
	if err := Do(path, []string{"drain", "web/a b", "-kill"}, &out); err != nil || out.String() != "drain|web/a b|-kill\n" {
		t.Errorf("echo: %q, %v", out.String(), err)
	}
	out.Reset()
	if err := Do(path, []string{"OK\x00ERR x"}, &out); err != nil || out.String() != "OK\x00ERR x\n" {
		t.Errorf("status-like output: %q, %v", out.String(), err)
	}
	out.Reset()
	err := Do(path, []string{"fail"}, &out)
	if err == nil || err.Error() != "it broke; badly" || out.String() != "partial output\n" {
		t.Errorf("fail: %q, %v", out.String(), err)
	}
	out.Reset()
	if err := Do(path, []string{"peer"}, &out); err != nil || out.String() != fmt.Sprintf("%d %d\n", os.Geteuid(), os.Getpid()) {
		t.Errorf("peer credentials: %q, %v", out.String(), err)
	}
	if err := Do(path, []string{"a\tb"}, &out); err == nil || !strings.Contains(err.Error(), "holds a tab") {
		t.Errorf("tab in an argument: %v", err)
	}
}

// TestSocketMode: the socket is 0600 whatever the umask.
func TestSocketMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	_, path := serve(t, echo)
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
}

// TestRawProtocol: the protocol as a person would type it.
func TestRawProtocol(t *testing.T) {
	_, path := serve(t, echo)
	for req, want := range map[string]string{
		"weight\tweb/a\t5\n":             "weight|web/a|5\nOK\n",
		"servers":                        "servers\nOK\n", // EOF ends a request too
		"servers\r\n":                    "servers\nOK\n",
		"\n":                             "ERR empty request: send a command, e.g. help\n",
		strings.Repeat("x", 5000) + "\n": "ERR request longer than 4096 bytes\n",
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, req)
		c.(*net.UnixConn).CloseWrite()
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != want {
			t.Errorf("request %.20q: %q, want %q", req, got, want)
		}
	}
}

// TestCloseRemovesSocket: Close removes the socket and ends a connection
// that sent nothing at once, not at its deadline; a client then says
// the socket is not there.
func TestCloseRemovesSocket(t *testing.T) {
	s, path := serve(t, echo)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(20 * time.Millisecond) // accepted
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v with an idle connection", d)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
	err = Do(path, []string{"servers"}, io.Discard)
	if want := fmt.Sprintf("control socket %s does not exist: is rsp running, with control = %q in [global]?", path, path); err == nil || err.Error() != want {
		t.Errorf("after Close: %v\nwant %s", err, want)
	}
}

// TestStaleSocket: a socket file nobody answers on is replaced; a live
// one, or a file that is not a socket, is left alone with an error; a
// server closing does not remove a socket another made since.
func TestStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rsp.ctl")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // as if rsp died: the file stays
	if err := Do(path, []string{"servers"}, io.Discard); err == nil || !strings.Contains(err.Error(), "nothing answers on control socket") {
		t.Errorf("stale socket, client: %v", err)
	}
	s, err := Listen(path, echo, quiet())
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer s.Close()
	if err := Do(path, []string{"x"}, io.Discard); err != nil {
		t.Errorf("after replacing a stale socket: %v", err)
	}
	if _, err := Listen(path, echo, quiet()); err == nil || !strings.Contains(err.Error(), "is in use: is another rsp running") {
		t.Errorf("second Listen on a live socket: %v", err)
	}
	if err := Do(path, []string{"x"}, io.Discard); err != nil {
		t.Errorf("the live socket was disturbed: %v", err)
	}

	// Another server takes the path over; the first one's Close leaves it.
	os.Remove(path)
	s2, err := Listen(path, echo, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	s.Close()
	if err := Do(path, []string{"x"}, io.Discard); err != nil {
		t.Errorf("closing the old server removed the new one's socket: %v", err)
	}

	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("keep"), 0o644)
	if _, err := Listen(file, echo, quiet()); err == nil || !strings.Contains(err.Error(), "not a socket is in the way") {
		t.Errorf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("a regular file was replaced")
	}
}

func TestDialErrors(t *testing.T) {
	const path = "/run/rsp/rsp.ctl"
	op := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "unix", Err: &os.SyscallError{Syscall: "connect", Err: errno}}
	}
	for errno, want := range map[syscall.Errno]string{
		syscall.ENOENT:       `control socket /run/rsp/rsp.ctl does not exist: is rsp running, with control = "/run/rsp/rsp.ctl" in [global]?`,
		syscall.EACCES:       "permission denied on /run/rsp/rsp.ctl: run as root or as the rsp service user",
		syscall.ECONNREFUSED: "nothing answers on control socket /run/rsp/rsp.ctl: rsp is not running (the socket is left from one that stopped)",
	} {
		if got := dialError(path, op(errno)).Error(); got != want {
			t.Errorf("%v: %s\nwant %s", errno, got, want)
		}
	}
}

func TestAllowed(t *testing.T) {
	for _, c := range []struct {
		uid  uint32
		euid int
		want bool
	}{{0, 999, true}, {999, 999, true}, {1000, 999, false}, {65534, 0, false}, {0, 0, true}} {
		if got := allowed(c.uid, c.euid); got != c.want {
			t.Errorf("allowed(%d, %d) = %v", c.uid, c.euid, got)
		}
	}
}

// childEnv names the sockets TestPeerChild tries, when the test binary
// runs as a child of TestPeerRefused.
const childEnv = "RSP_CONTROL_TEST_CHILD"

// TestPeerChild is the other user's side of TestPeerRefused; run
// directly, it does nothing.
func TestPeerChild(t *testing.T) {
	paths := os.Getenv(childEnv)
	if paths == "" {
		t.Skip("runs as a child of TestPeerRefused")
	}
	for _, p := range strings.Split(paths, ",") {
		fmt.Printf("CHILD %s: %v\n", filepath.Base(p), Do(p, []string{"servers"}, io.Discard))
	}
}

// TestPeerRefused: a peer that is neither root nor the server's user is
// refused: by the socket's mode, and, where the mode was opened up, by
// its credentials, without the handler running. As root, the test binary
// runs again as nobody (uid 65534); otherwise the server is told its
// user is another.
func TestPeerRefused(t *testing.T) {
	var ran atomic.Int32
	h := HandlerFunc(func(Peer, []string, io.Writer) error { ran.Add(1); return nil })
	if os.Geteuid() != 0 {
		path := filepath.Join(t.TempDir(), "rsp.ctl")
		s, err := listen(path, h, quiet(), os.Geteuid()+1)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		err = Do(path, []string{"servers"}, io.Discard)
		if want := fmt.Sprintf("permission denied: uid %d may not control rsp (only root and uid %d)", os.Geteuid(), os.Geteuid()+1); err == nil || err.Error() != want {
			t.Errorf("other uid: %v\nwant %s", err, want)
		}
		if ran.Load() != 0 {
			t.Error("the handler ran for a refused peer")
		}
		return
	}

	// Everything nobody touches must be reachable by nobody.
	dir, err := os.MkdirTemp("", "rspctl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "control.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	closed := filepath.Join(dir, "closed.ctl") // 0600: the kernel refuses
	opened := filepath.Join(dir, "opened.ctl") // 0666: the credentials refuse
	for _, p := range []string{closed, opened} {
		s, err := Listen(p, h, quiet())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	if err := os.Chmod(opened, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestPeerChild$", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), childEnv+"="+closed+","+opened)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "CHILD") {
		t.Skipf("cannot run a child as uid 65534: %v\n%s", err, out)
	}
	for _, want := range []string{
		"CHILD closed.ctl: permission denied on " + closed + ": run as root or as the rsp service user",
		"CHILD opened.ctl: permission denied: uid 65534 may not control rsp (only root and uid 0)",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
	if ran.Load() != 0 {
		t.Error("the handler ran for a refused peer")
	}
}
