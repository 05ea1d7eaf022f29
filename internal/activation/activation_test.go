package activation

import (
	"net"
	"strings"
	"testing"
)

func TestNotActivated(t *testing.T) {
	t.Setenv("LISTEN_PID", "1")
	t.Setenv("LISTEN_FDS", "1")
	if Activated() {
		t.Fatal("Activated() with LISTEN_PID naming another process")
	}
	passed, err := FromSystemd()
	lns := passed.Listeners
	if err != nil || len(lns) != 0 {
		t.Fatalf("FromSystemd() for another PID = %v, %v; want none", lns, err)
	}
}

func TestListenErrors(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, err = Listen(held.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "address already in use — is another rsp or service bound there?") {
		t.Fatalf("Listen on a used port: %v", err)
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

// TestHandoverName: only the hand-over's own names are taken from
// systemd's sockets (a socket unit named "rsp-web", or an unnamed
// LISTEN_FD_3, stays a listener); from the rsp before this one, the
// descriptors from HandoverFDsEnv on are connections'.
func TestHandoverName(t *testing.T) {
	for _, tc := range []struct {
		i    int
		name string
		from int
		want string
	}{
		{0, "rsp-state", -1, HandoverState},
		{1, "rsp-fd", -1, HandoverFD},
		{2, "rsp-listen", 5, HandoverListen},
		{3, "rsp-ready", 5, HandoverReady},
		{0, "rsp-web", -1, ""},
		{1, "web", 5, ""},
		{0, "LISTEN_FD_3", -1, ""},
		{4, "LISTEN_FD_7", 5, ""},
		{5, "LISTEN_FD_8", 5, HandoverFD},
	} {
		if got := handoverName(tc.i, tc.name, tc.from); got != tc.want {
			t.Errorf("handoverName(%d, %q, %d) = %q; want %q", tc.i, tc.name, tc.from, got, tc.want)
		}
	}
}
