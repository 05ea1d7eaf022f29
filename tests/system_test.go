//go:build system

// System tests (make test-system): the .deb and .rpm checked as files,
// then the .deb installed and run under a real systemd in a Debian 12
// container booted with systemd-nspawn. They need root, debootstrap,
// systemd-nspawn, lintian and rpm, and the packages named by RSP_DEB and
// RSP_RPM.

package tests

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// debootstrap's arguments for the container root; the cached tarball is
// keyed by them.
var rootSpec = []string{"--variant=minbase", "--include=systemd,systemd-sysv,dbus,procps,rpm", "bookworm"}

const (
	mirror     = "http://deb.debian.org/debian"
	maxScore   = 1.5              // systemd-analyze security exposure, at most
	webAddr    = "127.0.0.1:8080" // rsp.socket's ListenStream= as shipped
	statsAddr  = "127.0.0.1:9120" // rsp-metrics.socket's ListenStream= as shipped
	drainLimit = 3 * time.Second  // drain_timeout in the test configs
)

func packages(t *testing.T) (deb, rpm string) {
	t.Helper()
	deb, rpm = os.Getenv("RSP_DEB"), os.Getenv("RSP_RPM")
	if deb == "" || rpm == "" {
		t.Fatal("RSP_DEB and RSP_RPM must name the packages: run `make test-system`")
	}
	return deb, rpm
}

// output runs a host command and returns its combined output.
func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The files both packages install; each format adds its own as listed.
var (
	commonFiles = []string{
		"/etc/rsp/rsp.conf",
		"/usr/bin/rsp",
		"/usr/lib/systemd/system/rsp-metrics.socket",
		"/usr/lib/systemd/system/rsp.service",
		"/usr/lib/systemd/system/rsp.socket",
		"/usr/lib/systemd/system/rsp@.service",
		"/usr/lib/systemd/system/rsp@.socket",
		"/usr/lib/sysusers.d/rsp.conf",
		"/usr/share/doc/rsp/README.md",
		"/usr/share/doc/rsp/examples/rsp-alerts.yml",
		"/usr/share/doc/rsp/examples/rsp-dashboard.json",
		"/usr/share/man/man8/rsp.8.gz",
	}
	debOnly = []string{"/usr/share/doc/rsp/changelog.Debian.gz", "/usr/share/doc/rsp/copyright"}
	rpmOnly = []string{"/usr/lib/systemd/system-preset/80-rsp.preset", "/usr/share/licenses/rsp/LICENSE"}
)

func sorted(lists ...[]string) []string {
	var all []string
	for _, l := range lists {
		all = append(all, l...)
	}
	sort.Strings(all)
	return all
}

// TestPackageFiles: lintian finds no error in the .deb; both packages hold
// the expected files, scripts and the same binary; the .rpm installs into a
// scratch root.
func TestPackageFiles(t *testing.T) {
	deb, rpm := packages(t)

	t.Run("lintian", func(t *testing.T) {
		out, err := exec.Command("lintian", "--fail-on", "error", "--display-info", deb).CombinedOutput()
		t.Logf("lintian %s:\n%s", filepath.Base(deb), out)
		if err != nil || regexp.MustCompile(`(?m)^E: `).Match(out) {
			t.Fatalf("lintian reports errors (%v)", err)
		}
	})

	t.Run("deb", func(t *testing.T) {
		var files []string
		for _, line := range strings.Split(output(t, "dpkg-deb", "-c", deb), "\n") {
			f := strings.Fields(line)
			if len(f) >= 6 && !strings.HasPrefix(f[0], "d") {
				files = append(files, strings.TrimPrefix(f[5], "."))
			}
		}
		sort.Strings(files)
		if want := sorted(commonFiles, debOnly); !slicesEqual(files, want) {
			t.Errorf(".deb holds\n%s\nwant\n%s", strings.Join(files, "\n"), strings.Join(want, "\n"))
		}
		ctrl := t.TempDir()
		output(t, "dpkg-deb", "-e", deb, ctrl)
		conffiles, _ := os.ReadFile(filepath.Join(ctrl, "conffiles"))
		if strings.TrimSpace(string(conffiles)) != "/etc/rsp/rsp.conf" {
			t.Errorf("conffiles = %q, want /etc/rsp/rsp.conf", conffiles)
		}
		for _, s := range []string{"postinst", "prerm", "postrm"} {
			if out, err := exec.Command("sh", "-n", filepath.Join(ctrl, s)).CombinedOutput(); err != nil {
				t.Errorf("maintainer script %s: %v %s", s, err, out)
			}
		}
	})

	t.Run("rpm", func(t *testing.T) {
		files := strings.Fields(output(t, "rpm", "-qpl", rpm))
		sort.Strings(files)
		if want := sorted(commonFiles, rpmOnly); !slicesEqual(files, want) {
			t.Errorf(".rpm holds\n%s\nwant\n%s", strings.Join(files, "\n"), strings.Join(want, "\n"))
		}
		scripts := output(t, "rpm", "-qp", "--scripts", rpm)
		for _, w := range []string{
			"postinstall scriptlet", "systemd-sysusers rsp.conf", "systemctl --no-reload preset rsp.socket",
			"systemctl start rsp-metrics.socket",
			"preuninstall scriptlet", "systemctl --no-reload disable --now rsp.socket rsp.service",
			"systemctl stop rsp-metrics.socket",
			"postuninstall scriptlet", "systemctl try-restart rsp.service",
		} {
			if !strings.Contains(scripts, w) {
				t.Errorf("rpm scripts lack %q:\n%s", w, scripts)
			}
		}
		if cf := strings.TrimSpace(output(t, "rpm", "-qpc", rpm)); cf != "/etc/rsp/rsp.conf" {
			t.Errorf("rpm config files = %q", cf)
		}
		if req := output(t, "rpm", "-qpR", rpm); !strings.Contains(req, "glibc >= 2.34") {
			t.Errorf("rpm requires lack glibc:\n%s", req)
		}

		// Installed into a scratch root, it holds the .deb's files, and
		// the same binary.
		root := t.TempDir()
		output(t, "rpm", "--root", root, "--initdb")
		output(t, "rpm", "--root", root, "-i", "--nodeps", "--noscripts", rpm)
		var got []string
		filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			rel := strings.TrimPrefix(path, root)
			if err != nil || d.IsDir() || strings.HasPrefix(rel, "/var/lib/rpm") || strings.HasPrefix(rel, "/usr/lib/sysimage") || strings.HasPrefix(rel, "/root/.rpmdb") {
				return nil
			}
			got = append(got, rel)
			return nil
		})
		sort.Strings(got)
		if want := sorted(commonFiles, rpmOnly); !slicesEqual(got, want) {
			t.Errorf("rpm --root installed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		debRoot := t.TempDir()
		output(t, "dpkg-deb", "-x", deb, debRoot)
		for _, f := range commonFiles {
			a, errA := os.ReadFile(filepath.Join(root, f))
			b, errB := os.ReadFile(filepath.Join(debRoot, f))
			if errA != nil || errB != nil || sha256.Sum256(a) != sha256.Sum256(b) {
				t.Errorf("%s differs between the .rpm and the .deb (%v, %v)", f, errA, errB)
			}
		}
	})
}

func slicesEqual(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// rootTarball returns a tarball of the container root, made with
// debootstrap on first use and cached (RSP_SYSTEM_CACHE, by default
// /var/cache/rsp-tests) under a name keyed by debootstrap's arguments.
func rootTarball(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("RSP_SYSTEM_CACHE")
	if dir == "" {
		dir = "/var/cache/rsp-tests"
	}
	key := sha256.Sum256([]byte(strings.Join(append(rootSpec, mirror), " ")))
	tarball := filepath.Join(dir, fmt.Sprintf("bookworm-%x.tar.gz", key[:6]))
	if _, err := os.Stat(tarball); err == nil {
		t.Logf("container root from cache %s", tarball)
		return tarball
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	build := t.TempDir()
	root := filepath.Join(build, "root")
	start := time.Now()
	output(t, "debootstrap", append(append([]string{}, rootSpec...), root, mirror)...)
	t.Logf("debootstrap took %v", time.Since(start).Round(time.Second))
	tmp := tarball + ".part"
	output(t, "tar", "--numeric-owner", "-C", root, "-czf", tmp, ".")
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	return tarball
}

// container is a Debian root booted by systemd-nspawn. It shares the host's
// network, so sockets systemd opens inside are reachable from the test.
type container struct {
	root   string
	nspawn *exec.Cmd
	pid1   int
	log    *syncBuffer
}

func bootContainer(t *testing.T) *container {
	t.Helper()
	tarball := rootTarball(t)
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	output(t, "tar", "--numeric-owner", "-C", root, "-xzf", tarball)
	// systemd-nspawn wants this when the host's PID 1 is not systemd.
	if err := os.MkdirAll("/run/systemd/nspawn", 0o755); err != nil {
		t.Fatal(err)
	}
	c := &container{root: root, log: &syncBuffer{}}
	c.nspawn = exec.Command("systemd-nspawn", "-D", root, "--register=no", "--keep-unit", "-b", "--console=pipe")
	c.nspawn.Stdout, c.nspawn.Stderr = c.log, c.log
	start := time.Now()
	if err := c.nspawn.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	if !eventually(15*time.Second, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", c.nspawn.Process.Pid, c.nspawn.Process.Pid))
		if err != nil || len(bytes.Fields(b)) == 0 {
			return false
		}
		c.pid1, _ = strconv.Atoi(string(bytes.Fields(b)[0]))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.pid1))
		return strings.TrimSpace(string(comm)) == "systemd"
	}) {
		t.Fatalf("container's systemd did not start:\n%s", c.log.String())
	}
	var state string
	if !eventually(60*time.Second, func() bool {
		state, _ = c.run("systemctl", "is-system-running")
		state = strings.TrimSpace(state)
		return state == "running" || state == "degraded"
	}) {
		t.Fatalf("container not up: %q\n%s", state, c.log.String())
	}
	if state == "degraded" {
		out, _ := c.run("systemctl", "--failed", "--no-legend")
		t.Logf("container degraded; failed units:\n%s", out)
	}
	t.Logf("container booted in %v (systemd PID %d on the host)", time.Since(start).Round(100*time.Millisecond), c.pid1)
	return c
}

// stop powers the container off and makes sure nothing of it stays
// mounted.
func (c *container) stop() {
	if c.nspawn.ProcessState == nil {
		c.nspawn.Process.Signal(syscall.SIGTERM) // nspawn asks the container's systemd to power off
		done := make(chan struct{})
		go func() { c.nspawn.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			c.nspawn.Process.Kill()
			<-done
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], c.root) {
			exec.Command("umount", "-l", f[4]).Run()
		}
	}
}

// run runs a command inside the container and returns its combined output.
func (c *container) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-a"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "DEBIAN_FRONTEND=noninteractive"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs a command inside the container and fails the test if it fails.
func (c *container) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.run(args...)
	if err != nil {
		t.Fatalf("in container: %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// write writes a file inside the container's root.
func (c *container) write(t *testing.T, path, text string) {
	t.Helper()
	full := filepath.Join(c.root, path)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (c *container) prop(t *testing.T, unit, name string) string {
	t.Helper()
	return strings.TrimSpace(c.must(t, "systemctl", "show", "-p", name, "--value", unit))
}

// instance is one rsp under systemd: rsp.socket/rsp.service, or a
// template instance.
type instance struct {
	socket, service string
	conf            string // config path in the container
	fdName          string // the socket's FileDescriptorName=
	addr            string // TCP address its socket listens on
	ctl             string // its control socket (RuntimeDirectory= of the service)
	metrics         string // address of its metrics socket unit; "" for none
}

func (in instance) config(servers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\ndrain_timeout = %q\ncontrol = %q\n[frontend.main]\nsocket = %q\nbackend = \"echo\"\n", drainLimit, in.ctl, in.fdName)
	b.WriteString("[backend.echo]\nbalance = \"leastconn\"\n[backend.echo.health]\ninterval = \"1s\"\n")
	for i, s := range servers {
		fmt.Fprintf(&b, "[backend.echo.server.s%d]\naddress = %q\n", i, s)
	}
	return b.String()
}

// TestSystemd: the .deb under a real systemd: install, socket activation,
// status, journal, reload, restart and upgrade without a refused
// connection, clean stop, hardening score, metrics and rsp ctl, a template
// instance, purge; then the .rpm's install and upgrade.
func TestSystemd(t *testing.T) {
	deb, rpmPath := packages(t)
	began := time.Now()
	for addr, unit := range map[string]string{webAddr: "rsp.socket", statsAddr: "rsp-metrics.socket"} {
		if ln, err := net.Listen("tcp", addr); err != nil {
			t.Fatalf("%s is taken on this host, and %s as shipped listens there: %v", addr, unit, err)
		} else {
			ln.Close()
		}
	}
	echo, echo2 := echoBackend(t), echoBackend(t)
	c := bootContainer(t)
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	c.write(t, "/var/tmp/rsp.deb", string(data))

	main := instance{socket: "rsp.socket", service: "rsp.service", conf: "/etc/rsp/rsp.conf", fdName: "web", addr: webAddr,
		ctl: "/run/rsp/rsp.ctl", metrics: statsAddr}
	t.Run("install", func(t *testing.T) {
		out := c.must(t, "dpkg", "-i", "/var/tmp/rsp.deb")
		t.Logf("dpkg -i:\n%s", out)
		if s := strings.TrimSpace(c.must(t, "systemctl", "is-enabled", "rsp.socket")); s != "enabled" {
			t.Errorf("rsp.socket is %s after install, want enabled", s)
		}
		if s := c.prop(t, "rsp.socket", "ActiveState"); s != "active" {
			t.Errorf("rsp.socket is %s after install, want active", s)
		}
		if s := c.prop(t, "rsp.service", "ActiveState"); s != "inactive" {
			t.Errorf("rsp.service is %s before any connection, want inactive (started by its socket)", s)
		}
		// The metrics socket comes with rsp.socket, enabled or not.
		if s := strings.TrimSpace(c.must(t, "systemctl", "is-enabled", "rsp-metrics.socket")); s != "static" {
			t.Errorf("rsp-metrics.socket is %s after install, want static (started by rsp.socket)", s)
		}
		if s := c.prop(t, "rsp-metrics.socket", "ActiveState"); s != "active" {
			t.Errorf("rsp-metrics.socket is %s after install, want active (wanted by rsp.socket)", s)
		}
		// The group of rsp@NAME.socket's Unix sockets, from sysusers.d.
		if out, err := c.run("getent", "group", "rsp-clients"); err != nil {
			t.Errorf("no group rsp-clients after install (%v): %s", err, out)
		}
		if out := c.must(t, "rsp", "check", "-config", "/etc/rsp/rsp.conf"); !strings.Contains(out, "configuration OK") {
			t.Errorf("shipped config: %s", out)
		}
		c.must(t, "systemd-analyze", "verify", "--man=no",
			"/usr/lib/systemd/system/rsp.socket", "/usr/lib/systemd/system/rsp-metrics.socket",
			"/usr/lib/systemd/system/rsp.service", "rsp@demo.socket", "rsp@demo.service")
	})
	if t.Failed() {
		t.FailNow()
	}
	// The operator points the shipped config at a backend before the
	// first client arrives.
	c.write(t, main.conf, main.config(echo.Addr().String()))
	t.Run("rsp", func(t *testing.T) {
		exercise(t, c, main, echo2.Addr().String())
		observe(t, c, main)
	})

	demo := instance{socket: "rsp@demo.socket", service: "rsp@demo.service", conf: "/etc/rsp/demo.conf", fdName: "demo",
		addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), ctl: "/run/rsp-demo/rsp.ctl"}
	// Its default socket, /run/rsp-demo.sock, from the host.
	demoUnix := fmt.Sprintf("unix:/proc/%d/root/run/rsp-demo.sock", c.pid1)
	t.Run("template", func(t *testing.T) {
		c.write(t, demo.conf, demo.config(echo.Addr().String()))
		c.write(t, "/etc/systemd/system/rsp@demo.socket.d/listen.conf", "[Socket]\nListenStream="+demo.addr+"\n")
		c.must(t, "systemctl", "daemon-reload")
		c.must(t, "systemctl", "enable", "--now", demo.socket)
		exercise(t, c, demo, echo2.Addr().String())
		observe(t, c, demo)
		if err := echoThrough(demoUnix, 77, 1<<20); err != nil {
			t.Errorf("through rsp@demo's unix socket: %v", err)
		}
		unixSocketAccess(t, c, "/run/rsp-demo.sock")
	})

	t.Run("upgrade", func(t *testing.T) {
		// Reinstalling runs the upgrade path of the maintainer scripts:
		// running services restart on the new files, their sockets stay.
		mustServe(t, main)
		mustServe(t, demo)
		pids := []string{c.prop(t, main.service, "MainPID"), c.prop(t, demo.service, "MainPID")}
		failed := underLoad(t, []instance{main, demo}, func() {
			c.must(t, "dpkg", "-i", "/var/tmp/rsp.deb")
		})
		if failed != 0 {
			t.Errorf("%d connections failed while the package was upgraded", failed)
		}
		if p := c.prop(t, main.service, "MainPID"); p == pids[0] || p == "0" {
			t.Errorf("rsp.service not restarted by the upgrade (MainPID %s, was %s)", p, pids[0])
		}
		if p := c.prop(t, demo.service, "MainPID"); p == pids[1] || p == "0" {
			t.Errorf("rsp@demo.service not restarted by the upgrade (MainPID %s, was %s)", p, pids[1])
		}
		if s := strings.TrimSpace(c.must(t, "systemctl", "is-enabled", "rsp.socket")); s != "enabled" {
			t.Errorf("rsp.socket %s after the upgrade", s)
		}
		// Live streams across an upgrade: handed to the new rsp.
		pid := c.prop(t, main.service, "MainPID")
		waited := streamsAcross(t, main.addr, handoverStreams, func() { c.must(t, "dpkg", "-i", "/var/tmp/rsp.deb") })
		if p := c.prop(t, main.service, "MainPID"); p == pid || p == "0" {
			t.Errorf("rsp.service not restarted by the second upgrade (MainPID %s, was %s)", p, pid)
		}
		t.Logf("upgrade with %d live streams: none cut; a new client waited %v at most", handoverStreams+1, waited.Round(time.Millisecond))
		// The restarted rsp.service removed and made again its runtime
		// directory /run/rsp: the instance's socket, elsewhere, is still
		// there; the new rsp has the metrics socket and the control socket.
		if err := echoThrough(demoUnix, 78, 64<<10); err != nil {
			t.Errorf("through rsp@demo's unix socket after rsp.service restarted: %v", err)
		}
		if _, err := scrapeValue("http://"+statsAddr+"/metrics", "rsp_frontend_connections_accepted_total", map[string]string{"frontend": "main"}); err != nil {
			t.Errorf("metrics after the upgrade: %v", err)
		}
		c.must(t, "rsp", "ctl", "servers")
	})

	t.Run("purge", func(t *testing.T) {
		// The operator's own files go first; the package removes the rest.
		os.RemoveAll(filepath.Join(c.root, "/etc/systemd/system/rsp@demo.socket.d"))
		os.Remove(filepath.Join(c.root, demo.conf))
		out := c.must(t, "dpkg", "--purge", "rsp")
		t.Logf("dpkg --purge:\n%s", out)
		c.must(t, "systemctl", "daemon-reload")
		var left []string
		for _, dir := range []string{"/etc/systemd", "/usr/lib/systemd", "/lib/systemd", "/etc/rsp", "/var/lib/systemd", "/usr/bin/rsp", "/run/systemd/generator"} {
			filepath.WalkDir(filepath.Join(c.root, dir), func(path string, d os.DirEntry, err error) error {
				if err == nil && strings.Contains(filepath.Base(path), "rsp") {
					left = append(left, strings.TrimPrefix(path, c.root))
				}
				return nil
			})
		}
		if len(left) > 0 {
			t.Errorf("purge left behind: %v", left)
		}
		if units := strings.TrimSpace(c.must(t, "systemctl", "list-units", "--all", "--no-legend", "rsp*")); units != "" {
			t.Errorf("units still loaded after purge:\n%s", units)
		}
		if out, err := c.run("pgrep", "-x", "rsp"); err == nil {
			t.Errorf("rsp still running after purge: %s", out)
		}
		if out, err := c.run("getent", "passwd", "rsp"); err == nil {
			t.Errorf("user rsp left behind: %s", out)
		}
		// The group stays, as Debian leaves system groups (postrm).
		if out, err := c.run("getent", "group", "rsp-clients"); err != nil {
			t.Errorf("purge removed the group rsp-clients (%v): %s", err, out)
		}
		for _, addr := range []string{main.addr, demo.addr, statsAddr} {
			if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				conn.Close()
				t.Errorf("%s still accepts after purge", addr)
			}
		}
	})
	t.Run("rpm", func(t *testing.T) {
		// The RPM's scriptlets under the same systemd (Debian's rpm
		// wants --force-debian, and knows none of the dependencies):
		// install, then an upgrade with live streams, which %postun's
		// try-restart hands to the new rsp. rpm -U of the same version
		// with --replacepkgs runs the upgrade's scriptlets ($1 2 and 1).
		data, err := os.ReadFile(rpmPath)
		if err != nil {
			t.Fatal(err)
		}
		c.write(t, "/var/tmp/rsp.rpm", string(data))
		rpmDo := func(args ...string) string {
			return c.must(t, append([]string{"rpm", "--force-debian", "--nodeps"}, args...)...)
		}
		rpmDo("-i", "/var/tmp/rsp.rpm")
		defer rpmDo("-e", "rsp")
		if s := c.prop(t, main.socket, "ActiveState"); s != "active" {
			t.Fatalf("%s is %s after rpm -i, want active", main.socket, s)
		}
		c.write(t, main.conf, main.config(echo.Addr().String()))
		mustServe(t, main)
		pid := c.prop(t, main.service, "MainPID")
		waited := streamsAcross(t, main.addr, handoverStreams, func() { rpmDo("-U", "--replacepkgs", "/var/tmp/rsp.rpm") })
		if p := c.prop(t, main.service, "MainPID"); p == pid || p == "0" {
			t.Errorf("rsp.service not restarted by rpm -U (MainPID %s, was %s)", p, pid)
		}
		journal := c.must(t, "journalctl", "-u", main.service, "--no-pager", "-o", "cat")
		if all := regexp.MustCompile(`msg="took over live connections" from="systemd's file descriptor store" conns=(\d+) lost=(\d+)`).FindAllStringSubmatch(journal, -1); all == nil ||
			atoi(all[len(all)-1][1]) < handoverStreams || all[len(all)-1][2] != "0" {
			t.Errorf("rpm -U: no take-over of at least %d connections with none lost; journal:\n%s", handoverStreams, journal)
		} else {
			t.Logf("rpm -U with %d live streams: took over %s, lost 0; a new client waited %v at most", handoverStreams+1, all[len(all)-1][1], waited.Round(time.Millisecond))
		}
	})
	t.Logf("system test took %v", time.Since(began).Round(time.Second))
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// firstRead passes reads through to r and signals seen once, at the
// first bytes read (or when told: signal).
type firstRead struct {
	r    io.Reader
	seen chan<- struct{}
	once sync.Once
}

func (f *firstRead) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if n > 0 {
		f.signal()
	}
	return n, err
}

func (f *firstRead) signal() { f.once.Do(func() { f.seen <- struct{}{} }) }

// peekOne waits, up to c's deadline, until c has a byte to read, and
// leaves it there.
func peekOne(c *net.TCPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var perr error
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return perr != syscall.EAGAIN && perr != syscall.EINTR
	})
	if err == nil && perr == nil && n == 0 {
		perr = io.ErrUnexpectedEOF
	}
	return cmp.Or(err, perr)
}

// handoverStreams is how many streams cross a restart and an upgrade.
const handoverStreams = 200

// exercise runs one instance through its life: socket activation with
// bytes checked, status and journal, reload (good and broken), restart
// under load, a clean stop within the drain timeout, and its hardening.
func exercise(t *testing.T, c *container, in instance, second string) {
	if s := c.prop(t, in.socket, "ActiveState"); s != "active" {
		t.Fatalf("%s is %s, want active", in.socket, s)
	}
	if s := c.prop(t, in.service, "ActiveState"); s != "inactive" {
		t.Fatalf("%s is %s before its first client, want inactive", in.service, s)
	}

	// Socket activation: the first clients start the service; every byte
	// comes back, with half-close in both directions.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoThrough(in.addr, uint64(i), int64(i+1)<<20+int64(i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("through %s: %v", in.addr, err)
	}
	if s := c.prop(t, in.service, "ActiveState"); s != "active" {
		j, _ := c.run("journalctl", "-u", in.service, "--no-pager", "-o", "cat")
		t.Fatalf("%s is %s after clients connected, want active; journal:\n%s", in.service, s, j)
	}

	status, _ := c.run("systemctl", "status", "--no-pager", "--lines=0", in.service)
	if !strings.Contains(status, "Active: active (running)") || !regexp.MustCompile(`Status: "\d+ active connections, \d+ accepted`).MatchString(status) {
		t.Errorf("systemctl status %s lacks the running state or rsp's STATUS= line:\n%s", in.service, status)
	}
	t.Logf("systemctl status %s:\n%s", in.service, status)
	journal := c.must(t, "journalctl", "-u", in.service, "--no-pager", "-o", "cat")
	if !strings.Contains(journal, `msg="rsp started"`) || !strings.Contains(journal, "socket_activated=true") {
		t.Errorf("journal of %s lacks rsp's start:\n%s", in.service, journal)
	}

	// Reload: a good file is applied; a broken one is refused by
	// ExecReload= and the running config keeps serving.
	c.write(t, in.conf, in.config(second))
	c.must(t, "systemctl", "reload", in.service)
	if !eventually(5*time.Second, func() bool {
		j, _ := c.run("journalctl", "-u", in.service, "--no-pager", "-o", "cat")
		return strings.Contains(j, "configuration reloaded")
	}) {
		t.Errorf("systemctl reload %s: no reload in the journal", in.service)
	}
	good := in.config(second)
	c.write(t, in.conf, good+"bogus_key = 1\n")
	if out, err := c.run("systemctl", "reload", in.service); err == nil {
		t.Errorf("reload of a broken config succeeded:\n%s", out)
	}
	c.write(t, in.conf, good)
	mustServe(t, in)

	// Restart under load: the socket stays bound, no client is refused.
	pid := c.prop(t, in.service, "MainPID")
	failed := underLoad(t, []instance{in}, func() {
		for range 2 {
			c.must(t, "systemctl", "restart", in.service)
			time.Sleep(300 * time.Millisecond)
		}
	})
	if failed != 0 {
		t.Errorf("%d connections failed across 2 restarts of %s", failed, in.service)
	}
	if p := c.prop(t, in.service, "MainPID"); p == pid {
		t.Errorf("%s MainPID unchanged after restart", in.service)
	}

	// Restart with live streams: rsp hands them to the next rsp through
	// systemd's file descriptor store; none is cut, no byte is lost.
	pid = c.prop(t, in.service, "MainPID")
	sockets := func(pid string) int {
		out, _ := c.run("sh", "-c", "ls -l /proc/"+pid+"/fd | grep -c socket:")
		return atoi(strings.TrimSpace(out))
	}
	base := sockets(pid)
	waited := streamsAcross(t, in.addr, handoverStreams, func() { c.must(t, "systemctl", "restart", in.service) })
	if p := c.prop(t, in.service, "MainPID"); p == pid || p == "0" {
		t.Errorf("%s MainPID %s after restart, was %s", in.service, p, pid)
	}
	journal = c.must(t, "journalctl", "-u", in.service, "--no-pager", "-o", "cat")
	if all := regexp.MustCompile(`msg="took over live connections" from="systemd's file descriptor store" conns=(\d+) lost=(\d+) listeners=\d+ bytes_in_pipes=(\d+)`).FindAllStringSubmatch(journal, -1); all == nil {
		t.Errorf("%s: no take-over logged after systemctl restart; journal:\n%s", in.service, journal)
	} else if m := all[len(all)-1]; atoi(m[1]) < handoverStreams || m[2] != "0" {
		// The half-closed client may have had its whole echo by then.
		t.Errorf("%s: took over %s connections and lost %s; want at least %d and 0", in.service, m[1], m[2], handoverStreams)
	} else {
		t.Logf("systemctl restart %s with %d live streams: took over %s (%s bytes in pipes), lost %s; a new client waited %v at most", in.service, handoverStreams+1, m[1], m[3], m[2], waited.Round(time.Millisecond))
	}
	// Once every stream ended, the new rsp holds the sockets the old one
	// held with no client: nothing handed over is left behind.
	newPID, got := c.prop(t, in.service, "MainPID"), 0
	if !eventually(5*time.Second, func() bool { got = sockets(newPID); return got == base }) {
		t.Errorf("%s: the new rsp holds %d sockets once the streams ended; the old one held %d with no client", in.service, got, base)
	}
	if fds := c.prop(t, in.service, "NFileDescriptorStore"); fds != "" && fds != "0" { // systemd 254+
		t.Errorf("%s: %s descriptors left in systemd's store after the take-over; want 0", in.service, fds)
	}

	// SIGUSR2 under systemd is refused: its successor would not be
	// systemd's child, which systemd cannot supervise.
	pid = c.prop(t, in.service, "MainPID")
	c.must(t, "systemctl", "kill", "-s", "SIGUSR2", "--kill-who=main", in.service)
	if !eventually(5*time.Second, func() bool {
		j, _ := c.run("journalctl", "-u", in.service, "--no-pager", "-o", "cat")
		return strings.Contains(j, "SIGUSR2 ignored under systemd")
	}) {
		t.Errorf("%s: SIGUSR2 not refused under systemd", in.service)
	}
	if p := c.prop(t, in.service, "MainPID"); p != pid {
		t.Errorf("%s: MainPID %s after a refused SIGUSR2, was %s", in.service, p, pid)
	}
	mustServe(t, in)
	crashAcross(t, c, in, good, sockets)

	// Stop with a client connected: rsp drains, closes it at
	// drain_timeout and exits 0.
	idle := dial(t, in.addr)
	defer idle.Close()
	if err := echoOne(idle, "before stop"); err != nil {
		t.Fatalf("idle client: %v", err)
	}
	start := time.Now()
	c.must(t, "systemctl", "stop", in.service)
	took := time.Since(start)
	if r, code := c.prop(t, in.service, "Result"), c.prop(t, in.service, "ExecMainStatus"); r != "success" || code != "0" {
		j, _ := c.run("journalctl", "-u", in.service, "--no-pager", "-n", "40")
		t.Errorf("stop of %s: Result=%s ExecMainStatus=%s, want success and 0; journal:\n%s", in.service, r, code, j)
	}
	if took > drainLimit+5*time.Second {
		t.Errorf("stop of %s took %v with drain_timeout %v", in.service, took, drainLimit)
	}
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF && !isReset(err) {
		t.Errorf("client open at stop: read = %v, want closed", err)
	}
	t.Logf("systemctl stop %s with a client connected: %v (drain_timeout %v)", in.service, took.Round(10*time.Millisecond), drainLimit)
	// The socket is still there: the next client starts the service again.
	mustServe(t, in)

	out := c.must(t, "systemd-analyze", "security", "--no-pager", in.service)
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security %s: %s", in.service, strings.TrimSpace(out[strings.LastIndex(out, "\n→")+1:]))
	if score > maxScore {
		t.Errorf("%s exposure %.1f, want at most %.1f:\n%s", in.service, score, maxScore, out)
	}
}

// unixSocketAccess checks an instance's Unix socket as rsp@.socket makes
// it: root's and the group rsp-clients', mode 0660; a user outside the group is
// refused, a member is served. The client is perl's IO::Socket::UNIX
// (perl-base is essential in Debian): the container needs nothing more.
func unixSocketAccess(t *testing.T, c *container, path string) {
	t.Helper()
	if got := strings.TrimSpace(c.must(t, "stat", "-c", "%a %U %G %F", path)); got != "660 root rsp-clients socket" {
		t.Errorf("%s: mode, owner, group and type %q, want \"660 root rsp-clients socket\"", path, got)
	}
	group := strings.Split(strings.TrimSpace(c.must(t, "getent", "group", "rsp-clients")), ":")
	if len(group) < 3 {
		t.Fatalf("getent group rsp-clients: %q", group)
	}
	ping := func(groups string) (string, error) {
		return c.run("setpriv", "--reuid=65534", "--regid=65534", groups, "perl", "-MIO::Socket::UNIX", "-e",
			`alarm 10; $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n"; print $s "ping\n"; print scalar <$s>;`, path)
	}
	if out, err := ping("--clear-groups"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("nobody, outside the group rsp-clients, through %s: %v %q, want connect: Permission denied", path, err, out)
	}
	if out, err := ping("--groups=" + group[2]); err != nil || out != "ping\n" {
		t.Errorf("nobody in the group rsp-clients (gid %s) through %s: %v %q, want the line echoed", group[2], path, err, out)
	}
}

// mustServe checks one echo through the instance.
func mustServe(t *testing.T, in instance) {
	t.Helper()
	if err := echoThrough(in.addr, 9, 64<<10); err != nil {
		t.Fatalf("through %s (%s): %v", in.addr, in.service, err)
	}
}

// underLoad runs do while 4 clients per instance keep connecting and
// echoing a line; it returns how many connections failed (and fails the
// test if none succeeded during do).
func underLoad(t *testing.T, ins []instance, do func()) int {
	t.Helper()
	var ok, bad atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, in := range ins {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 100000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if err := pingOnce(in.addr, fmt.Sprintf("ping %d %d", w, i)); err != nil {
						bad.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", in.addr, err))
					} else {
						ok.Add(1)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}()
		}
	}
	time.Sleep(200 * time.Millisecond)
	before := ok.Load()
	do()
	time.Sleep(200 * time.Millisecond)
	during := ok.Load() - before
	close(stop)
	wg.Wait()
	t.Logf("under load: %d connections served (%d while the change ran), %d failed", ok.Load(), during, bad.Load())
	if err, _ := firstErr.Load().(error); err != nil {
		t.Logf("first failure: %v", err)
	}
	if during == 0 {
		t.Errorf("no connection was served while the change ran: the test proves nothing")
	}
	return int(bad.Load())
}

// pingOnce connects, echoes msg and closes.
func pingOnce(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoWithin(c, msg, 15*time.Second)
}

// observe checks an instance's observability under systemd: its metrics
// socket unit serves rsp's /metrics (the container shares the host's
// network, so the test scrapes it as Prometheus would); its control socket
// is in the service's RuntimeDirectory=, mode 0600, owned by the dynamic
// user, refused to other users; rsp ctl drains a server and readies it
// again, seen in rsp ctl servers, in the metrics, in the journal and in
// where new connections go.
func observe(t *testing.T, c *container, in instance) {
	t.Helper()
	mustServe(t, in) // running, with a connection accepted
	if in.metrics != "" {
		url := "http://" + in.metrics + "/metrics"
		n, err := scrapeValue(url, "rsp_frontend_connections_accepted_total", map[string]string{"frontend": "main"})
		if err != nil {
			t.Errorf("scrape %s: %v", url, err)
		} else if n < 1 {
			t.Errorf("rsp_frontend_connections_accepted_total{frontend=\"main\"} = %v after a connection, want at least 1", n)
		}
		if _, err := scrapeValue(url, "process_open_fds", nil); err != nil {
			t.Errorf("scrape %s: the process collector: %v", url, err)
		}
	}

	// The control socket: the service's own, 0600; its directory the
	// service's RuntimeDirectory=, 0750.
	pid := c.prop(t, in.service, "MainPID")
	uid := strings.TrimSpace(c.must(t, "ps", "-o", "uid=", "-p", pid))
	if uid == "0" {
		t.Errorf("%s runs as root, want its DynamicUser=", in.service)
	}
	for _, f := range []struct{ path, want string }{
		{in.ctl, "600 " + uid + " socket"},
		{filepath.Dir(in.ctl), "750 " + uid + " directory"},
	} {
		if got := strings.TrimSpace(c.must(t, "stat", "-c", "%a %u %F", f.path)); got != f.want {
			t.Errorf("%s: mode, owner and type %q, want %q (uid %s is %s's)", f.path, got, f.want, uid, in.service)
		}
	}
	ctl := func(args ...string) (string, error) {
		return c.run(append([]string{"rsp", "ctl", "-socket", in.ctl}, args...)...)
	}
	if in.ctl == "/run/rsp/rsp.ctl" {
		// rsp.service's socket is rsp ctl's default.
		ctl = func(args ...string) (string, error) { return c.run(append([]string{"rsp", "ctl"}, args...)...) }
	}
	// Another user is refused, with one line and exit 1.
	out, err := c.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "rsp", "ctl", "-socket", in.ctl, "servers")
	if code := exitCode(err); code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.HasPrefix(out, "rsp ctl: ") {
		t.Errorf("rsp ctl as nobody: exit %d (%v), want 1 with one line \"rsp ctl: REASON\":\n%s", code, err, out)
	}

	state := func() string {
		out, err := ctl("servers")
		if err != nil {
			t.Fatalf("rsp ctl servers: %v\n%s", err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == "echo/s0" {
				return f[2] // SERVER ADDR STATE ...
			}
		}
		t.Fatalf("rsp ctl servers lists no echo/s0:\n%s", out)
		return ""
	}
	if !eventually(5*time.Second, func() bool { return state() == "up" }) {
		t.Fatalf("echo/s0 is %s in rsp ctl servers, want up", state())
	}
	if out, err := ctl("drain", "echo/s0"); err != nil {
		t.Fatalf("rsp ctl drain echo/s0: %v\n%s", err, out)
	}
	if s := state(); s != "draining" {
		t.Errorf("echo/s0 is %s after rsp ctl drain, want draining", s)
	}
	if in.metrics != "" {
		if v, err := scrapeValue("http://"+in.metrics+"/metrics", "rsp_server_state",
			map[string]string{"backend": "echo", "server": "s0", "state": "draining"}); err != nil || v != 1 {
			t.Errorf("rsp_server_state{backend=\"echo\",server=\"s0\",state=\"draining\"} = %v (%v) after drain, want 1", v, err)
		}
	}
	// The only server drains: a new client has no server to go to.
	if err := pingOnce(in.addr, "while drained"); err == nil {
		t.Errorf("a new connection was served while the only server was drained")
	}
	if out, err := ctl("ready", "echo/s0"); err != nil {
		t.Fatalf("rsp ctl ready echo/s0: %v\n%s", err, out)
	}
	if s := state(); s != "up" {
		t.Errorf("echo/s0 is %s after rsp ctl ready, want up", s)
	}
	mustServe(t, in)
	if !eventually(5*time.Second, func() bool {
		j, _ := c.run("journalctl", "-u", in.service, "--no-pager", "-o", "cat")
		return strings.Count(j, "server state changed by rsp ctl") >= 2
	}) {
		t.Errorf("journal of %s lacks the changes rsp ctl made", in.service)
	}
}

// exitCode is a command's exit status from its error: 0 for nil, -1 when
// it did not run to an exit.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(*exec.ExitError); ok {
		return e.ExitCode()
	}
	return -1
}

// scrapeValue returns the sum of the samples of a counter or gauge family
// at url (rsp's /metrics) whose labels include want.
func scrapeValue(url, family string, want map[string]string) (float64, error) {
	body, err := fetchMetrics(url)
	if err != nil {
		return 0, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	mf, ok := fams[family]
	if !ok {
		return 0, fmt.Errorf("GET %s: no %s", url, family)
	}
	var sum float64
	var found bool
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if match {
			found = true
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	if !found {
		return 0, fmt.Errorf("GET %s: no %s with labels %v", url, family, want)
	}
	return sum, nil
}

// streamsAcross runs n echo streams through in, each half sent and
// echoed before do runs and the rest after, plus one client that sent
// everything and half-closed before do runs and reads the echo only
// after it: rsp holds that echo in its pipes and socket buffers across
// do. do runs once every stream has had echoed bytes back, so each is
// relayed end to end (and, with handover = "crash", rsp has sent its
// sockets to systemd's store: it records a connection before relaying
// its first byte, though systemd reads that message a moment later). Every
// stream must come back byte-exact with no reset. While do runs, new
// clients connect every 5 ms: it returns the longest a client waited for
// its echo, and the errors seen.
func streamsAcross(t *testing.T, addr string, n int, do func()) (longest time.Duration) {
	t.Helper()
	longest, _ = streamsAcrossCrash(t, addr, n, nil, do)
	return longest
}

// streamsAcrossCrash is streamsAcross; with stored (not nil), do kills
// rsp: stored is called once every stream is in flight, and returns once
// systemd's store holds them all. A new client that rsp had accepted but
// not yet journaled when it died is reset (the kernel closes it with
// SO_LINGER 0): such resets are counted in lost, not failed, and the
// client tries again.
func streamsAcrossCrash(t *testing.T, addr string, n int, stored, do func()) (longest time.Duration, lost int) {
	crash := stored != nil
	t.Helper()
	const size = 1 << 20
	open := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(open) })
	var wg sync.WaitGroup
	errs := make(chan error, n+2)    // the streams, the half-closed one, the new clients
	seen := make(chan struct{}, n+1) // a stream's first echoed bytes
	for i := range n {
		c := dial(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			// Each stream signals seen once: at its first echoed bytes,
			// or when it ended without any.
			fr := &firstRead{r: c, seen: seen}
			defer fr.signal()
			if err := echoVia(c, fr, &gate{w: c, at: size / 2, open: open}, uint64(5000+i), size); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	half := dial(t, addr)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer half.Close()
		half.SetDeadline(time.Now().Add(2 * time.Minute))
		sent, err := send(half, 4999, size/4) // fits in the buffers on the way
		if err != nil {
			seen <- struct{}{}
			errs <- fmt.Errorf("half-closed stream: send: %w", err)
			return
		}
		half.CloseWrite()
		err = peekOne(half)
		seen <- struct{}{}
		if err != nil {
			errs <- fmt.Errorf("half-closed stream: no echo before the change: %w", err)
			return
		}
		<-open
		if got, err := receive(half); err != nil || got != sent {
			errs <- fmt.Errorf("half-closed stream: got back %v, %v; want %v", got, err, sent)
		}
	}()
	echoed, limit := 0, time.After(time.Minute)
	for echoed < n+1 {
		select {
		case <-seen:
			echoed++
		case <-limit:
			t.Errorf("%d of %d streams had echoed bytes back within a minute: the change is not tried", echoed, n+1)
			once.Do(func() { close(open) })
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			return 0, 0
		}
	}
	time.Sleep(300 * time.Millisecond) // the first halves in flight
	if crash {
		stored()
	}
	stop := make(chan struct{})
	pinged := make(chan time.Duration)
	go func() {
		var worst time.Duration
		for i := 0; ; i++ {
			select {
			case <-stop:
				pinged <- worst
				return
			default:
			}
			begin := time.Now()
			err := pingOnce(addr, fmt.Sprintf("wait %d", i))
			if crash && isReset(err) {
				lost++
				continue
			}
			if err != nil {
				// One error says it; more would fill errs and block.
				errs <- fmt.Errorf("new client during the change: %w", err)
				<-stop
				pinged <- worst
				return
			}
			worst = max(worst, time.Since(begin))
			time.Sleep(5 * time.Millisecond)
		}
	}()
	do()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	longest = <-pinged
	once.Do(func() { close(open) })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return longest, lost
}

// crashAcross: with handover = "crash" each connection lives in systemd's
// store beside rsp; kill -9 mid-stream, and the rsp that Restart= starts
// resumes every stream byte-exact, and in the end holds the sockets the
// first held with no client. good is the instance's config.
func crashAcross(t *testing.T, c *container, in instance, good string, sockets func(string) int) {
	t.Helper()
	c.write(t, in.conf, strings.Replace(good, "[global]\n", "[global]\nhandover = \"crash\"\n", 1))
	defer func() {
		c.write(t, in.conf, good)
		c.must(t, "systemctl", "reset-failed", in.service)
		c.must(t, "systemctl", "restart", in.service)
	}()
	// The restarts before count against StartLimitBurst= (5 in 10 s).
	c.must(t, "systemctl", "reset-failed", in.service)
	c.must(t, "systemctl", "restart", in.service)
	if !eventually(5*time.Second, func() bool {
		j, _ := c.run("journalctl", "-u", in.service, "--no-pager", "-o", "cat")
		return strings.Contains(j, "crash survival on")
	}) {
		t.Errorf("%s: handover = \"crash\" did not turn crash survival on", in.service)
		return
	}
	// A restart hands over as without the journal.
	pid := c.prop(t, in.service, "MainPID")
	streamsAcross(t, in.addr, handoverStreams, func() { c.must(t, "systemctl", "restart", in.service) })
	if p := c.prop(t, in.service, "MainPID"); p == pid {
		t.Errorf("%s MainPID unchanged after restart", in.service)
	}
	pid = c.prop(t, in.service, "MainPID")
	base := 0
	eventually(5*time.Second, func() bool { n := sockets(pid); ok := n == base; base = n; return ok })
	var newPID string
	// Past StartLimitBurst= systemd would refuse to start rsp again
	// after the crash (and reset every connection in its store).
	c.must(t, "systemctl", "reset-failed", in.service)
	// Each connection costs systemd's store two messages and a compare
	// with each descriptor it holds: with 200 streams starting at once,
	// rsp holds stores back for room in systemd's queue, and a crash
	// before they are sent would reset those connections. rsp's STATUS=
	// says how many it has sent.
	keptRE := regexp.MustCompile(`(\d+) kept in systemd's store`)
	stored := func() {
		var status string
		began := time.Now()
		if !eventually(time.Minute, func() bool {
			status = c.prop(t, in.service, "StatusText")
			m := keptRE.FindStringSubmatch(status)
			// The half-closed stream may have ended.
			return m != nil && atoi(m[1]) >= handoverStreams && !strings.Contains(status, "waiting")
		}) {
			t.Errorf("%s: systemd's store does not hold the %d streams; STATUS=%q", in.service, handoverStreams, status)
			return
		}
		t.Logf("%s: STATUS=%q %v after the streams were in flight", in.service, status, time.Since(began).Round(time.Millisecond))
	}
	waited, lost := streamsAcrossCrash(t, in.addr, handoverStreams, stored, func() {
		c.must(t, "systemctl", "kill", "-s", "SIGKILL", "--kill-who=main", in.service)
		if !eventually(15*time.Second, func() bool {
			newPID = c.prop(t, in.service, "MainPID")
			return newPID != pid && newPID != "0"
		}) {
			j, _ := c.run("journalctl", "-u", in.service, "--no-pager", "-o", "cat", "-n", "30")
			t.Errorf("%s not started again after kill -9; journal:\n%s", in.service, j)
		}
	})
	journal := c.must(t, "journalctl", "-u", in.service, "--no-pager", "-o", "cat")
	took := regexp.MustCompile(`msg="took over the live connections of an rsp that ended without handing over \(crash survival\)" conns=(\d+) reset=(\d+) bytes_in_pipes=(\d+)`).FindAllStringSubmatch(journal, -1)
	switch {
	case took == nil:
		t.Errorf("%s: no crash take-over logged after kill -9; journal:\n%s", in.service, journal)
	case atoi(took[len(took)-1][1]) < handoverStreams || took[len(took)-1][2] != "0":
		m := took[len(took)-1]
		t.Errorf("%s: resumed %s connections and reset %s after kill -9; want at least %d and 0", in.service, m[1], m[2], handoverStreams)
	default:
		m := took[len(took)-1]
		t.Logf("kill -9 of %s with %d live streams: resumed %s (%s bytes in pipes), reset %s; a new client waited %v at most (RestartSec=1s); %d new clients in flight at the kill were reset", in.service, handoverStreams+1, m[1], m[3], m[2], waited.Round(time.Millisecond), lost)
	}
	got := 0
	if !eventually(5*time.Second, func() bool { got = sockets(newPID); return got == base }) {
		t.Errorf("%s: the rsp after the crash holds %d sockets once the streams ended; want %d", in.service, got, base)
	}
}
