package tests

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestPipeBudgetAsNobody: the built binary, run as an unprivileged user
// (as the packaged unit's DynamicUser= runs it), sizes its pipes against
// the kernel's per-user budget (fs.pipe-user-pages-soft). With more
// streams waiting on a backend that reads nothing than the budget holds
// at 1 MiB a pipe, it reports the budget (¾ of the soft limit), and its
// pipes reach past half of it (the budget is tight: reads are sized to
// the destination, blocked pipes parked) but stay within it rather than
// running into the kernel's limit, past which every new pipe would get
// 8 KiB. Pipes made small are counted and said once, and every stream
// arrives whole once the backend reads.
func TestPipeBudgetAsNobody(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run rsp as an unprivileged user")
	}
	raw, err := os.ReadFile("/proc/sys/fs/pipe-user-pages-soft")
	if err != nil {
		t.Skipf("no fs.pipe-user-pages-soft: %v", err)
	}
	soft, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || soft <= 0 || soft > 32768 {
		t.Skipf("fs.pipe-user-pages-soft is %q: this test needs a budget that a few dozen streams exceed", raw)
	}
	budget := soft * 3 / 4
	// More streams than the budget holds 1 MiB (256-page) pipes, each
	// with more bytes than the sockets along the path hold.
	streams := soft/256 + 16
	const size = 8 << 20

	release := make(chan struct{})
	backend := listen(t)
	serveEach(backend, func(c *net.TCPConn) {
		defer c.Close()
		<-release
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if d, err := receive(c); err == nil {
			c.Write(d.sum[:])
		}
	})

	cmd := exec.Command(rspBin, "-listen", "127.0.0.1:0", "-backend", backend.Addr().String(),
		"-idle-timeout", "0", "-metrics", "127.0.0.1:0", "-log-level", "info")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	p := launch(t, cmd)
	p.waitStarted()
	maddr := metricsAddr(t, p)

	var wg sync.WaitGroup
	errs := make(chan error, streams)
	sent := make(chan struct{}, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- budgetStream(p.addr, uint64(1000+i), size, sent)
		}()
	}
	// Sample the pages rsp's pipes hold while every stream waits on the
	// backend, for at most 20 s, until all are sent or the pages stop
	// growing for a second.
	most, last, still := 0.0, 0.0, 0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && len(sent) < streams && still < 50; {
		m := scrapeMetrics(t, maddr)
		held := m["rsp_pipe_pages"]
		most = max(most, held)
		if held > last {
			still = 0
		} else {
			still++
		}
		last = held
		time.Sleep(20 * time.Millisecond)
	}
	m := scrapeMetrics(t, maddr)
	most = max(most, m["rsp_pipe_pages"])
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	if got := m["rsp_pipe_budget_pages"]; got != float64(budget) {
		t.Errorf("rsp_pipe_budget_pages is %v as uid 65534; want ¾ of fs.pipe-user-pages-soft %d: %d", got, soft, budget)
	}
	// Two loops may each size a pipe at once: a sixteenth of the budget
	// each beyond it at most. Without the budget rsp would run into the
	// kernel's limit (soft, a third more).
	if limit := float64(budget + budget/8); most > limit {
		t.Errorf("rsp's pipes held %v pages at most with %d streams stalled; the budget is %d (at most %v with two loops sizing at once), the kernel's limit %d",
			most, streams, budget, limit, soft)
	}
	if most < float64(budget)/2 {
		t.Errorf("rsp's pipes held %v pages at most with %d streams of %d MiB stalled: the budget (%d) was never tight, so this test proved nothing", most, streams, size>>20, budget)
	}
	// Pipes made small are counted, and said once.
	end := scrapeMetrics(t, maddr)
	small := end["rsp_pipes_small_total"]
	warned := strings.Count(p.stderr.String(), "pipes made smaller than pipe_size to stay within the user's pipe budget")
	if small > 0 && warned != 1 || small == 0 && warned != 0 {
		t.Errorf("%v pipes made small, and the budget's warning logged %d times; want once if any", small, warned)
	}
	t.Logf("%d streams of %d MiB as uid 65534, soft limit %d pages: budget %v, most held %v, %v pipes made small",
		streams, size>>20, soft, m["rsp_pipe_budget_pages"], most, small)
}

// budgetStream sends size bytes of the stream seed through rsp at addr,
// half-closes, signals sent, and checks the backend's SHA-256 of what it
// read against the bytes sent.
func budgetStream(addr string, seed uint64, size int64, sent chan<- struct{}) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("stream %d: %w", seed, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(90 * time.Second))
	d, err := send(c, seed, size)
	sent <- struct{}{}
	if err != nil {
		return fmt.Errorf("stream %d: sent %d bytes: %w", seed, d.n, err)
	}
	c.(*net.TCPConn).CloseWrite()
	sum := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, sum); err != nil {
		return fmt.Errorf("stream %d: no digest back: %w", seed, err)
	}
	if string(sum) != string(d.sum[:]) {
		return fmt.Errorf("stream %d: the backend read other bytes than the %d sent", seed, size)
	}
	return nil
}

// TestBenchAsDeployed: `rsp bench -user nobody -proxy-cpus 0 -load-cpus 1`
// through the built binary runs the proxy it measures as uid 65534 and
// pinned to CPU 0 (read from /proc while it runs), takes -rounds turns,
// and writes figures for the workloads of the deployed case: many
// streams, the server closing first, and wrk and iperf3 where installed.
func TestBenchAsDeployed(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run the proxies as an unprivileged user")
	}
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs, to pin the proxy apart from the load")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "bench.md")
	cmd := exec.Command(rspBin, "bench", "-quick", "-runs", "1", "-rounds", "2", "-only", "rsp splice",
		"-workloads", "download,128 streams,server closes,wrk,iperf3", "-user", "nobody", "-proxy-cpus", "0", "-load-cpus", "1",
		"-out", out, "-chart", filepath.Join(dir, "bench.svg"))
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	seen := map[string]bool{} // "uid CPUs" of each proxy seen
	var err error
	deadline := time.Now().Add(3 * time.Minute)
	for running := true; running; {
		for _, s := range proxyChildren(cmd.Process.Pid) {
			seen[s] = true
		}
		select {
		case err = <-done:
			running = false
		case <-time.After(20 * time.Millisecond):
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				<-done
				t.Fatalf("rsp bench did not finish within 3 minutes:\n%s", stderr.String())
			}
		}
	}
	if err != nil {
		t.Fatalf("rsp bench: %v\n%s", err, stderr.String())
	}
	if len(seen) != 1 || !seen["uid 65534, CPUs 0"] {
		t.Errorf("proxies seen running as %v; want only \"uid 65534, CPUs 0\"", seen)
	}
	md, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// The workloads of the deployed case, and the external loads where
	// installed, each a figure over the two rounds.
	rows := []string{"download, 1 stream", "upload, 128 streams", "HTTP/1.1 Connection: close, server closes first, 16 clients"}
	if _, err := exec.LookPath("wrk"); err == nil {
		rows = append(rows, "wrk: HTTP/1.1 Connection: close, 16 conns")
	}
	if _, err := exec.LookPath("iperf3"); err == nil {
		rows = append(rows, "iperf3: 8 streams")
	}
	for _, row := range rows {
		if !regexp.MustCompile(`\| ` + regexp.QuoteMeta(row) + ` \| rsp splice \| [0-9.]+ \S+ \| 2: `).Match(md) {
			t.Errorf("no figure of rsp splice for %q over two rounds in the table:\n%s", row, md)
		}
	}
}

// proxyChildren returns "uid U, CPUs L" for each child of pid running in
// relay mode (a proxy the benchmark started).
func proxyChildren(pid int) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fields, err := procStatus(child)
		if err != nil {
			continue
		}
		if fields["PPid"] != strconv.Itoa(pid) {
			continue
		}
		// Not taskset before it execs the proxy: rsp itself.
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if filepath.Base(argv0) != "rsp" || !strings.Contains(string(cmdline), "-relay\x00splice") {
			continue
		}
		uid, _, _ := strings.Cut(fields["Uid"], "\t")
		out = append(out, fmt.Sprintf("uid %s, CPUs %s", uid, fields["Cpus_allowed_list"]))
	}
	return out
}
