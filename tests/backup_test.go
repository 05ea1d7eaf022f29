package tests

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBackupServers: a backup server takes no connection while a primary
// is up; with every primary down (active checks) new connections go to
// it, and the switch is logged once; with a primary back they go to the
// primary again (logged once), while a connection made on the backup
// carries on. rsp ctl servers marks the backup. Both relays.
func TestBackupServers(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) { testBackupServers(t, mode) })
	}
}

func testBackupServers(t *testing.T, mode string) {
	a, b, c := newIDServer(t, "a"), newIDServer(t, "b"), newIDServer(t, "c")
	sock := filepath.Join(t.TempDir(), "rsp.ctl")
	cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
control = %q
[frontend.web]
listen = "127.0.0.1:0"
backend = "app"
[backend.app]
balance = "roundrobin"
eject_after = 0
[backend.app.health]
interval = "100ms"
timeout = "100ms"
fall = 1
rise = 1
%s`, mode, sock, servers("app", []*idServer{a, b, c}, map[string]string{"c": "backup = true"})))
	p := startRsp(t, "-config", cfg)
	logged := func(s string) int { return strings.Count(p.stderr.String(), s) }
	const (
		toBackups   = `msg="all primary servers unavailable; using backup servers" backend=app`
		toPrimaries = `msg="primary servers available again" backend=app`
	)

	if got := tally(t, p.addr, 20); got["a"] != 10 || got["b"] != 10 {
		t.Fatalf("primaries up: %v, want a:10 b:10 and none on backup c", got)
	}
	for name, want := range map[string][]string{
		"app/a": {"up", "no"}, "app/c": {"up", "yes"},
	} {
		if f := serverLine(t, sock, name); len(f) != 8 || f[2] != want[0] || f[7] != want[1] {
			t.Errorf("rsp ctl servers: %v, want STATE %s and BACKUP %s", f, want[0], want[1])
		}
	}
	if n := logged(toBackups); n != 0 {
		t.Errorf("switch to backups logged %d times with the primaries up", n)
	}

	a.kill()
	b.kill()
	for _, s := range []string{"a", "b"} {
		if !eventually(5*time.Second, func() bool { return logged(`msg="server down" server=app/`+s) == 1 }) {
			t.Fatalf("killed primary %s not marked down", s)
		}
	}
	if got := tally(t, p.addr, 10); got["c"] != 10 {
		t.Errorf("primaries down: %v, want all 10 on backup c", got)
	}
	if n := logged(toBackups); n != 1 {
		t.Errorf("switch to backups logged %d times, want once:\n%s", n, p.stderr.String())
	}
	name, live := which(t, p.addr, "")
	defer live.Close()
	if name != "c" {
		t.Fatalf("connection held across the switch back went to %s, want c", name)
	}

	a.start(t, a.addr)
	if !eventually(5*time.Second, func() bool { return logged(`msg="server up" server=app/a`) == 1 }) {
		t.Fatal("restarted primary a not marked up")
	}
	if got := tally(t, p.addr, 10); got["a"] != 10 {
		t.Errorf("primary a back: %v, want all 10 on a", got)
	}
	if n := logged(toPrimaries); n != 1 {
		t.Errorf("switch back to primaries logged %d times, want once:\n%s", n, p.stderr.String())
	}
	if n := logged(toBackups); n != 1 {
		t.Errorf("switch to backups logged %d times in all, want once", n)
	}
	live.Write([]byte("still here\n"))
	if line, err := readLine(live, 5*time.Second); err != nil || line != "still here\n" {
		t.Errorf("connection on backup c after the switch back: %q, %v; want its echo", line, err)
	}
}
