//go:build linux

package splice

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a log destination for several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// echoErr is echo for other goroutines: it returns what went wrong.
func echoErr(addr string, n int, seed uint64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	data := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(data)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- b
	}()
	if _, err := c.Write(data); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	back := <-got
	if len(back) != n || sha256.Sum256(back) != sha256.Sum256(data) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes, equal=%v", n, len(back), bytes.Equal(back, data))
	}
	return nil
}

// TestPipeBudget: under a user's pipe budget (fs.pipe-user-pages-soft, as
// the packaged unit's unprivileged user has), many concurrent streams
// share it: rsp's pipes never hold more pages than the limit, new pipes
// are made smaller than asked once it is tight (and counted), every
// stream still arrives whole, and once they end no pipe is counted busy.
func TestPipeBudget(t *testing.T) {
	const soft = 1024 // pages: 4 MiB, four 1 MiB pipes' worth
	be := startEcho(t)
	logs := &lockedBuffer{}
	r := &Relay{Loops: 2, test: testHooks{pipeBudget: soft}, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	addr := startRelay(t, r, be.Addr())
	e := r.impl.(*spliceEngine)
	var most int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			most = max(most, e.budget.held.Load())
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	const streams = 24
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoErr(addr, 8<<20, uint64(i)); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitIdle(t, r)
	if most > soft {
		t.Errorf("rsp's pipes held %d pages at most; the budget is %d", most, soft)
	}
	if n := e.budget.small.Load(); n == 0 {
		t.Errorf("no pipe was made smaller than 1 MiB with %d streams in a budget of four 1 MiB pipes", streams)
	}
	if n := e.budget.busy.Load(); n != 0 {
		t.Errorf("%d pipes counted in use once every stream ended", n)
	}
	snap := r.Snapshot(time.Second)
	if snap.PipeBudget != soft*3/4 || snap.SmallPipes == 0 {
		t.Errorf("snapshot says budget %d pages, %d small pipes; want %d and some", snap.PipeBudget, snap.SmallPipes, soft*3/4)
	}
	if n := strings.Count(logs.String(), "pipes made smaller than pipe_size"); n != 1 {
		t.Errorf("the budget's warning was logged %d times; want once:\n%s", n, logs.String())
	}
	t.Logf("%d streams under a budget of %d pages: %d pages held at most, %d pipes made small", streams, soft, most, e.budget.small.Load())
}
