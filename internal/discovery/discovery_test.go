package discovery_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"rsp/internal/config"
	"rsp/internal/discovery"
	"rsp/internal/dns/dnstest"
)

// syncBuffer is a log sink safe for the watcher's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

func next(t *testing.T, w *discovery.Watcher) discovery.Update {
	t.Helper()
	select {
	case u := <-w.Updates():
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no update within 10 s")
	}
	return discovery.Update{}
}

// TestUpdateNotApplied: a change that did not apply is offered again at
// the next lookup, with the servers still serving as Was; once applied,
// the next change starts from it. A DNS server that is gone is logged
// once, however many retries fail.
func TestUpdateNotApplied(t *testing.T) {
	srv, err := dnstest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.SetIP("app.test", time.Second, netip.MustParseAddr("127.0.0.1"))
	cfg, err := config.Parse("d.conf", fmt.Sprintf(`
[global]
resolvers = [%q]
[frontend.f]
listen = "127.0.0.1:0"
backend = "b"
[backend.b.server.s]
address = "app.test.:80"
`, srv.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	w := discovery.New(slog.New(slog.NewTextHandler(log, nil)))
	defer w.Stop()
	w.Watch(cfg)

	srv.SetIP("app.test", time.Second, netip.MustParseAddr("127.0.0.2"))
	for i, applied := range []bool{false, true} {
		u := next(t, w)
		if len(u.Was) != 1 || len(u.Found) != 1 || u.Was[0].Addr.String() != "127.0.0.1:80" || u.Found[0].Addr.String() != "127.0.0.2:80" || u.Key != "b/s" || u.Gen != w.Gen() {
			t.Fatalf("update %d: %+v; want b/s from 127.0.0.1:80 to 127.0.0.2:80", i, u)
		}
		u.Done(applied)
	}
	srv.SetIP("app.test", time.Second, netip.MustParseAddr("127.0.0.3"))
	if u := next(t, w); len(u.Was) != 1 || u.Was[0].Addr.String() != "127.0.0.2:80" || u.Found[0].Addr.String() != "127.0.0.3:80" {
		t.Fatalf("after the applied update: %+v; want from 127.0.0.2:80 to 127.0.0.3:80", u)
	} else {
		u.Done(true)
	}

	srv.Close() // queries now meet a closed port: refused, from a new local port each time
	const warn = "server name does not resolve"
	deadline := time.Now().Add(10 * time.Second)
	for log.count(warn) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if log.count(warn) == 0 {
		t.Fatalf("no warning for a DNS server that is gone; log:\n%s", log.b.String())
	}
	time.Sleep(3500 * time.Millisecond) // two more retries: after 1 s and 2 s
	if n := log.count(warn); n != 1 {
		t.Errorf("%d warnings for one failure; want 1; log:\n%s", n, log.b.String())
	}
	select {
	case u := <-w.Updates():
		t.Errorf("update while DNS fails: %+v; want the last servers kept", u)
	default:
	}
}
