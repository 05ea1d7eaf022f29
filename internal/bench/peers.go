package bench

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"rsp/internal/handover"
)

// Contender is one way of carrying the benchmark's connections.
type Contender struct {
	Name string
	// start runs the proxy in front of backend, listening on host; nil
	// means direct connections to the backend.
	start func(o *Options, backend, host string) (*process, error)
}

// contenders returns direct loopback, rsp (splice and copy), the plain Go
// io.Copy proxy, and whichever of HAProxy, nginx and
// systemd-socket-proxyd are installed.
func contenders(o *Options) []Contender {
	cs := []Contender{
		{Name: "direct"},
		{Name: "rsp splice", start: rspStarter("splice")},
		{Name: "rsp splice observed", start: rspStarter("splice", "-metrics", "127.0.0.1:0", "-conn-log", "all")},
		{Name: "rsp splice edge", start: startRspEdge},
		{Name: "rsp splice crash", start: startRspCrash},
		{Name: "rsp splice as nobody", start: startRspNobody},
		{Name: "rsp splice 1 loop", start: startRspOneLoop},
		{Name: "rsp copy", start: rspStarter("copy")},
		{Name: "Go io.Copy proxy", start: startIOCopy},
	}
	if path, err := exec.LookPath("haproxy"); err == nil {
		cs = append(cs, Contender{Name: "HAProxy", start: func(o *Options, b, h string) (*process, error) { return startHAProxy(o, path, b, h) }})
	} else {
		o.logf("HAProxy not installed (make bench-peers installs it): skipped")
	}
	if path, err := exec.LookPath("nginx"); err == nil {
		if mod := nginxStreamModule(); mod != "" {
			cs = append(cs, Contender{Name: "nginx stream", start: func(o *Options, b, h string) (*process, error) { return startNginx(o, path, mod, b, h) }})
		} else {
			o.logf("nginx has no stream module (libnginx-mod-stream): skipped")
		}
	} else {
		o.logf("nginx not installed (make bench-peers installs it): skipped")
	}
	proxyd := findFirst("/usr/lib/systemd/systemd-socket-proxyd", "/lib/systemd/systemd-socket-proxyd")
	activate, err := exec.LookPath("systemd-socket-activate")
	if proxyd != "" && err == nil {
		cs = append(cs, Contender{Name: "systemd-socket-proxyd", start: func(o *Options, b, h string) (*process, error) { return startProxyd(o, activate, proxyd, b, h) }})
	} else {
		o.logf("systemd-socket-proxyd not installed: skipped")
	}
	return cs
}

func findFirst(paths ...string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

var (
	rspStartRE = regexp.MustCompile(`msg="rsp started".* listen=(\S+)`)
	listenRE   = regexp.MustCompile(`^listen=(\S+)`)
	backendRE  = regexp.MustCompile(`^backend=(\S+)`)
)

// rspStarter runs rsp in relay mode with extra flags; "rsp splice
// observed" serves metrics and logs every connection, to show what
// observing costs.
func rspStarter(mode string, extra ...string) func(*Options, string, string) (*process, error) {
	return func(o *Options, backend, host string) (*process, error) {
		return start(o.proxy(rspCmd(o, mode, backend, host, extra...)), rspStartRE, true)
	}
}

// rspCmd returns the command that runs rsp in relay mode in front of
// backend, listening on host, with extra flags and then -rsp-args.
func rspCmd(o *Options, mode, backend, host string, extra ...string) *exec.Cmd {
	args := []string{"-listen", host + ":0", "-backend", backend, "-relay", mode, "-idle-timeout", "0"}
	args = append(append(args, extra...), o.RspArgs...)
	return exec.Command(o.Rsp, args...)
}

// startRspOneLoop runs rsp splice with one event loop (GOMAXPROCS=1), as
// an operator would on a host where rsp shares few cores with what it
// serves: beside "rsp splice" (a loop per CPU), it shows what the second
// loop buys in rate and costs in CPU per connection.
func startRspOneLoop(o *Options, backend, host string) (*process, error) {
	cmd := rspCmd(o, "splice", backend, host)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	return start(o.proxy(cmd), rspStartRE, true)
}

// startRspEdge runs rsp splice with the checks of issue 17 on every
// connection: an allow and a deny list, a frontend maxconn and per-source
// connection and rate limits, none of which refuses the benchmark's
// clients, so that "rsp splice edge" beside
// "rsp splice" is what checking costs.
func startRspEdge(o *Options, backend, host string) (*process, error) {
	addr, err := freeAddr(host)
	if err != nil {
		return nil, err
	}
	config := func(string) string {
		return fmt.Sprintf(`[global]
relay = "splice"
[frontend.bench]
listen = %q
backend = "bench"
idle_timeout = "0s"
maxconn = 1000000
allow = ["127.0.0.0/8", "::1", "10.0.0.0/8", "192.168.0.0/16"]
deny = ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"]
per_source_maxconn = 100000
per_prefix_maxconn = 100000
per_source_rate = 1000000
[backend.bench.server.s]
address = %q
`, addr, backend)
	}
	return startConfigured(o, "rsp-edge", config, addr, func(_, cfg string) *exec.Cmd {
		return exec.Command(o.Rsp, "-config", cfg) // -rsp-args are flags that -config refuses
	})
}

// startRspCrash runs rsp splice with handover = "crash", which keeps each
// connection and pipe in a file descriptor store while it lives: a store
// in this process that speaks systemd's protocol (handover.FDStore), so
// that "rsp splice crash" beside "rsp splice" is what crash survival
// costs rsp (not what it costs systemd, which is PID 1's own work).
func startRspCrash(o *Options, backend, host string) (*process, error) {
	addr, err := freeAddr(host)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "rsp-bench-store-")
	if err != nil {
		return nil, err
	}
	store, err := handover.NewFDStore(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	o.share(dir) // its socket, for -user
	config := func(string) string {
		return fmt.Sprintf(`[global]
relay = "splice"
handover = "crash"
[frontend.bench]
listen = %q
backend = "bench"
idle_timeout = "0s"
[backend.bench.server.s]
address = %q
`, addr, backend)
	}
	p, err := startConfigured(o, "rsp-crash", config, addr, func(_, cfg string) *exec.Cmd {
		cmd := exec.Command(o.Rsp, "-config", cfg)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+store.Path, "FDSTORE=1048576")
		return cmd
	})
	if err != nil {
		store.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	p.after = func() {
		store.Close()
		os.RemoveAll(dir)
	}
	return p, nil
}

// startRspNobody runs rsp splice as uid and gid 65534 without
// capabilities, as the packaged unit's DynamicUser= runs it (the kernel's
// per-user pipe limits apply), beside "rsp splice" as the benchmark's
// user in the same run. It needs root.
func startRspNobody(o *Options, backend, host string) (*process, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("needs root, to run rsp as another user")
	}
	as := *o
	as.cred = &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}
	return rspStarter("splice")(&as, backend, host)
}

func startIOCopy(o *Options, backend, host string) (*process, error) {
	return start(o.proxy(exec.Command(o.Rsp, "bench-iocopy", "-listen", host+":0", "-backend", backend)), listenRE, false)
}

func startBackend(o *Options) (*process, error) {
	return start(o.load(exec.Command(o.Rsp, "bench-backend")), backendRE, false)
}

// freeAddr returns host:port with a port that was free a moment ago.
func freeAddr(host string) (string, error) {
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitAccepting polls addr until a connection succeeds.
func waitAccepting(p *process, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			p.addr = addr
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before accepting", p.cmd.Path)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not accepting on %s within 10s", p.cmd.Path, addr)
}

// startConfigured writes config into a scratch directory, starts the
// command built from it and waits until addr accepts.
func startConfigured(o *Options, name string, config func(dir string) string, addr string, build func(dir, cfg string) *exec.Cmd) (*process, error) {
	dir, err := os.MkdirTemp("", "rsp-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(cfg, []byte(config(dir)), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	o.share(dir)
	cmd := o.proxy(build(dir, cfg))
	cmd.Stdout, cmd.Stderr = nil, nil
	p, err := start(cmd, nil, false)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p.dir = dir
	if err := waitAccepting(p, addr); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startHAProxy runs HAProxy in TCP mode with splice-auto, one thread, in
// the foreground.
func startHAProxy(o *Options, path, backend, host string) (*process, error) {
	addr, err := freeAddr(host)
	if err != nil {
		return nil, err
	}
	config := func(string) string {
		return fmt.Sprintf(`global
    maxconn 9000
    # maxconn/4 pipes by default would need more fds than the 20,000 a
    # process may open here.
    maxpipes 500
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    option splice-auto
frontend fe
    bind %s
    default_backend be
backend be
    server s1 %s
`, addr, backend)
	}
	return startConfigured(o, "haproxy", config, addr, func(dir, cfg string) *exec.Cmd {
		return exec.Command(path, "-db", "-f", cfg)
	})
}

func nginxStreamModule() string {
	return findFirst("/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so")
}

// startNginx runs nginx's stream proxy as one process (no master), in the
// foreground.
func startNginx(o *Options, path, module, backend, host string) (*process, error) {
	addr, err := freeAddr(host)
	if err != nil {
		return nil, err
	}
	config := func(dir string) string {
		return fmt.Sprintf(`load_module %s;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid %s/nginx.pid;
error_log stderr warn;
events { worker_connections 9000; }
stream {
    server {
        listen %s;
        proxy_pass %s;
        proxy_timeout 10m;
        proxy_half_close on;
    }
}
`, module, dir, addr, backend)
	}
	return startConfigured(o, "nginx", config, addr, func(dir, cfg string) *exec.Cmd {
		return exec.Command(path, "-c", cfg, "-p", dir, "-e", "stderr")
	})
}

// startProxyd runs systemd-socket-proxyd under systemd-socket-activate,
// which binds the socket and execs the proxy in the same process on the
// first connection.
func startProxyd(o *Options, activate, proxyd, backend, host string) (*process, error) {
	addr, err := freeAddr(host)
	if err != nil {
		return nil, err
	}
	cmd := o.proxy(exec.Command(activate, "-l", addr, proxyd, "--connections-max=20000", backend))
	p, err := start(cmd, nil, false)
	if err != nil {
		return nil, err
	}
	if err := waitAccepting(p, addr); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}
