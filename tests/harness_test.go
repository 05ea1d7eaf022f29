// Package tests drives the built rsp binary over loopback: every test here
// starts real rsp processes and checks the bytes that cross them.
package tests

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rspBin is the rsp binary built once for the whole test run.
var rspBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rsp-tests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Other users (the permission test runs rsp as nobody) must reach it.
	os.Chmod(dir, 0o755)
	rspBin = filepath.Join(dir, "rsp")
	// The rsptest tag adds test seams that only act when their
	// environment variable is set (internal/splice/hooks_rsptest.go).
	buildArgs := []string{"build", "-tags", "rsptest", "-o", rspBin}
	if os.Getenv("RSP_RACE") != "" {
		buildArgs = append(buildArgs, "-race") // rsp itself under the race detector
	}
	build := exec.Command("go", append(buildArgs, "../cmd/rsp")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build rsp:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output safely across goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is an rsp process started by a test.
type proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	addr   string // first listen address from the start log line
	done   chan struct{}
	err    error // Wait's result, valid after done
}

var listenRE = regexp.MustCompile(`msg="rsp started".* listen=(\S+)`)

// startRsp runs rsp with args and waits for its start line. The process
// is killed (by its PID) when the test ends if still running.
func startRsp(t testing.TB, args ...string) *proc {
	t.Helper()
	p := launch(t, exec.Command(rspBin, args...))
	p.waitStarted()
	return p
}

// launch starts cmd with output captured and cleanup registered.
func launch(t testing.TB, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, stderr: &syncBuffer{}, stdout: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	cmd.Stdout = p.stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in rsp")
		}
		if t.Failed() {
			t.Logf("rsp stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

func (p *proc) waitStarted() {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := listenRE.FindStringSubmatch(p.stderr.String()); m != nil {
			p.addr = strings.Split(m[1], ",")[0]
			return
		}
		select {
		case <-p.done:
			p.t.Fatalf("rsp exited before starting (%v):\n%s", p.err, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	p.t.Fatalf("rsp did not start within 10s:\n%s", p.stderr.String())
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// signal sends sig to the rsp process.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("rsp did not exit within %v:\n%s", d, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

var statsRE = regexp.MustCompile(`msg=stats active=(\d+) accepted=(\d+) .*pipes=(\d+) idle_pipes=(\d+) goroutines=(\d+) fds=(\d+)`)

// stats is what rsp logs on SIGUSR1, with its open fds as the kernel
// lists them in /proc/PID/fd.
// selfFDs is rsp's own count, taken at the same moment as the others.
type stats struct{ active, accepted, pipes, idlePipes, goroutines, fds, selfFDs int }

// stats asks rsp for its counters (SIGUSR1) and parses the log line.
func (p *proc) stats() stats {
	p.t.Helper()
	s, err := p.tryStats()
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

// tryStats is stats for callers that cannot stop the test (other
// goroutines than the test's own): it returns what went wrong instead.
func (p *proc) tryStats() (stats, error) {
	before := len(statsRE.FindAllString(p.stderr.String(), -1))
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return stats{}, fmt.Errorf("signal %v: %w", syscall.SIGUSR1, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		all := statsRE.FindAllStringSubmatch(p.stderr.String(), -1)
		if len(all) > before {
			m := all[len(all)-1]
			n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
			// fds from the kernel, not from rsp's own count.
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid()))
			if err != nil {
				return stats{}, fmt.Errorf("read rsp's fds: %w", err)
			}
			return stats{active: n(1), accepted: n(2), pipes: n(3), idlePipes: n(4), goroutines: n(5), fds: len(ents), selfFDs: n(6)}, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return stats{}, fmt.Errorf("no stats line after SIGUSR1:\n%s", p.stderr.String())
}

// eventually polls cond every 20ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stream is a reproducible byte stream: the same seed always gives the
// same bytes, so either end can know what it should receive.
type stream struct {
	r *rand.ChaCha8
}

func newStream(seed uint64) *stream {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return &stream{r: rand.NewChaCha8(s)}
}

func (s *stream) Read(p []byte) (int, error) { return s.r.Read(p) }

// digest is the length and SHA-256 of a byte stream.
type digest struct {
	n   int64
	sum [32]byte
}

func (d digest) String() string { return fmt.Sprintf("%d bytes sha256 %x", d.n, d.sum[:6]) }

// expected returns the digest of n bytes of the stream with seed.
func expected(seed uint64, n int64) digest {
	h := sha256.New()
	m, _ := io.CopyN(h, newStream(seed), n)
	var d digest
	d.n = m
	copy(d.sum[:], h.Sum(nil))
	return d
}

// send writes n bytes of the seeded stream to w and returns their digest.
func send(w io.Writer, seed uint64, n int64) (digest, error) {
	h := sha256.New()
	m, err := io.CopyBuffer(io.MultiWriter(w, h), io.LimitReader(newStream(seed), n), make([]byte, 256<<10))
	var d digest
	d.n = m
	copy(d.sum[:], h.Sum(nil))
	return d, err
}

// receive reads r to EOF and returns the digest of what came.
func receive(r io.Reader) (digest, error) {
	h := sha256.New()
	m, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	var d digest
	d.n = m
	copy(d.sum[:], h.Sum(nil))
	return d, err
}

// listen opens a loopback listener closed at the end of the test.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveEach accepts on ln and runs handle for each connection until ln
// closes.
func serveEach(ln net.Listener, handle func(*net.TCPConn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c.(*net.TCPConn))
		}
	}()
}

// echoBackend echoes each connection: what a client sends comes back, and
// the client's FIN is passed back as our FIN once all is echoed.
func echoBackend(t testing.TB) net.Listener {
	ln := listen(t)
	serveEach(ln, func(c *net.TCPConn) {
		defer c.Close()
		if _, err := io.Copy(c, c); err == nil {
			c.CloseWrite()
			io.Copy(io.Discard, c)
		}
	})
	return ln
}

// dial connects to addr over TCP.
func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return c.(*net.TCPConn)
}

// readLine reads one line from c with a deadline.
func readLine(c net.Conn, d time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	return bufio.NewReader(c).ReadString('\n')
}
