package splice

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// FrozenConn is an established connection taken out of a relay by Freeze
// with everything needed to resume it in another process: its two
// sockets, the bytes in flight in each direction (in a pipe), how far
// each direction got, and what the connection log reports of it.
// Whoever holds it owns its file descriptors.
type FrozenConn struct {
	ID       uint64
	Frontend string // the frontend's name
	Backend  string // the backend's name
	Server   string // "backend/server"
	Peer     netip.AddrPort
	// Client and Server are the sockets; ClientUnix and ServerUnix tell
	// Unix sockets from TCP.
	ClientFD, ServerFD     int
	ClientUnix, ServerUnix bool
	Up, Down               FrozenHalf // client → server, server → client
	Born                   time.Time  // accepted
	Connect                time.Duration
	Tries                  int
	ClientFirst            bool
	// HalfClosed is how long ago the first direction ended; 0 if none did.
	HalfClosed time.Duration
	// Pending marks a connection not yet relaying: connecting to its
	// server, or waiting for its PROXY header or ClientHello. Only its
	// client socket goes (ServerFD is -1, no pipes); nothing of the
	// client's stream was consumed but a whole PROXY header, and the
	// next process routes and connects it anew.
	Pending bool
	// HeaderRead says, with Pending, that the client's PROXY header (if
	// its frontend takes one) was read, and Peer is the client it named:
	// the connection passed its frontend's gate (access list, limits).
	HeaderRead bool
	// Wait is, with Pending, what was left of its wait for a PROXY
	// header or ClientHello (0 if that wait was over): the next process
	// waits no longer.
	Wait time.Duration
}

// FrozenHalf is one direction of a FrozenConn.
type FrozenHalf struct {
	// PipeR and PipeW are the pipe holding N bytes read and not yet
	// written; -1 when N is 0.
	PipeR, PipeW int
	N            int
	EOF          bool  // the source's EOF was read
	Done         bool  // the EOF was passed on: the destination is shut down for writing
	Sent         int64 // bytes delivered so far
}

// errHandover ends a connection that a hand-over could not carry: one
// ending, or with an error or urgent data pending.
var errHandover = errors.New("reset at hand-over: ending, or an error or urgent data pending")

// ErrNoHandover says the relay cannot hand its connections over: only
// the splice relay, on Linux, can.
var ErrNoHandover = errors.New("live connections can be handed over by the splice relay only: set relay = \"splice\"")

// Freeze stops accepting, takes every connection out of the relay,
// unchanged, and returns them: established ones with their sockets and
// the bytes in flight, and those not yet connected (Pending) with their
// client socket only. The connections it cannot carry (ending, or with
// an error or urgent data pending) are reset, cause handover. The relay
// then holds no connection and can be shut down. Freeze may be called
// once.
func (r *Relay) Freeze() ([]FrozenConn, error) {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e == nil {
		return nil, errors.New("relay not started")
	}
	return e.freeze()
}

// Forget closes this process's descriptors of fc, which another process
// now holds and resumes: the sockets are left as they are.
func (fc *FrozenConn) Forget() {
	for _, fd := range [6]int{fc.ClientFD, fc.ServerFD, fc.Up.PipeR, fc.Up.PipeW, fc.Down.PipeR, fc.Down.PipeW} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	fc.ClientFD, fc.ServerFD = -1, -1
	fc.Up.PipeR, fc.Up.PipeW, fc.Down.PipeR, fc.Down.PipeW = -1, -1, -1, -1
}

// Unfreeze undoes the stop of accepting of a Freeze whose hand-over did
// not happen: the relay accepts again on the listeners then given to
// Serve (those it served before must be given again).
func (r *Relay) Unfreeze() {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e != nil {
		e.unfreeze()
	}
}

// dropThawed resets fc, which will not be resumed, and releases its
// server t (nil for a Pending fc).
func dropThawed(fc FrozenConn, t Target) {
	fc.Close()
	if t != nil {
		t.Release()
	}
}

// Thaw resumes in r a connection frozen by another relay (another
// process's): bytes move again as they would have there. rt is the route
// of its frontend, t its server, already counted as picked (Thaw's end
// releases it); for a Pending fc, t is nil and a server is picked as for
// a new client. Thaw takes ownership of fc's file descriptors, and
// closes them if it fails.
func (r *Relay) Thaw(fc FrozenConn, rt *Route, t Target) error {
	r.mu.Lock()
	e := r.impl
	r.mu.Unlock()
	if e == nil {
		fc.Close()
		return errors.New("relay not started")
	}
	if fc.Pending && (rt == nil || rt.Picker == nil) {
		fc.Close()
		return fmt.Errorf("frontend %s: not in the configuration, so its client not yet connected is reset", fc.Frontend)
	}
	if fc.Pending && !fc.HeaderRead && rt.Header == nil {
		// Its PROXY header, sent or on its way, would reach the server
		// as data.
		fc.Close()
		return fmt.Errorf("frontend %s: no longer reads PROXY headers, so its client still sending one is reset", fc.Frontend)
	}
	return e.thaw(fc, rt, t)
}
