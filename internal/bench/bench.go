// Package bench measures rsp on loopback against direct connections (the
// physical limit) and a plain Go io.Copy proxy, in one run and side by
// side. Every proxy runs as its own process, and its CPU time, memory and
// fds are read from /proc, not from the proxy's own say-so.
package bench

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options says what to measure and how hard.
type Options struct {
	Rsp       string    // path of the rsp binary (the helpers are its hidden subcommands)
	Quick     bool      // smaller transfers and connection counts
	Runs      int       // repetitions of each throughput figure; 0 means 3
	IdleConns int       // idle connections for the memory figure; 0 means 5000 (1000 quick)
	MaxConns  int       // cap of the concurrency probe; 0 means 9990
	Log       io.Writer // progress lines; nil discards
}

// Contender is one way of carrying the connections.
type Contender struct {
	Name string
	// start runs the proxy in front of backend and returns it; nil for
	// direct connections.
	start func(o *Options, backend, listenHost string) (*process, error)
}

// Contenders returns direct loopback, rsp splice, rsp copy and the plain Go
// io.Copy proxy.
func Contenders() []Contender {
	return []Contender{
		{Name: "direct"},
		{Name: "rsp splice", start: rspStarter("splice")},
		{Name: "rsp copy", start: rspStarter("copy")},
		{Name: "Go io.Copy proxy", start: startIOCopy},
	}
}

// Result is one measured figure of one contender.
type Result struct {
	Workload  string
	Contender string
	Unit      string
	Values    []float64 // one per run
	Note      string    // what went wrong, if the workload could not complete
}

// Median of the runs.
func (r Result) Median() float64 {
	v := slices.Clone(r.Values)
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func (o *Options) logf(format string, a ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", a...)
	}
}

func (o *Options) runs() int {
	if o.Runs > 0 {
		return o.Runs
	}
	return 3
}

// Run measures every contender and returns the results in order.
func Run(o *Options) ([]Result, error) {
	var out []Result
	backend, echo, sink, err := startBackend(o)
	if err != nil {
		return nil, err
	}
	defer backend.stop()
	size := int64(4 << 30)
	if o.Quick {
		size = 1 << 30
	}
	hostN := 2 // each proxy listens on its own 127.0.0.N: fresh ephemeral ports
	for _, c := range Contenders() {
		o.logf("throughput, 1 stream: %s", c.Name)
		tp := Result{Workload: fmt.Sprintf("throughput, 1 stream, %d GiB", size>>30), Contender: c.Name, Unit: "Gbit/s"}
		cpu := Result{Workload: "proxy CPU per GiB, 1 stream", Contender: c.Name, Unit: "s/GiB"}
		p, addr, err := c.launch(o, sink, hostN)
		hostN++
		if err != nil {
			return out, err
		}
		for range o.runs() {
			before, _ := p.cpu()
			d, err := throughput(addr, size)
			if err != nil {
				p.stop()
				return out, fmt.Errorf("%s throughput: %w", c.Name, err)
			}
			after, _ := p.cpu()
			tp.Values = append(tp.Values, float64(size*8)/d.Seconds()/1e9)
			if p != nil {
				cpu.Values = append(cpu.Values, (after-before).Seconds()/float64(size>>30))
			}
		}
		p.stop()
		out = append(out, tp)
		if c.start != nil {
			out = append(out, cpu)
		}
	}
	n := o.IdleConns
	if n == 0 {
		n = 5000
		if o.Quick {
			n = 1000
		}
	}
	for _, c := range Contenders() {
		if c.start == nil {
			continue
		}
		o.logf("idle connections (%d): %s", n, c.Name)
		p, addr, err := c.launch(o, echo, hostN)
		hostN++
		if err != nil {
			return out, err
		}
		rss, fds, got, err := idle(p, addr, n)
		p.stop()
		note := ""
		if err != nil {
			if got == 0 {
				return out, fmt.Errorf("%s idle: %w", c.Name, err)
			}
			note = fmt.Sprintf("only %d of %d connections worked: %v", got, n, err)
			o.logf("  %s", note)
		}
		out = append(out,
			Result{Workload: fmt.Sprintf("RSS per idle connection (%d)", n), Contender: c.Name, Unit: "KiB", Values: []float64{rss}, Note: note},
			Result{Workload: fmt.Sprintf("fds per idle connection (%d)", n), Contender: c.Name, Unit: "fds", Values: []float64{fds}, Note: note})
	}
	maxN := o.MaxConns
	if maxN == 0 {
		maxN = 9990
	}
	if !o.Quick {
		for _, c := range Contenders()[1:2] { // rsp splice: the 20,000-fd claim
			o.logf("concurrent connections (up to %d): %s", maxN, c.Name)
			p, addr, err := c.launch(o, echo, hostN)
			hostN++
			if err != nil {
				return out, err
			}
			conns, err := openEchoed(addr, maxN, hostN)
			hostN++
			got := len(conns)
			fdsNow, _ := p.fds()
			closeAll(conns)
			p.stop()
			o.logf("  reached %d connections, rsp holding %d fds; stopped by: %v", got, fdsNow, err)
			out = append(out, Result{Workload: fmt.Sprintf("concurrent connections (cap %d)", maxN), Contender: c.Name, Unit: "conns", Values: []float64{float64(got)}})
		}
	}
	return out, nil
}

// launch starts the contender in front of backend, listening on
// 127.0.0.hostN. Direct returns a nil process and backend itself.
func (c Contender) launch(o *Options, backend string, hostN int) (*process, string, error) {
	if c.start == nil {
		return nil, backend, nil
	}
	p, err := c.start(o, backend, fmt.Sprintf("127.0.0.%d", hostN))
	if err != nil {
		return nil, "", fmt.Errorf("start %s: %w", c.Name, err)
	}
	return p, p.addr, nil
}

// throughput sends size bytes through addr to the sink and returns the
// time until the sink confirmed the full count.
func throughput(addr string, size int64) (time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	buf := make([]byte, 1<<20)
	start := time.Now()
	for left := size; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		w, err := c.Write(buf[:n])
		if err != nil {
			return 0, err
		}
		left -= int64(w)
	}
	c.(*net.TCPConn).CloseWrite()
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, fmt.Errorf("sink count: %w", err)
	}
	d := time.Since(start)
	if got := int64(binary.BigEndian.Uint64(b[:])); got != size {
		return 0, fmt.Errorf("sink received %d bytes, sent %d", got, size)
	}
	return d, nil
}

// idle opens n connections through addr, each exchanging 16 bytes, and
// returns the proxy's RSS (KiB) and fds per connection while they idle,
// over the connections that worked (got); err says why any failed.
func idle(p *process, addr string, n int) (rssPer, fdsPer float64, got int, err error) {
	warm, err := openEchoed(addr, 1, 0)
	if err != nil {
		return 0, 0, 0, err
	}
	closeAll(warm)
	time.Sleep(200 * time.Millisecond)
	rss0, err := p.rss()
	if err != nil {
		return 0, 0, 0, err
	}
	fds0, _ := p.fds()
	conns, err := openEchoed(addr, n, 0)
	defer closeAll(conns)
	if len(conns) == 0 {
		return 0, 0, 0, err
	}
	time.Sleep(500 * time.Millisecond)
	rss1, _ := p.rss()
	fds1, _ := p.fds()
	k := float64(len(conns))
	return float64(rss1-rss0) / k, float64(fds1-fds0) / k, len(conns), err
}

// openEchoed opens n connections that each echo 16 bytes, 64 at a time.
// With srcHost > 0 it binds client sockets to 127.0.0.srcHost.. in turn.
// It returns the connections that worked, and an error if any failed.
func openEchoed(addr string, n, srcHost int) ([]net.Conn, error) {
	var (
		mu    sync.Mutex
		conns = make([]net.Conn, 0, n)
		first error
		wg    sync.WaitGroup
		sem   = make(chan struct{}, 64)
	)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d := net.Dialer{Timeout: 3 * time.Second}
			if srcHost > 0 {
				d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, byte(1+i/5000), byte(srcHost))}
			}
			c, err := echoOnce(d, addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			conns = append(conns, c)
		}()
		mu.Lock()
		stop := first != nil
		mu.Unlock()
		if stop {
			break
		}
	}
	wg.Wait()
	return conns, first
}

func echoOnce(d net.Dialer, addr string) (net.Conn, error) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	msg := []byte("0123456789abcdef")
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(msg); err != nil {
		c.Close()
		return nil, err
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(c, back); err != nil {
		c.Close()
		return nil, fmt.Errorf("echo: %w", err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// process is a helper or proxy process started by the benchmark.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
	done  chan struct{}
}

// cpu returns the process's user+system CPU time so far.
func (p *process) cpu() (time.Duration, error) {
	if p == nil {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (USER_HZ = 100).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
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
func (p *process) fds() (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	return len(ents), err
}

// stop ends the process (SIGTERM, then SIGKILL after 5 s) and reaps it.
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
}

// spawn starts the rsp binary with args; the address is found by re in
// stdout or stderr.
func spawn(o *Options, re *regexp.Regexp, fromStderr bool, args ...string) (*process, error) {
	cmd := exec.Command(o.Rsp, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	var pipe io.ReadCloser
	if fromStderr {
		pipe, err = cmd.StderrPipe()
	} else {
		pipe, err = cmd.StdoutPipe()
	}
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	found := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		sent := false
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m
				sent = true
			}
		}
		close(found)
	}()
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	select {
	case m, ok := <-found:
		if !ok {
			p.stop()
			return nil, fmt.Errorf("%v exited without announcing its address", args)
		}
		p.addr = m[1]
		return p, nil
	case <-time.After(10 * time.Second):
		p.stop()
		return nil, fmt.Errorf("%v announced no address within 10s", args)
	}
}

var (
	rspStartRE = regexp.MustCompile(`msg="rsp started".* listen=(\S+)`)
	listenRE   = regexp.MustCompile(`^listen=(\S+)`)
	backendRE  = regexp.MustCompile(`^echo=(\S+) sink=(\S+)`)
)

func rspStarter(mode string) func(*Options, string, string) (*process, error) {
	return func(o *Options, backend, host string) (*process, error) {
		return spawn(o, rspStartRE, true, "-listen", host+":0", "-backend", backend, "-relay", mode, "-idle-timeout", "0")
	}
}

func startIOCopy(o *Options, backend, host string) (*process, error) {
	return spawn(o, listenRE, false, "bench-iocopy", "-listen", host+":0", "-backend", backend)
}

func startBackend(o *Options) (p *process, echo, sink string, err error) {
	cmd := exec.Command(o.Rsp, "bench-backend")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", "", err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", "", err
	}
	p = &process{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	line, err := readAnnounce(out)
	m := backendRE.FindStringSubmatch(strings.TrimSpace(line))
	if err != nil || m == nil {
		p.stop()
		return nil, "", "", fmt.Errorf("bench backend: %q %v", line, err)
	}
	return p, m[1], m[2], nil
}

// Markdown renders results as a table with each figure's median, spread
// and ratio to direct (where direct has the same workload).
func Markdown(results []Result) string {
	direct := map[string]float64{}
	for _, r := range results {
		if r.Contender == "direct" {
			direct[r.Workload] = r.Median()
		}
	}
	var b strings.Builder
	b.WriteString("| workload | contender | median | runs (min–max) | × direct |\n|---|---|---|---|---|\n")
	for _, r := range results {
		lo, hi := slices.Min(r.Values), slices.Max(r.Values)
		ratio := ""
		if d, ok := direct[r.Workload]; ok && d > 0 {
			ratio = fmt.Sprintf("%.2f", r.Median()/d)
		}
		note := ""
		if r.Note != "" {
			note = " — " + r.Note
		}
		fmt.Fprintf(&b, "| %s | %s | %s %s%s | %d (%s–%s) | %s |\n", r.Workload, r.Contender, num(r.Median()), r.Unit, note, len(r.Values), num(lo), num(hi), ratio)
	}
	return b.String()
}

// num formats a figure with three significant digits, whole numbers from
// 1000 up.
func num(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}
