package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is a helper or proxy started by the benchmark. Figures about it
// come from /proc, never from the process itself.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
	done  chan struct{}
	dir   string // scratch directory removed on stop, if any
	after func() // called once stopped, if set
}

// start runs cmd and waits until re matches a line of its stdout (or
// stderr); the first submatch is the process's address. With re nil the
// process is ready at once and addr is used.
func start(cmd *exec.Cmd, re *regexp.Regexp, fromStderr bool) (*process, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	var out io.ReadCloser
	if re != nil {
		if fromStderr {
			out, err = cmd.StderrPipe()
		} else {
			out, err = cmd.StdoutPipe()
		}
		if err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	if re == nil {
		return p, nil
	}
	found := make(chan string, 1)
	go scanFor(out, re, found)
	select {
	case m, ok := <-found:
		if !ok {
			p.stop()
			return nil, fmt.Errorf("%s exited without announcing its address", cmd.Path)
		}
		p.addr = m
		return p, nil
	case <-time.After(10 * time.Second):
		p.stop()
		return nil, fmt.Errorf("%s announced no address within 10s", cmd.Path)
	}
}

// scanFor sends the first submatch of re in r, then drains r.
func scanFor(r io.Reader, re *regexp.Regexp, found chan<- string) {
	sc := bufio.NewScanner(r)
	sent := false
	for sc.Scan() {
		if sent {
			continue
		}
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			found <- m[1]
			sent = true
		}
	}
	if !sent {
		close(found)
	}
}

// cpuTimes is CPU time spent so far, split into user and kernel time.
type cpuTimes struct{ user, sys time.Duration }

// sub returns t minus an earlier reading.
func (t cpuTimes) sub(before cpuTimes) cpuTimes {
	return cpuTimes{t.user - before.user, t.sys - before.sys}
}

// cpuTimes returns the process's CPU time so far; zero for nil.
func (p *process) cpuTimes() cpuTimes {
	if p == nil {
		return cpuTimes{}
	}
	return cpuOf(strconv.Itoa(p.cmd.Process.Pid))
}

// cpuOf reads the CPU time of process pid ("self" for this one) from
// /proc; zero if it cannot.
func cpuOf(pid string) cpuTimes {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return cpuTimes{}
	}
	// utime and stime are fields 14 and 15 of the line, in clock ticks
	// (USER_HZ, 100 on Linux); the command name before them may hold
	// spaces, so count from its closing parenthesis.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return cpuTimes{}
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return cpuTimes{time.Duration(ut) * 10 * time.Millisecond, time.Duration(st) * 10 * time.Millisecond}
}

// rss returns the process's resident set in KiB.
func (p *process) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

// fds returns how many fds the process holds.
func (p *process) fds() int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	return len(ents)
}

// stop ends the process (stdin closed and SIGTERM, SIGKILL after 5 s),
// reaps it and removes its scratch directory.
func (p *process) stop() {
	if p == nil {
		return
	}
	if p.stdin != nil {
		p.stdin.Close()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	if p.dir != "" {
		os.RemoveAll(p.dir)
	}
	if p.after != nil {
		p.after()
	}
}
