package tests

// Configuration and command-line contracts (issue 15): reloads are
// all-or-nothing and never strand a server down, the file and the flags
// agree on what they accept, and the keepalive and zone settings are
// checked before rsp starts.

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fdCount is how many fds process pid has open, as the kernel lists them.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	return len(openFDs(t, pid))
}

// openFDs returns the fd numbers process pid has open.
func openFDs(t *testing.T, pid int) map[int]bool {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	fds := map[int]bool{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		fds[n] = true
	}
	return fds
}

// nthFreeFD returns the number the nth fd process pid opens next will
// get (n from 1): the kernel gives each new fd the lowest free number.
func nthFreeFD(t *testing.T, pid, n int) int {
	t.Helper()
	used := openFDs(t, pid)
	for fd := 0; ; fd++ {
		if !used[fd] {
			if n--; n == 0 {
				return fd
			}
		}
	}
}

// sighupAndWait sends SIGHUP and waits until rsp logs the reload's
// outcome; it returns true when the reload was applied, false when it was
// refused.
func sighupAndWait(t *testing.T, p *proc) bool {
	t.Helper()
	count := func() (int, int) {
		s := p.stderr.String()
		return strings.Count(s, "configuration reloaded"), strings.Count(s, "reload refused")
	}
	ok0, bad0 := count()
	p.signal(syscall.SIGHUP)
	var ok, bad int
	if !eventually(5*time.Second, func() bool { ok, bad = count(); return ok > ok0 || bad > bad0 }) {
		t.Fatalf("reload not logged:\n%s", p.stderr.String())
	}
	return ok > ok0
}

// TestReloadAllOrNothing: a reload in which one new listener cannot be
// served (rsp is out of fds) changes nothing: it is logged as refused,
// the kept frontend still routes by the old configuration, the new
// listeners are closed again (no fd leaks) and nothing listens on them;
// the same file applies once fds are back.
func TestReloadAllOrNothing(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			a, b := newIDServer(t, "a"), newIDServer(t, "b")
			pools := servers("ida", []*idServer{a}, nil) + servers("idb", []*idServer{b}, nil)
			old := fmt.Sprintf("[global]\nrelay = %q\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"ida\"\n", mode) + pools
			next := fmt.Sprintf("[global]\nrelay = %q\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"idb\"\n", mode) +
				"[frontend.g]\nlisten = \"127.0.0.2:0\"\nbackend = \"idb\"\n[frontend.h]\nlisten = \"127.0.0.3:0\"\nbackend = \"idb\"\n" + pools
			path := writeConfig(t, "", old)
			cmd := exec.Command(rspBin, "-config", path)
			cmd.Env = append(os.Environ(), "GOMAXPROCS=1") // one event loop: a known number of fds per served listener
			p := launch(t, cmd)
			p.waitStarted()
			if !sighupAndWait(t, p) { // whatever a reload opens once is open now
				t.Fatalf("reload of the same file refused:\n%s", p.stderr.String())
			}

			// Room for the two new listeners and for serving one of them,
			// not both. Binding takes an fd per listener; serving one takes
			// a duplicate of its socket (closed again) and keeps another
			// (one per loop, or the copy relay's own listener). So the
			// fourth fd opened from here may be, the fifth may not.
			var lim unix.Rlimit
			if err := unix.Prlimit(p.pid(), unix.RLIMIT_NOFILE, nil, &lim); err != nil {
				t.Skipf("prlimit: %v", err)
			}
			n := fdCount(t, p.pid())
			tight := lim
			tight.Cur = uint64(nthFreeFD(t, p.pid(), 5))
			if err := unix.Prlimit(p.pid(), unix.RLIMIT_NOFILE, &tight, nil); err != nil {
				t.Skipf("prlimit: %v", err)
			}
			writeConfig(t, path, next)
			if sighupAndWait(t, p) {
				t.Fatalf("reload with fds below %d allowed (%d open) was applied: the test proves nothing:\n%s", tight.Cur, n, p.stderr.String())
			}
			if err := unix.Prlimit(p.pid(), unix.RLIMIT_NOFILE, &lim, nil); err != nil {
				t.Fatal(err)
			}
			if got := fdCount(t, p.pid()); got != n {
				t.Errorf("%d fds open after the refused reload, %d before: new listeners not closed", got, n)
			}
			if name, c := which(t, p.addr, ""); name != "a" {
				t.Errorf("after a refused reload frontend f routes to %q, want a (the old configuration)", name)
			} else {
				c.Close()
			}
			if s := p.stderr.String(); strings.Contains(s, "frontend=g") || strings.Contains(s, "frontend=h") {
				t.Errorf("a refused reload logged new frontends as listening:\n%s", s)
			}

			// With fds back, the same file applies whole.
			if !sighupAndWait(t, p) {
				t.Fatalf("reload refused with fds back:\n%s", p.stderr.String())
			}
			if name, c := which(t, p.addr, ""); name != "b" {
				t.Errorf("after the reload frontend f routes to %q, want b", name)
			} else {
				c.Close()
			}
			for _, fe := range []string{"g", "h"} {
				addr := listeningOn(p, fe)
				if addr == "" {
					t.Fatalf("frontend %s not listening after the reload:\n%s", fe, p.stderr.String())
				}
				if name, c := which(t, addr, ""); name != "b" {
					t.Errorf("frontend %s routes to %q, want b", fe, name)
				} else {
					c.Close()
				}
			}
		})
	}
}

// TestReloadDropsHealthChecks: a reload that removes [health] does not
// leave a server down for good. One taken down by checks is up at once
// (nothing would ever check it again); one ejected by clients' failed
// connects while checks were on rests eject_time, then is tried again.
func TestReloadDropsHealthChecks(t *testing.T) {
	for _, tc := range []struct {
		name, first, then string
		downBy            string
	}{
		{"down by checks", "eject_after = 0\n[backend.app.health]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nfall = 1\n", "", "consecutive checks failed"},
		{"ejected under checks", "eject_after = 1\n[backend.app.health]\ninterval = \"1h\"\n", "eject_after = 1\neject_time = \"300ms\"\n", "consecutive failed connects"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newIDServer(t, "a")
			d := &idServer{name: "d", addr: closedPort(t)}
			conf := func(backend string) string {
				return "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\nretries = 1\n" + backend +
					servers("app", []*idServer{a, d}, nil)
			}
			path := writeConfig(t, "", conf(tc.first))
			p := startRsp(t, "-config", path)
			if !eventually(5*time.Second, func() bool {
				tally(t, p.addr, 2) // clients' failed connects to d, for passive ejection
				s := p.stderr.String()
				return strings.Contains(s, `msg="server down" server=app/d`) && strings.Contains(s, tc.downBy)
			}) {
				t.Fatalf("d not taken down (%s):\n%s", tc.downBy, p.stderr.String())
			}
			reloadConfig(t, p, path, conf(tc.then))
			d.start(t, d.addr)
			t.Cleanup(d.kill)
			if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), `msg="server up" server=app/d`) }) {
				t.Fatalf("d stays down after the reload removed its health checks:\n%s", p.stderr.String())
			}
			if got := tally(t, p.addr, 10); got["a"] != 5 || got["d"] != 5 {
				t.Errorf("d back: %v, want a:5 d:5", got)
			}
		})
	}
}

// checkConfig runs 'rsp check' on text and returns its exit code and
// output, stdout and stderr together.
func checkConfig(t *testing.T, text string) (int, string, string) {
	t.Helper()
	path := writeConfig(t, "", text)
	cmd := exec.Command(rspBin, "check", "-config", path)
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out), path
}

const oneServer = "[backend.app]\nserver.s = { address = \"127.0.0.1:9\" }\n"

// TestZoneInterface: a link-local server's zone names an interface;
// 'rsp check' resolves it when the file is loaded and names the server
// and the interface when there is none of that name; rsp stores the
// interface's index and relays with it.
func TestZoneInterface(t *testing.T) {
	fe := "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\n"
	code, out, path := checkConfig(t, fe+"server.s = { address = \"[fe80::1%nosuchif9]:80\" }\n")
	if code != 1 || !strings.Contains(out, path+":5: server app/s:") || !strings.Contains(out, `"nosuchif9"`) ||
		strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("unknown interface: exit %d, want 1 and one line naming server app/s and interface nosuchif9:\n%s", code, out)
	}
	code, out, _ = checkConfig(t, fe+"server.s = { address = \"[fe80::1%lo]:80\" }\n")
	if code != 0 {
		t.Errorf("zone lo: exit %d:\n%s", code, out)
	}
	// The command line resolves it the same way, before starting.
	code, stderr := runRsp(t, exec.Command(rspBin, "-listen", "127.0.0.1:0", "-backend", "[fe80::1%nosuchif9]:80"))
	checkOneLine(t, code, stderr, []string{`"nosuchif9"`})

	// A zone on a loopback address (link-local ones are not configured
	// on lo) takes the same path: the name becomes the interface's
	// index once, at start, and both relays connect with it.
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no interface lo: %v", err)
	}
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer ln.Close()
	serveEach(ln, func(c *net.TCPConn) {
		defer c.Close()
		if _, err := io.Copy(c, c); err == nil {
			c.CloseWrite()
		}
	})
	port := ln.Addr().(*net.TCPAddr).Port
	for _, mode := range relayModes {
		p := startRsp(t, "-listen", "127.0.0.1:0", "-backend", fmt.Sprintf("[::1%%lo]:%d", port), "-relay", mode)
		if want := fmt.Sprintf("backend=[::1%%%d]:%d", lo.Index, port); !strings.Contains(p.stderr.String(), want) {
			t.Errorf("%s: start line lacks %q: the zone was not resolved to lo's index:\n%s", mode, want, p.stderr.String())
		}
		if err := echoThrough(p.addr, 9, 1<<16); err != nil {
			t.Errorf("%s: through a zoned backend: %v", mode, err)
		}
	}
}

// TestFileAndFlagsAgree: the configuration file and the command line
// accept and refuse the same values, with the same words.
func TestFileAndFlagsAgree(t *testing.T) {
	fe := "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n"
	cases := []struct {
		name     string
		file     string // a [frontend.f] line, or a section
		fileWant []string
		args     []string
		argsWant []string
	}{
		{"zero connect timeout", fe + "connect_timeout = \"0s\"\n", []string{":4: frontend f: connect_timeout 0s would wait forever: give a duration such as 5s"},
			[]string{"-connect-timeout", "0"}, []string{"-connect-timeout 0s would wait forever: give a duration such as 5s"}},
		{"zero connect timeout in defaults", "[defaults]\nconnect_timeout = \"0s\"\n" + fe, []string{":2: connect_timeout 0s would wait forever"},
			nil, nil},
		{"huge connect timeout", fe + "connect_timeout = \"2000000h\"\n", []string{":4:", "connect_timeout 2000000h0m0s is more than 720h0m0s (30 days)"},
			[]string{"-connect-timeout", "2000000h"}, []string{"-connect-timeout 2000000h0m0s is more than 720h0m0s (30 days)"}},
		{"huge idle timeout", fe + "idle_timeout = \"721h\"\n", []string{":4:", "idle_timeout 721h0m0s is more than 720h0m0s (30 days)"},
			[]string{"-idle-timeout", "721h"}, []string{"-idle-timeout 721h0m0s is more than 720h0m0s (30 days)"}},
		{"huge half-close timeout", fe + "half_close_timeout = \"100000h\"\n", []string{":4:", "half_close_timeout 100000h0m0s is more than 720h0m0s"},
			[]string{"-half-close-timeout", "100000h"}, []string{"-half-close-timeout 100000h0m0s is more than 720h0m0s"}},
		{"huge drain timeout", "[global]\ndrain_timeout = \"1000h\"\n" + fe, []string{":2:", "drain_timeout 1000h0m0s is more than 720h0m0s"},
			[]string{"-drain-timeout", "1000h"}, []string{"-drain-timeout 1000h0m0s is more than 720h0m0s"}},
		{"small pipe", "[global]\npipe_size = 100\n" + fe, []string{":2:", "pipe_size 100 out of range: give bytes from 4096 to 67108864, or 0 for the default"},
			[]string{"-pipe-size", "100"}, []string{"-pipe-size 100 out of range: give bytes from 4096 to 67108864, or 0 for the default"}},
		{"small notsent_lowat", "[global]\nnotsent_lowat = 100\n" + fe, []string{":2:", "notsent_lowat 100 out of range: give bytes from 4096 to 67108864, 0 for the default (131072), or -1 to keep the kernel's"},
			[]string{"-notsent-lowat", "100"}, []string{"-notsent-lowat 100 out of range: give bytes from 4096 to 67108864, 0 for the default (131072), or -1 to keep the kernel's"}},
		{"keepalive count", "[defaults]\ntcp_keepalive_count = 128\n" + fe, []string{":2:", "tcp_keepalive_count 128 out of range"}, nil, nil},
		{"keepalive fraction", fe + "tcp_keepalive = \"1500ms\"\n", []string{":4:", "frontend f: tcp_keepalive 1.5s", "whole seconds"},
			[]string{"-tcp-keepalive", "1500ms"}, []string{"-tcp-keepalive 1.5s", "whole seconds"}},
		{"keepalive too long", "[backend.app]\ntcp_keepalive = \"10h\"\nserver.s = { address = \"127.0.0.1:9\" }\n" + fe,
			[]string{":2: backend app: tcp_keepalive 10h0m0s", "1s to 32767s"},
			[]string{"-tcp-keepalive", "10h"}, []string{"-tcp-keepalive 10h0m0s", "1s to 32767s"}},
		{"huge user timeout", "[defaults]\ntcp_user_timeout = \"800h\"\n" + fe, []string{":2:", "tcp_user_timeout 800h0m0s is more than 720h0m0s"},
			[]string{"-tcp-user-timeout", "800h"}, []string{"-tcp-user-timeout 800h0m0s is more than 720h0m0s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.file
			if !strings.Contains(src, "[backend.app]") {
				src += oneServer
			}
			code, out, path := checkConfig(t, src)
			if code != 1 {
				t.Errorf("rsp check exited %d, want 1:\n%s", code, out)
			}
			for _, w := range tc.fileWant {
				if strings.HasPrefix(w, ":") {
					w = path + w
				}
				if !strings.Contains(out, w) {
					t.Errorf("rsp check output lacks %q:\n%s", w, out)
				}
			}
			if tc.args == nil {
				return
			}
			code, stderr := runRsp(t, exec.Command(rspBin, append(tc.args, "-listen", "127.0.0.1:0", "-backend", "127.0.0.1:9")...))
			checkOneLine(t, code, stderr, tc.argsWant)
		})
	}
}

// TestListenClash: addresses that bind the same socket clash in 'rsp
// check', naming both frontends, not at run time.
func TestListenClash(t *testing.T) {
	for _, tc := range [][2]string{
		{":8080", "0.0.0.0:8080"},
		{"[::]:8080", ":8080"},
		{"0.0.0.0:8080", "[::]:8080"},
		{":8080", "127.0.0.1:8080"},
		{"[::1]:8080", ":8080"},
		{"127.0.0.1:8080", "127.0.0.1:8080"},
		{"[::1]:8080", "[0:0::1]:8080"},
		{"127.0.0.1:8080", "127.0.0.1:08080"},
	} {
		src := fmt.Sprintf("[frontend.f]\nlisten = %q\nbackend = \"app\"\n[frontend.g]\nlisten = %q\nbackend = \"app\"\n", tc[0], tc[1]) + oneServer
		code, out, path := checkConfig(t, src)
		want := fmt.Sprintf("%s:5: frontend g: listen %s", path, tc[1])
		if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, "frontend f's") {
			t.Errorf("listen %s and %s: exit %d, want 1 and %q naming frontend f's %s:\n%s", tc[0], tc[1], code, want, tc[0], out)
		}
	}
	// Different addresses on one port, or ports 0, do not clash.
	for _, tc := range [][2]string{{"127.0.0.1:8080", "[::1]:8080"}, {"127.0.0.1:8080", "127.0.0.2:8080"}, {":0", "0.0.0.0:0"}} {
		src := fmt.Sprintf("[frontend.f]\nlisten = %q\nbackend = \"app\"\n[frontend.g]\nlisten = %q\nbackend = \"app\"\n", tc[0], tc[1]) + oneServer
		if code, out, _ := checkConfig(t, src); code != 0 {
			t.Errorf("listen %s and %s: exit %d, want 0:\n%s", tc[0], tc[1], code, out)
		}
	}
}

// TestKeepAliveKeys: tcp_keepalive, tcp_keepalive_count and
// tcp_user_timeout are accepted in [defaults], a frontend and a backend,
// refused elsewhere with the sections they belong in, and the flags
// -tcp-keepalive and -tcp-user-timeout start rsp; neither combines with
// -config.
func TestKeepAliveKeys(t *testing.T) {
	good := "[defaults]\ntcp_keepalive = \"30s\"\ntcp_keepalive_count = 5\ntcp_user_timeout = \"1m\"\n" +
		"[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\ntcp_keepalive = \"0s\"\ntcp_user_timeout = \"0s\"\n" +
		"[backend.app]\ntcp_keepalive = \"10s\"\ntcp_keepalive_count = 3\ntcp_user_timeout = \"20s\"\nserver.s = { address = \"127.0.0.1:9\" }\n"
	if code, out, _ := checkConfig(t, good); code != 0 {
		t.Errorf("keepalive keys in [defaults], a frontend and a backend: exit %d:\n%s", code, out)
	}
	fe := "[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n"
	for _, tc := range []struct{ src, want string }{
		{"[global]\ntcp_keepalive = \"5s\"\n" + fe + oneServer, `:2: unknown key "tcp_keepalive" in [global]: set it in [defaults], [frontend.NAME] or [backend.NAME]`},
		{fe + "[backend.app]\n[backend.app.server.s]\naddress = \"127.0.0.1:9\"\ntcp_user_timeout = \"5s\"\n", `:7: unknown key "tcp_user_timeout" in [backend.app.server.s]: set it in [defaults], [frontend.NAME] or [backend.NAME]`},
		{fe + "[backend.app]\nconnect_timeout = \"1s\"\nserver.s = { address = \"127.0.0.1:9\" }\n", `:5: unknown key "connect_timeout" in [backend.app]: set it in [defaults] or [frontend.NAME]`},
		{fe + "[backend.app]\ntcp_keepalive_count = -1\nserver.s = { address = \"127.0.0.1:9\" }\n", `:5: backend app: tcp_keepalive_count -1 out of range: give 1 to 127 probes, or 0 for the kernel's default`},
	} {
		code, out, path := checkConfig(t, tc.src)
		if code != 1 || !strings.Contains(out, path+tc.want) {
			t.Errorf("exit %d, want 1 and %q:\n%s", code, path+tc.want, out)
		}
	}

	echo := echoBackend(t)
	p := startRsp(t, "-listen", "127.0.0.1:0", "-backend", echo.Addr().String(), "-tcp-keepalive", "7s", "-tcp-user-timeout", "30s")
	if err := echoThrough(p.addr, 5, 1<<16); err != nil {
		t.Errorf("through rsp with -tcp-keepalive 7s -tcp-user-timeout 30s: %v", err)
	}
	path := writeConfig(t, "", fe+oneServer)
	for _, flag := range []string{"-tcp-keepalive", "-tcp-user-timeout"} {
		code, stderr := runRsp(t, exec.Command(rspBin, "-config", path, flag, "5s"))
		checkOneLine(t, code, stderr, []string{flag + " cannot be combined with -config"})
	}
	out, _ := exec.Command(rspBin, "-h").Output()
	for _, w := range []string{"-tcp-keepalive DUR", "-tcp-user-timeout DUR"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("rsp -h lacks %q", w)
		}
	}
}
