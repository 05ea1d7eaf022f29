package splice

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestEndCause: every way a connection ends maps to its cause.
func TestEndCause(t *testing.T) {
	none := &dialing{}
	set := &dialing{}
	set.setCause(CauseNoServer, errors.New("no server"))
	for _, c := range []struct {
		reason      error
		d           *dialing
		clean       bool
		clientFirst bool
		draining    bool
		want        Cause
	}{
		{nil, none, true, true, false, CauseClientClose},
		{nil, none, true, false, false, CauseServerClose},
		{nil, none, true, false, true, CauseDrained},
		{nil, none, false, false, false, CauseError},
		{nil, set, false, false, false, CauseNoServer},
		{errIdle, none, false, false, false, CauseIdleTimeout},
		{errHalfClose, none, false, false, false, CauseHalfCloseTimeout},
		{errClosedByRelay, none, false, false, true, CauseDrainTimeout},
		{errKilled, none, false, false, false, CauseKilled},
		{errMaxConn, none, false, false, false, CauseMaxConn},
		{errUndeliverable, none, false, false, false, CauseUndeliverable},
		{fmt.Errorf("%w: x", errPeerAborted), none, false, false, false, CauseUndeliverable},
		{&peerError{err: syscall.ECONNRESET}, none, false, false, false, CauseClientReset},
		{&peerError{server: true, err: syscall.ECONNRESET}, none, false, false, false, CauseServerReset},
		{errors.New("epoll_wait: EBADF"), none, false, false, false, CauseError},
	} {
		if got := endCause(c.reason, c.d, c.clean, c.clientFirst, c.draining); got != c.want {
			t.Errorf("endCause(%v, clean %v, clientFirst %v, draining %v) = %v, want %v", c.reason, c.clean, c.clientFirst, c.draining, got, c.want)
		}
	}
	for c := range NumCauses {
		if c.String() == "unknown" || c.String() == "" {
			t.Errorf("cause %d has no name", c)
		}
	}
}

// TestConnLimit: take succeeds up to the limit, and 0 means none.
func TestConnLimit(t *testing.T) {
	var cl ConnLimit
	for range 5 {
		if !cl.take() {
			t.Fatal("no limit refused")
		}
	}
	cl.SetMax(6)
	if !cl.take() || cl.take() {
		t.Fatal("limit 6 with 5 taken: want one more, then refusal")
	}
	cl.release()
	if !cl.take() {
		t.Fatal("a released slot was not given again")
	}
}

// TestConnectHistogram: connects land in the bucket of their time.
func TestConnectHistogram(t *testing.T) {
	var s ServerStats
	s.observeConnect(50 * time.Microsecond)
	s.observeConnect(time.Millisecond)
	s.observeConnect(10 * time.Second)
	b := ConnectBuckets()
	if s.ConnectCounts[0] != 1 || s.ConnectCounts[3] != 1 || s.ConnectCounts[len(b)] != 1 || s.Connects != 3 {
		t.Errorf("counts %v (bounds %v)", s.ConnectCounts, b)
	}
	if s.ConnectTime != 10*time.Second+time.Millisecond+50*time.Microsecond {
		t.Errorf("sum %v", s.ConnectTime)
	}
}
