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
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
)

// Listener is a listening socket and its name: the FileDescriptorName=
// systemd gave it, or the address rsp bound.
type Listener struct {
	Name string
	net.Listener
}

// Activated reports whether systemd passed sockets to this process
// (LISTEN_PID names this process and LISTEN_FDS is set).
func Activated() bool {
	return os.Getenv("LISTEN_FDS") != "" && os.Getenv("LISTEN_PID") == fmt.Sprint(os.Getpid())
}

// FromSystemd returns the listening sockets systemd passed to this
// process, in order, and unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES
// so that no child inherits them. It returns no listeners and no error
// when the process was not socket-activated.
func FromSystemd() ([]Listener, error) {
	files := activation.Files(true)
	var (
		out  []Listener
		errs []error
	)
	for i, f := range files {
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
		return nil, err
	}
	return out, nil
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
