package tests

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestDrainWeightZero: a reload that sets a server's weight to 0 sends it
// no new connections while its established ones keep flowing; weight 1
// brings it back.
func TestDrainWeightZero(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			a, b := newIDServer(t, "a"), newIDServer(t, "b")
			conf := func(wb int) string {
				return fmt.Sprintf("[global]\nrelay = %q\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app]\n", mode) +
					servers("app", []*idServer{a, b}, map[string]string{"b": fmt.Sprintf("weight = %d", wb)})
			}
			path := writeConfig(t, "", conf(1))
			p := startRsp(t, "-config", path)
			var held net.Conn
			for range 2 {
				name, c := which(t, p.addr, "")
				if name == "b" {
					held = c
					continue
				}
				c.Close()
			}
			if held == nil {
				t.Fatal("roundrobin over a and b gave b none of 2 connections")
			}
			defer held.Close()
			reloadConfig(t, p, path, conf(0))
			if got := tally(t, p.addr, 10); got["a"] != 10 {
				t.Errorf("with b at weight 0: %v, want all 10 on a", got)
			}
			// The connection b had before the drain still echoes.
			for i := range 3 {
				msg := fmt.Sprintf("still here %d", i)
				if err := echoOne(held, msg); err != nil {
					t.Fatalf("established connection to drained b: %v", err)
				}
			}
			reloadConfig(t, p, path, conf(1))
			if got := tally(t, p.addr, 10); got["a"] != 5 || got["b"] != 5 {
				t.Errorf("b back at weight 1: %v, want a:5 b:5", got)
			}
		})
	}
}

// reloadConfig writes text to path, sends SIGHUP and waits until rsp logs
// the reload as done.
func reloadConfig(t *testing.T, p *proc, path, text string) {
	t.Helper()
	before := strings.Count(p.stderr.String(), "configuration reloaded")
	writeConfig(t, path, text)
	p.signal(syscall.SIGHUP)
	if !eventually(5*time.Second, func() bool { return strings.Count(p.stderr.String(), "configuration reloaded") > before }) {
		t.Fatalf("reload not logged:\n%s", p.stderr.String())
	}
}

// TestPassiveEjection: a server that refuses eject_after client connects
// in a row is taken down (clients never see it: retries hide it), gets no
// connect attempts while down, and is tried again after eject_time.
func TestPassiveEjection(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			a := newIDServer(t, "a")
			deadAddr := closedPort(t)
			conf := fmt.Sprintf("[global]\nrelay = %q\nlog_level = \"debug\"\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n", mode) +
				"[backend.app]\nretries = 1\neject_after = 2\neject_time = \"1500ms\"\n" +
				fmt.Sprintf("[backend.app.server.d]\naddress = %q\n", deadAddr) + servers("app", []*idServer{a}, nil)
			p := startRsp(t, "-config", writeConfig(t, "", conf))
			attempts := func() int {
				return strings.Count(p.stderr.String(), `msg="backend connect failed; retrying on another server" frontend=f`)
			}
			if got := tally(t, p.addr, 4); got["a"] != 4 {
				t.Fatalf("with d refusing: %v, want all 4 on a", got)
			}
			if !eventually(2*time.Second, func() bool {
				return strings.Contains(p.stderr.String(), `msg="server down" server=app/d`) &&
					strings.Contains(p.stderr.String(), "2 consecutive failed connects")
			}) {
				t.Fatalf("d not ejected after 2 failed connects:\n%s", p.stderr.String())
			}
			tried := attempts()
			if tried != 2 {
				t.Errorf("%d connects to d before it was ejected, want 2", tried)
			}
			if got := tally(t, p.addr, 10); got["a"] != 10 {
				t.Errorf("with d ejected: %v, want all 10 on a", got)
			}
			if n := attempts(); n != tried {
				t.Errorf("ejected d was tried %d more times", n-tried)
			}
			// d comes back on its address; after eject_time it is tried
			// again and serves.
			d := &idServer{name: "d"}
			d.start(t, deadAddr)
			t.Cleanup(d.kill)
			if !eventually(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), `msg="server up" server=app/d`) }) {
				t.Fatal("ejected server not tried again after eject_time")
			}
			if got := tally(t, p.addr, 10); got["d"] != 5 || got["a"] != 5 {
				t.Errorf("d back: %v, want a:5 d:5", got)
			}
			if n := strings.Count(p.stderr.String(), `msg="server down" server=app/d`); n != 1 {
				t.Errorf("server down logged %d times, want once", n)
			}
		})
	}
}

// unixEcho serves an echo on a Unix socket, passing the client's FIN back.
func unixEcho(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "echo.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveUnixEcho(c.(*net.UnixConn))
		}
	}()
	return path
}

func serveUnixEcho(c *net.UnixConn) {
	defer c.Close()
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// TestUnixBackend: servers on Unix sockets, from the CLI and from a
// config file, in both relay modes: bytes and half-close intact.
func TestUnixBackend(t *testing.T) {
	path := unixEcho(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			cli := startRsp(t, "-listen", "127.0.0.1:0", "-backend", "unix:"+path, "-relay", mode)
			conf := fmt.Sprintf("[global]\nrelay = %q\n[frontend.f]\nlisten = \"127.0.0.1:0\"\nbackend = \"app\"\n[backend.app.server.u]\naddress = \"unix:%s\"\n", mode, path)
			file := startRsp(t, "-config", writeConfig(t, "", conf))
			for i, p := range []*proc{cli, file} {
				var wg sync.WaitGroup
				errs := make(chan error, 8)
				for j := range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := echoThrough(p.addr, uint64(100*i+j), int64(j)<<20+int64(j)); err != nil {
							errs <- err
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Errorf("echo through %s to unix:%s: %v", []string{"CLI", "config"}[i], path, err)
				}
			}
		})
	}
}

// TestFrontendTimeouts: connect, idle and half-close timeouts set per
// frontend in the config file apply to that frontend only; [defaults]
// applies to the rest.
func TestFrontendTimeouts(t *testing.T) {
	hole := blackHole(t)
	echo := echoBackend(t)
	silent := listen(t)
	serveEach(silent, func(c *net.TCPConn) {
		defer c.Close()
		io.Copy(io.Discard, c)
		time.Sleep(10 * time.Second)
	})
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			conf := fmt.Sprintf(`[global]
relay = %q
[defaults]
connect_timeout = "1500ms"
idle_timeout = "1m"
half_close_timeout = "1m"
[frontend.conn_fast]
listen = "127.0.0.1:0"
backend = "hole"
connect_timeout = "300ms"
[frontend.conn_default]
listen = "127.0.0.1:0"
backend = "hole"
[frontend.idle_fast]
listen = "127.0.0.1:0"
backend = "echo"
idle_timeout = "500ms"
[frontend.idle_default]
listen = "127.0.0.1:0"
backend = "echo"
[frontend.half_fast]
listen = "127.0.0.1:0"
backend = "silent"
half_close_timeout = "400ms"
[frontend.half_default]
listen = "127.0.0.1:0"
backend = "silent"
[backend.hole]
retries = 0
server.h = { address = %q }
[backend.echo.server.e]
address = %q
[backend.silent.server.s]
address = %q
`, mode, hole, echo.Addr().String(), silent.Addr().String())
			p := startRsp(t, "-config", writeConfig(t, "", conf))
			addrs := map[string]string{}
			if !eventually(2*time.Second, func() bool {
				for _, m := range listeningRE.FindAllStringSubmatch(p.stderr.String(), -1) {
					addrs[m[1]] = m[2]
				}
				return len(addrs) == 6
			}) {
				t.Fatalf("want 6 frontends listening, got %v", addrs)
			}
			// Each client is opened together, then timed until rsp
			// closes it (or 3s pass).
			type result struct {
				name string
				d    time.Duration
				err  error
			}
			results := make(chan result, 6)
			start := time.Now()
			for name, addr := range addrs {
				c := dial(t, addr)
				defer c.Close()
				if strings.HasPrefix(name, "idle") {
					if err := echoOne(c, "hello"); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
				}
				if strings.HasPrefix(name, "half") {
					c.Write([]byte("request"))
					c.CloseWrite()
				}
				go func() {
					c.SetReadDeadline(start.Add(3 * time.Second))
					_, err := c.Read(make([]byte, 1))
					results <- result{name, time.Since(start), err}
				}()
			}
			want := map[string][2]time.Duration{
				"conn_fast":    {250 * time.Millisecond, 1200 * time.Millisecond},
				"conn_default": {1400 * time.Millisecond, 2900 * time.Millisecond},
				"idle_fast":    {400 * time.Millisecond, 2 * time.Second},
				"half_fast":    {350 * time.Millisecond, 2 * time.Second},
			}
			for range 6 {
				r := <-results
				w, closes := want[r.name]
				switch {
				case !closes:
					if ne, ok := r.err.(net.Error); !ok || !ne.Timeout() {
						t.Errorf("%s: closed after %v (%v); its timeouts are the 1m defaults", r.name, r.d, r.err)
					}
				case r.err != io.EOF && !isReset(r.err):
					t.Errorf("%s: read = %v after %v, want closed by rsp", r.name, r.err, r.d)
				case r.d < w[0] || r.d > w[1]:
					t.Errorf("%s: closed after %v, want %v..%v", r.name, r.d, w[0], w[1])
				default:
					t.Logf("%s: closed after %v", r.name, r.d.Round(time.Millisecond))
				}
			}
		})
	}
}

// TestReloadManyConnections: 32 paced echo streams on a frontend run
// while reloads change its backend's servers and weights, then remove the
// frontend altogether: every stream completes byte-exact, and the removed
// frontend no longer accepts.
func TestReloadManyConnections(t *testing.T) {
	e1, e2 := echoBackend(t), echoBackend(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			a := newIDServer(t, "a")
			base := fmt.Sprintf("[global]\nrelay = %q\n[frontend.keep]\nlisten = \"127.0.0.1:0\"\nbackend = \"id\"\n", mode) +
				servers("id", []*idServer{a}, nil)
			streams := fmt.Sprintf("[frontend.streams]\nlisten = \"127.0.0.4:0\"\nbackend = \"echo\"\n[backend.echo.server.e1]\naddress = %q\n", e1.Addr().String())
			path := writeConfig(t, "", base+streams)
			p := startRsp(t, "-config", path)
			sAddr := listeningOn(p, "streams")
			if sAddr == "" {
				t.Fatalf("frontend streams not listening:\n%s", p.stderr.String())
			}
			const n, size = 32, 12 << 20
			var wg sync.WaitGroup
			var mu sync.Mutex
			done, failed := 0, []error{}
			for i := range n {
				c := dial(t, sAddr)
				defer c.Close()
				if err := echoOne(c, "x"); err != nil {
					t.Fatalf("stream %d before reloads: %v", i, err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := echoPaced(c, uint64(1000+i), size, 256<<10, 40*time.Millisecond)
					mu.Lock()
					defer mu.Unlock()
					done++
					if err != nil {
						failed = append(failed, fmt.Errorf("stream %d: %w", i, err))
					}
				}()
			}
			mu.Lock()
			if done != 0 {
				t.Fatalf("%d streams ended before the first reload: the test proves nothing", done)
			}
			mu.Unlock()
			both := fmt.Sprintf("%s[backend.echo.server.e2]\naddress = %q\nweight = 3\n", streams, e2.Addr().String())
			reloadConfig(t, p, path, base+both)
			reloadConfig(t, p, path, base+strings.Replace(streams, e1.Addr().String(), e2.Addr().String(), 1))
			reloadConfig(t, p, path, base) // frontend streams removed
			mu.Lock()
			running := n - done
			mu.Unlock()
			if running < n/2 {
				t.Errorf("only %d of %d streams still running after the reloads: the test proves little", running, n)
			}
			if c, err := net.DialTimeout("tcp", sAddr, time.Second); err == nil {
				c.Close()
				t.Errorf("removed frontend still accepts on %s", sAddr)
			}
			if name, c := which(t, p.addr, ""); name != "a" {
				t.Errorf("kept frontend served by %q after the reloads", name)
			} else {
				c.Close()
			}
			wg.Wait()
			for _, err := range failed {
				t.Error(err)
			}
			if len(failed) == 0 {
				t.Logf("%d streams of %d MiB each intact across 3 reloads (%d still running at the last)", n, size>>20, running)
			}
		})
	}
}
