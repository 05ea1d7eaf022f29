package tests

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freePort returns a TCP port that was free on all addresses a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// runRsp runs rsp to completion (bounded) and returns exit code and stderr.
func runRsp(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	p := launch(t, cmd)
	code := p.wait(20 * time.Second)
	return code, p.stderr.String()
}

// TestClassicUsage: "rsp <listen_port> <backend_addr> <backend_port>"
// serves on all addresses, IPv4 and IPv6.
func TestClassicUsage(t *testing.T) {
	backend := echoBackend(t)
	bport := strconv.Itoa(backend.Addr().(*net.TCPAddr).Port)
	port := strconv.Itoa(freePort(t))
	p := startRsp(t, port, "localhost", bport)
	if p.addr != "[::]:"+port && p.addr != "0.0.0.0:"+port {
		t.Fatalf("classic usage listens on %s, want all addresses on port %s", p.addr, port)
	}
	addrs := []string{"127.0.0.1:" + port}
	if c, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		c.Close()
		addrs = append(addrs, "[::1]:"+port)
	} else {
		t.Logf("no IPv6 loopback here (%v): checking IPv4 only", err)
	}
	for _, a := range addrs {
		if err := echoThrough(a, 11, 1<<20); err != nil {
			t.Fatalf("through %s: %v", a, err)
		}
	}
	// Flags may follow the classic arguments.
	port2 := strconv.Itoa(freePort(t))
	p2 := startRsp(t, port2, "127.0.0.1", bport, "-relay", "copy")
	if !strings.Contains(p2.stderr.String(), "relay=copy") {
		t.Fatalf("flag after classic arguments ignored:\n%s", p2.stderr.String())
	}
	if err := echoThrough("127.0.0.1:"+port2, 12, 1<<20); err != nil {
		t.Fatal(err)
	}
}

// TestIPv6Backend: a bracketed IPv6 backend literal works.
func TestIPv6Backend(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer ln.Close()
	serveEach(ln, func(c *net.TCPConn) {
		defer c.Close()
		if _, err := receive(c); err == nil {
			send(c, 21, 1<<20)
			c.CloseWrite()
		}
	})
	for _, mode := range relayModes {
		p := startRsp(t, "-listen", "[::1]:0", "-backend", ln.Addr().String(), "-relay", mode)
		c := dial(t, p.addr)
		c.CloseWrite()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := receive(c)
		c.Close()
		if err != nil || got != expected(21, 1<<20) {
			t.Fatalf("%s: through IPv6 got %v, %v", mode, got, err)
		}
	}
}

// TestCLIErrors: every kind of bad input gets one line naming the problem
// and what to do, and exit code 2.
func TestCLIErrors(t *testing.T) {
	held := listen(t) // a port in use
	heldPort := strconv.Itoa(held.Addr().(*net.TCPAddr).Port)
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown flag", []string{"-bogus"}, []string{"unknown flag -bogus", "rsp -h"}},
		{"listen port range", []string{"70000", "127.0.0.1", "80"}, []string{"listen port 70000 out of range", "1-65535"}},
		{"listen port zero", []string{"0", "127.0.0.1", "80"}, []string{"listen port 0 out of range"}},
		{"listen port word", []string{"http", "127.0.0.1", "80"}, []string{`listen port "http" is not a number`}},
		{"backend port range", []string{"8080", "127.0.0.1", "65536"}, []string{"backend port 65536 out of range"}},
		{"argument count", []string{"8080", "127.0.0.1"}, []string{"expected <listen_port> <backend_addr> <backend_port>, got 2"}},
		{"no backend", []string{"-listen", ":8080"}, []string{"no backend"}},
		{"backend no port", []string{"-listen", ":8080", "-backend", "example"}, []string{`backend "example"`, "HOST:PORT"}},
		{"backend empty unix", []string{"-listen", ":8080", "-backend", "unix:"}, []string{"socket path"}},
		{"bad listen", []string{"-listen", "nonsense", "-backend", "127.0.0.1:1"}, []string{`-listen "nonsense"`, "[HOST]:PORT"}},
		{"listen host name", []string{"-listen", "example.com:80", "-backend", "127.0.0.1:1"}, []string{"host must be an IP address"}},
		{"bad relay", []string{"-relay", "zerocopy", "8080", "127.0.0.1", "80"}, []string{`unknown relay mode "zerocopy"`, "splice or copy"}},
		{"bad log level", []string{"-log-level", "loud", "8080", "127.0.0.1", "80"}, []string{`unknown log level "loud"`}},
		{"bad duration", []string{"-idle-timeout", "soon", "8080", "127.0.0.1", "80"}, []string{"-idle-timeout", "soon"}},
		{"negative duration", []string{"-drain-timeout", "-1s", "8080", "127.0.0.1", "80"}, []string{"-drain-timeout -1s is negative"}},
		{"zero connect timeout", []string{"-connect-timeout", "0", "8080", "127.0.0.1", "80"}, []string{"-connect-timeout 0"}},
		{"unresolvable", []string{"8080", "no-such-host.invalid", "80"}, []string{"cannot resolve backend host 'no-such-host.invalid'"}},
		{"port in use", []string{"-listen", "127.0.0.1:" + heldPort, "-backend", "127.0.0.1:1"},
			[]string{"listen 127.0.0.1:" + heldPort + ": address already in use — is another rsp or service bound there?"}},
		{"demo argument", []string{"demo", "extra"}, []string{"demo takes no arguments"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runRsp(t, exec.Command(rspBin, tc.args...))
			checkOneLine(t, code, stderr, tc.want)
		})
	}
}

// checkOneLine asserts exit code 2 and a single "rsp: ..." line holding
// every wanted fragment.
func checkOneLine(t *testing.T, code int, stderr string, want []string) {
	t.Helper()
	if code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "rsp: ") {
		t.Fatalf("want one line starting \"rsp: \", got:\n%s", stderr)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("error %q does not mention %q", lines[0], w)
		}
	}
}

// TestPermissionDenied: binding a low port unprivileged says how to fix
// it, naming socket activation.
func TestPermissionDenied(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n <= 80 {
			t.Skipf("ip_unprivileged_port_start is %d: any user may bind port 80 here", n)
		}
	}
	cmd := exec.Command(rspBin, "-listen", "127.0.0.1:80", "-backend", "127.0.0.1:1")
	if os.Getuid() == 0 {
		// As root, run rsp as nobody so the bind is refused.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	code, stderr := runRsp(t, cmd)
	checkOneLine(t, code, stderr, []string{"listen 127.0.0.1:80: permission denied", "CAP_NET_BIND_SERVICE", "socket activation"})
}

// TestHelpAndVersion: -h prints the manual with every flag, -version the
// version; both exit 0.
func TestHelpAndVersion(t *testing.T) {
	out, err := exec.Command(rspBin, "-h").Output()
	if err != nil {
		t.Fatalf("rsp -h: %v", err)
	}
	for _, f := range []string{"-listen", "-backend", "-connect-timeout", "-idle-timeout", "-drain-timeout", "-relay", "-log-level", "-version", "<listen_port> <backend_addr> <backend_port>"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("rsp -h does not document %s", f)
		}
	}
	out, err = exec.Command(rspBin, "-version").Output()
	if err != nil || !strings.HasPrefix(string(out), "rsp ") {
		t.Fatalf("rsp -version = %q, %v", out, err)
	}
}

// TestDemo: "rsp demo" (what make run starts) works with nothing else
// installed: its self-check passes and a client gets its line echoed.
func TestDemo(t *testing.T) {
	p := launch(t, exec.Command(rspBin, "demo", "-listen", "127.0.0.1:0"))
	p.t = t
	p.waitStarted()
	if !eventually(5*time.Second, func() bool { return strings.Contains(p.stdout.String(), "self-check: ") }) {
		t.Fatalf("demo printed no self-check:\n%s", p.stdout.String())
	}
	if !strings.Contains(p.stdout.String(), "came back through rsp intact") {
		t.Fatalf("demo self-check failed:\n%s", p.stdout.String())
	}
	c := dial(t, p.addr)
	defer c.Close()
	if _, err := readLine(c, 5*time.Second); err != nil {
		t.Fatalf("no greeting: %v", err)
	}
	c.Write([]byte("ping\n"))
	line, err := readLine(c, 5*time.Second)
	if err != nil || line != "echo: ping\n" {
		t.Fatalf("demo echo = %q, %v", line, err)
	}
	p.signal(syscall.SIGINT)
	c.Close()
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("demo exit code %d after SIGINT", code)
	}
}

// TestCrossCompile: rsp builds for darwin and freebsd, where it relays
// with io.Copy.
func TestCrossCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiling is slow")
	}
	for _, goos := range []string{"darwin", "freebsd"} {
		for _, goarch := range []string{"amd64", "arm64"} {
			cmd := exec.Command("go", "build", "-o", os.DevNull, "../cmd/rsp")
			cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("GOOS=%s GOARCH=%s: %v\n%s", goos, goarch, err, out)
			}
		}
	}
}
