package connlog

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"rsp/internal/splice"
)

// lockedBuffer is a bytes.Buffer safe for the batch's timer goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	n  int // writes
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestLogger(mode Mode, sample float64) (*Logger, *lockedBuffer) {
	out := &lockedBuffer{}
	l := NewBatched(out, func(w Writer) slog.Handler { return slog.NewTextHandler(w, nil) }, mode, sample)
	return l, out
}

func info(id uint64, cause splice.Cause) *splice.ConnInfo {
	return &splice.ConnInfo{
		ID: id, Frontend: "web", Backend: "app", Server: "app/a", ServerAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9},
		Client: netip.MustParseAddrPort("192.0.2.1:4000"), BytesIn: 10, BytesOut: 20,
		Connect: 1500 * time.Microsecond, Duration: 2 * time.Second, Tries: 1, Cause: cause,
	}
}

func TestModes(t *testing.T) {
	for _, c := range []struct {
		mode        Mode
		clean, errs int
	}{{All, 1, 1}, {Errors, 0, 1}, {Off, 0, 0}} {
		l, out := newTestLogger(c.mode, 1)
		l.Log(info(1, splice.CauseClientClose))
		bad := info(2, splice.CauseServerReset)
		bad.Err = errors.New("read from backend: connection reset by peer")
		l.Log(bad)
		l.Close()
		s := out.String()
		if got := strings.Count(s, "cause=client_close"); got != c.clean {
			t.Errorf("mode %d: %d clean lines, want %d:\n%s", c.mode, got, c.clean, s)
		}
		if got := strings.Count(s, "cause=server_reset"); got != c.errs {
			t.Errorf("mode %d: %d error lines, want %d:\n%s", c.mode, got, c.errs, s)
		}
	}
}

func TestFields(t *testing.T) {
	l, out := newTestLogger(All, 1)
	l.Log(info(7, splice.CauseServerClose))
	l.Close()
	want := `level=INFO msg=conn id=7 client=192.0.2.1:4000 frontend=web backend=app server=a server_addr=127.0.0.1:9 bytes_in=10 bytes_out=20 connect_ms=1.5 duration_ms=2000 tries=1 cause=server_close relay=splice`
	if !strings.Contains(out.String(), want) {
		t.Errorf("line:\n%s\nwant it to hold:\n%s", out.String(), want)
	}
}

// TestSampling: a share of clean connections is logged, about as asked,
// and the same IDs every time; errors are not sampled.
func TestSampling(t *testing.T) {
	l, out := newTestLogger(All, 0.1)
	for id := range uint64(10000) {
		l.Log(info(id, splice.CauseClientClose))
	}
	l.Close()
	n := strings.Count(out.String(), "msg=conn")
	if n < 800 || n > 1200 {
		t.Errorf("%d of 10000 clean connections logged at sample 0.1", n)
	}
	if !l.sampled(1) == l.sampled(1) {
		t.Error("sampling is not deterministic")
	}
}

// TestRateLimit: error lines beyond the burst are dropped per cause and
// counted, the next line of the cause says how many, and Close reports
// what is left.
func TestRateLimit(t *testing.T) {
	l, out := newTestLogger(Errors, 1)
	for i := range 50 {
		l.Log(info(uint64(i), splice.CauseIdleTimeout))
	}
	for i := range 3 {
		l.Log(info(uint64(100+i), splice.CauseConnectFailed))
	}
	if got := l.Suppressed()[splice.CauseIdleTimeout]; got != 50-burst {
		t.Errorf("suppressed idle lines = %d, want %d", got, 50-burst)
	}
	now := time.Now().Add(2 * window)
	ok, n := l.allow(splice.CauseIdleTimeout, now)
	if !ok || n != 50-burst {
		t.Errorf("after the window: allow = %v, %d suppressed; want true, %d", ok, n, 50-burst)
	}
	l.Log(info(200, splice.CauseIdleTimeout)) // suppressed again? no: a new window started
	l.Close()
	s := out.String()
	if got := strings.Count(s, "cause=idle_timeout"); got != burst+1 {
		t.Errorf("%d idle lines, want %d:\n%s", got, burst+1, s)
	}
	if got := strings.Count(s, "cause=connect_failed"); got != 3 {
		t.Errorf("%d connect_failed lines, want 3", got)
	}
}

// TestBatching: lines written together leave in one write, within the
// flush interval, and Close writes what is left.
func TestBatching(t *testing.T) {
	l, out := newTestLogger(All, 1)
	for i := range 100 {
		l.Log(info(uint64(i), splice.CauseClientClose))
	}
	deadline := time.Now().Add(2 * time.Second)
	for strings.Count(out.String(), "msg=conn") < 100 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := strings.Count(out.String(), "msg=conn"); got != 100 {
		t.Fatalf("%d lines written after the flush interval, want 100", got)
	}
	out.mu.Lock()
	writes := out.n
	out.mu.Unlock()
	if writes > 3 {
		t.Errorf("100 lines took %d writes, want them batched", writes)
	}
	l.Log(info(500, splice.CauseClientClose))
	l.Close()
	if !strings.Contains(out.String(), "id=500") {
		t.Error("Close did not write the last line")
	}
}

// blocked is an output whose writes wait until release is closed.
type blocked struct{ release chan struct{} }

func (b blocked) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

// TestBlockedOutput: an output that blocks never blocks Log; lines past
// the queue bound are dropped and counted.
func TestBlockedOutput(t *testing.T) {
	out := blocked{release: make(chan struct{})}
	l := NewBatched(out, func(w Writer) slog.Handler { return slog.NewTextHandler(w, nil) }, All, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100000 {
			l.Log(info(uint64(i), splice.CauseClientClose))
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Log blocked on an output that does not take writes")
	}
	if l.Dropped() == 0 {
		t.Error("no line dropped although the output never took one")
	}
	close(out.release)
	l.Close()
}
