package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpuTime returns the user+system CPU time of pid so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// echoOne sends a line on c and checks that it comes back.
func echoOne(c net.Conn, msg string) error {
	return echoWithin(c, msg, 3*time.Second)
}

// echoWithin writes msg to c and reads it back within d.
func echoWithin(c net.Conn, msg string, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(c, back); err != nil {
		return err
	}
	if string(back) != msg {
		return fmt.Errorf("echo %q, want %q", back, msg)
	}
	return nil
}

// TestFDExhaustion: with a low fd limit, accepting hits EMFILE. rsp keeps
// serving the connections it has, logs the condition at most once a
// second, does not spin, and serves the waiting client once fds free up.
func TestFDExhaustion(t *testing.T) {
	backend := echoBackend(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			p := startFDLimited(t, backend.Addr().String(), mode)
			// Open connections until one is not served.
			var held []net.Conn
			defer func() { closeAll(held) }()
			refused := false
			for i := 0; i < 40 && !refused; i++ {
				c := dialOrReset(t, p.addr)
				if c == nil {
					refused = true
					break
				}
				if err := echoOne(c, "hello\n"); err != nil {
					c.Close()
					refused = true
					break
				}
				held = append(held, c)
			}
			if !refused {
				t.Fatalf("40 connections served under ulimit -n 48: the limit did not bite")
			}
			// Live connections keep working, without a busy loop.
			cpu0 := cpuTime(t, p.pid())
			start := time.Now()
			for i := range 10 {
				if err := echoOne(held[i%len(held)], "still here\n"); err != nil {
					t.Fatalf("live connection failed while fds were exhausted: %v", err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if used := cpuTime(t, p.pid()) - cpu0; used > 500*time.Millisecond {
				t.Fatalf("rsp used %v of CPU in 2s while out of fds: spinning", used)
			}
			elapsed := time.Since(start) + 3*time.Second // the echo timeout of the refused client
			if n := strings.Count(p.stderr.String(), "too many open files"); n == 0 || n > int(elapsed/time.Second)+1 {
				t.Fatalf("EMFILE logged %d times in %v, want at most once a second:\n%s", n, elapsed, p.stderr.String())
			}
			// Free fds: new clients are served again.
			closeAll(held[:4])
			held = held[4:]
			if !eventually(5*time.Second, func() bool {
				c, err := net.DialTimeout("tcp", p.addr, time.Second)
				if err != nil {
					return false
				}
				defer c.Close()
				return echoOne(c, "back\n") == nil
			}) {
				t.Fatalf("no client served after fds were freed:\n%s", p.stderr.String())
			}
		})
	}
}

// startFDLimited starts rsp in front of backend under ulimit -n 48, so
// that a few dozen connections exhaust its file descriptors.
func startFDLimited(t *testing.T, backend, mode string) *proc {
	t.Helper()
	p := launch(t, exec.Command("/bin/sh", "-c", `ulimit -n 48 && exec "$@"`, "sh",
		rspBin, "-listen", "127.0.0.1:0", "-backend", backend, "-relay", mode))
	p.waitStarted()
	return p
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
