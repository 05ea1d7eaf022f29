// Package activation gives rsp its listening sockets, from systemd socket
// activation or bound by rsp itself, and tells systemd how the service is
// doing (sd_notify). It wraps go-systemd once; the rest of rsp sees plain
// net.Listeners and a Notifier.
package activation

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
)

// Listener is a listening socket and its name: the FileDescriptorName=
// systemd gave it, or the address rsp bound.
type Listener struct {
	Name string
	net.Listener
}

// ParentEnv names the environment variable with which an rsp that
// starts its successor (a hand-over without systemd) names itself: the
// successor takes the descriptors passed as systemd's if its parent is
// that process, since LISTEN_PID cannot be known before it starts.
const ParentEnv = "RSP_HANDOVER_PARENT"

// Names of the descriptors a hand-over passes (internal/handover), as
// systemd's FDNAME.
const (
	HandoverState  = "rsp-state"  // the memfd describing the rest
	HandoverFD     = "rsp-fd"     // a connection's socket or pipe
	HandoverListen = "rsp-listen" // a listener rsp bound itself
	HandoverReady  = "rsp-ready"  // how a successor started by rsp says it serves
	// JournalPrefix begins the names of what crash survival keeps in
	// systemd's store while rsp runs: "rsp-j.PID" (the journal's memfd),
	// "rsp-j.PID.c.N" (a connection's sockets), "rsp-j.PID.p.N" (a pipe).
	JournalPrefix = "rsp-j."
)

// HandoverFDsEnv names the environment variable with which the rsp
// before this one says from which descriptor on (counting from 0 at
// descriptor 3) it passed connections' descriptors, unnamed: a name each
// would make LISTEN_FDNAMES longer than an environment string may be.
const HandoverFDsEnv = "RSP_HANDOVER_FDS"

// handoverName returns the hand-over name of the i-th descriptor passed,
// under name, or "" if it is not one; from is where unnamed connection
// descriptors begin (HandoverFDsEnv), or -1.
func handoverName(i int, name string, from int) string {
	switch {
	case from >= 0 && i >= from:
		return HandoverFD
	case name == HandoverState, name == HandoverFD, name == HandoverListen, name == HandoverReady,
		strings.HasPrefix(name, JournalPrefix):
		return name
	}
	return ""
}

// Activated reports whether systemd (or the rsp before this one) passed
// descriptors to this process: LISTEN_FDS is set, and LISTEN_PID names
// this process or ParentEnv its parent.
func Activated() bool {
	if os.Getenv("LISTEN_FDS") == "" {
		return false
	}
	if os.Getenv("LISTEN_PID") == fmt.Sprint(os.Getpid()) {
		return true
	}
	return os.Getenv("LISTEN_PID") == "" && os.Getenv(ParentEnv) != "" && os.Getenv(ParentEnv) == fmt.Sprint(os.Getppid())
}

// Passed is what systemd, or the rsp before this one, passed.
type Passed struct {
	Listeners []Listener
	// Handover holds the descriptors of a hand-over (the Handover*
	// names), named by HandoverNames, for internal/handover.
	Handover      []*os.File
	HandoverNames []string
	// FromParent: the rsp before this one passed them (SIGUSR2), not
	// systemd.
	FromParent bool
}

// FromSystemd returns the descriptors systemd (or the rsp before this
// one) passed to this process, in order, and unsets LISTEN_PID,
// LISTEN_FDS, LISTEN_FDNAMES and ParentEnv so that no child inherits
// them. It returns nothing and no error when nothing was passed.
func FromSystemd() (Passed, error) {
	var p Passed
	if !Activated() {
		return p, nil
	}
	p.FromParent = os.Getenv("LISTEN_PID") == ""
	from := -1
	if n, err := strconv.Atoi(os.Getenv(HandoverFDsEnv)); err == nil && p.FromParent {
		from = n
	}
	os.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid())) // activation.Files checks it
	os.Unsetenv(ParentEnv)
	os.Unsetenv(HandoverFDsEnv)
	files := activation.Files(true)
	var (
		out  []Listener
		errs []error
	)
	for i, f := range files {
		if name := handoverName(i, f.Name(), from); name != "" {
			p.Handover = append(p.Handover, f)
			p.HandoverNames = append(p.HandoverNames, name)
			continue
		}
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("socket %d (%s) from systemd is not a listening stream socket: %w; use ListenStream= in the .socket unit", 3+i, f.Name(), err))
			continue
		}
		out = append(out, Listener{Name: f.Name(), Listener: ln})
	}
	if err := errors.Join(errs...); err != nil {
		for _, l := range out {
			l.Close()
		}
		for _, f := range p.Handover {
			f.Close()
		}
		return Passed{}, err
	}
	p.Listeners = out
	return p, nil
}

// Listen binds a TCP listener on addr (host:port; an empty host means all
// IPv4 and IPv6 addresses). Its errors say what to do about them.
func Listen(addr string) (Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return Listener{}, explainListen(addr, err)
	}
	return Listener{Name: addr, Listener: ln}, nil
}

// ListenError is a failure to bind a listening socket, with advice.
type ListenError struct {
	Addr   string
	Err    error
	Advice string
}

func (e *ListenError) Error() string {
	msg := fmt.Sprintf("listen %s: %v", e.Addr, e.Err)
	if e.Advice != "" {
		msg += " — " + e.Advice
	}
	return msg
}

func (e *ListenError) Unwrap() error { return e.Err }

// explainListen turns a bind failure into a ListenError whose message
// names the address and what the operator can do.
func explainListen(addr string, err error) error {
	cause := err
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		cause = oe.Err
		var se *os.SyscallError
		if errors.As(cause, &se) {
			cause = se.Err
		}
	}
	le := &ListenError{Addr: addr, Err: cause}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		le.Advice = "is another rsp or service bound there?"
	case errors.Is(err, syscall.EACCES):
		le.Advice = "ports below 1024 need root or CAP_NET_BIND_SERVICE; or let systemd bind it (socket activation: systemctl start rsp.socket)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		le.Advice = "that address is not on any interface of this host"
	}
	return le
}
