package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ctl runs 'rsp ctl -socket sock args...' and returns its exit code,
// stdout and stderr.
func ctl(t *testing.T, sock string, cred *syscall.Credential, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(rspBin, append([]string{"ctl", "-socket", sock}, args...)...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("rsp ctl %v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// mustCtl runs rsp ctl and requires exit 0.
func mustCtl(t *testing.T, sock string, args ...string) string {
	t.Helper()
	code, out, errs := ctl(t, sock, nil, args...)
	if code != 0 {
		t.Fatalf("rsp ctl %v: exit %d: %s%s", args, code, out, errs)
	}
	return out
}

// serverLine returns the 'rsp ctl servers' line of name.
func serverLine(t *testing.T, sock, name string) []string {
	t.Helper()
	for _, line := range strings.Split(mustCtl(t, sock, "servers"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return f
		}
	}
	t.Fatalf("rsp ctl servers has no %s", name)
	return nil
}

// TestCtl: rsp ctl drain, maint [-kill], ready and weight change where new
// connections go, at once and without a reload; conns lists the live
// ones; each change is logged; mistakes exit 1 with one line. Both
// relays.
func TestCtl(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) { testCtl(t, mode) })
	}
}

func testCtl(t *testing.T, mode string) {
	a, b := newIDServer(t, "a"), newIDServer(t, "b")
	sock := filepath.Join(t.TempDir(), "rsp.ctl")
	cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
control = %q
conn_log = "all"
[frontend.web]
listen = "127.0.0.1:0"
backend = "app"
[backend.app]
balance = "roundrobin"
%s`, mode, sock, servers("app", []*idServer{a, b}, nil)))
	p := startRsp(t, "-config", cfg)
	if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v, mode %v; want a socket, 0600", err, fi.Mode())
	}
	if got := tally(t, p.addr, 10); got["a"] != 5 || got["b"] != 5 {
		t.Fatalf("before any change: %v, want 5 and 5", got)
	}

	// drain: no new connections, the live one carries on.
	name, live := which(t, p.addr, "")
	if name != "a" && name != "b" {
		t.Fatalf("greeting %q", name)
	}
	other := map[string]string{"a": "b", "b": "a"}[name]
	mustCtl(t, sock, "drain", "app/"+name)
	if f := serverLine(t, sock, "app/"+name); f[2] != "draining" || f[4] != "1" {
		t.Errorf("servers after drain: %v, want draining with 1 active", f)
	}
	if got := tally(t, p.addr, 6); got[other] != 6 {
		t.Errorf("new connections with %s drained: %v, want all on %s", name, got, other)
	}
	live.Write([]byte("still"))
	readFull(t, live, 5)
	conns := mustCtl(t, sock, "conns")
	if !strings.Contains(conns, live.LocalAddr().String()) || !strings.Contains(conns, "app/"+name) {
		t.Errorf("conns does not list the live connection %s to app/%s:\n%s", live.LocalAddr(), name, conns)
	}

	// maint -kill: out of rotation and its live connection reset.
	out := mustCtl(t, sock, "maint", "app/"+name, "-kill")
	if !strings.Contains(out, "reset 1 connection") {
		t.Errorf("maint -kill said %q, want 1 connection reset", out)
	}
	live.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := live.Read(make([]byte, 1)); !isReset(err) {
		t.Errorf("connection to a server put in maintenance with -kill: read = %v, want a reset", err)
	}
	live.Close()
	if l := connLineFrom(t, p, live.LocalAddr().String()); l["cause"] != "killed" {
		t.Errorf("killed connection logged with cause %q", l["cause"])
	}
	if f := serverLine(t, sock, "app/"+name); f[2] != "maintenance" {
		t.Errorf("servers after maint: %v", f)
	}
	if got := tally(t, p.addr, 4); got[other] != 4 {
		t.Errorf("new connections with %s in maintenance: %v", name, got)
	}

	// ready, then weights 3:1.
	mustCtl(t, sock, "ready", "app/"+name)
	mustCtl(t, sock, "weight", "app/a", "3")
	if f := serverLine(t, sock, "app/a"); f[2] != "up" || f[3] != "3" {
		t.Errorf("servers after ready and weight 3: %v", f)
	}
	if got := tally(t, p.addr, 8); got["a"] != 6 || got["b"] != 2 {
		t.Errorf("weights 3:1 over 8 connections: %v, want a 6, b 2", got)
	}

	for _, c := range []struct {
		args []string
		code int // 1: refused by rsp; 2: a usage error, with a usage line
		want string
	}{
		{[]string{"drain", "app/zz"}, 1, "unknown server app/zz"},
		{[]string{"drain", "nope/a"}, 1, "nope"},
		{[]string{"weight", "app/a", "999"}, 2, "from 0 to 256"},
		{[]string{"frobnicate"}, 2, "frobnicate"},
	} {
		code, stdout, stderr := ctl(t, sock, nil, c.args...)
		first, _, _ := strings.Cut(stderr, "\n")
		if code != c.code || !strings.Contains(first, c.want) || !strings.HasPrefix(stderr, "rsp ctl: ") ||
			c.code == 1 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("rsp ctl %v: exit %d, stdout %q, stderr %q; want %d and a line naming %q", c.args, code, stdout, stderr, c.code, c.want)
		}
	}
	if code, _, stderr := ctl(t, filepath.Join(t.TempDir(), "none.ctl"), nil, "servers"); code != 1 || !strings.Contains(stderr, "does not exist") {
		t.Errorf("missing socket: exit %d, %q", code, stderr)
	}
	if !strings.Contains(p.stderr.String(), `msg="server state changed by rsp ctl" server=app/`+name+` setting=admin from=ready to=drain`) {
		t.Errorf("the drain was not logged")
	}
}

// TestCtlRefusesOtherUsers: the control socket is 0600, and even opened
// to everyone rsp refuses a peer that is neither root nor its own user.
func TestCtlRefusesOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run rsp ctl as another user")
	}
	a := newIDServer(t, "a")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "rsp.ctl")
	cfg := writeConfig(t, "", fmt.Sprintf("[global]\ncontrol = %q\n[frontend.web]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n%s", sock, servers("app", []*idServer{a}, nil)))
	startRsp(t, "-config", cfg)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	code, _, stderr := ctl(t, sock, nobody, "servers")
	if code != 1 || !strings.Contains(stderr, "permission denied") {
		t.Errorf("another user on the 0600 socket: exit %d, %q; want 1, permission denied", code, stderr)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := ctl(t, sock, nobody, "drain", "app/a")
	if code != 1 || !strings.Contains(stderr, "permission denied") || stdout != "" {
		t.Errorf("another user on a socket opened to all: exit %d, stdout %q, stderr %q; want 1, permission denied", code, stdout, stderr)
	}
	if f := serverLine(t, sock, "app/a"); f[2] != "up" {
		t.Errorf("a refused user changed the server: %v", f)
	}
}
