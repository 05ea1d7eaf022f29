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
// systemd's sockets (a socket unit named "rsp-web" stays a listener);
// from the rsp before this one, the unnamed descriptors are connections'.
func TestHandoverName(t *testing.T) {
	for _, tc := range []struct {
		name       string
		fromParent bool
		want       string
	}{
		{"rsp-state", false, HandoverState},
		{"rsp-fd", false, HandoverFD},
		{"rsp-listen", true, HandoverListen},
		{"rsp-ready", true, HandoverReady},
		{"rsp-web", false, ""},
		{"web", true, ""},
		{"LISTEN_FD_9", false, ""},
		{"LISTEN_FD_9", true, HandoverFD},
	} {
		if got := handoverName(tc.name, tc.fromParent); got != tc.want {
			t.Errorf("handoverName(%q, %v) = %q; want %q", tc.name, tc.fromParent, got, tc.want)
		}
	}
}
