// Package control is rsp's runtime control channel: a Unix socket on
// which the running rsp answers `rsp ctl` (list servers and connections,
// drain a server, put it in maintenance, change its weight).
//
// Typical usage:
//
//	// in the daemon
//	cmds := &control.Commands{Runtime: proxy, Conns: relay, Logger: logger}
//	srv, err := control.Listen("/run/rsp/rsp.ctl", cmds, logger)
//	...
//	srv.Close()            // stops serving and removes the socket
//
//	// in rsp ctl
//	err := control.Do("/run/rsp/rsp.ctl", []string{"drain", "web/a"}, os.Stdout)
//
// The protocol is one request and one answer per connection, in lines
// a person can type with printf and socat:
//
//	request:  ARG TAB ARG TAB ... NEWLINE   (e.g. "weight\tweb/a\t5\n")
//	answer:   output lines, then one status line, "OK" or "ERR reason"
//
// The status is always the last line before the server closes the
// connection; output lines are never parsed, so any text may appear in
// them. An argument cannot hold a tab or a newline (Do refuses one).
//
// Only root and the daemon's own effective user may talk: the socket is
// made mode 0600, and each peer's credentials (SO_PEERCRED) are checked
// again, so a socket made accessible by hand stays closed to others.
//
// The package knows sockets and the command names; what a command does to
// servers and connections is asked of the Runtime and Conns interfaces,
// which *proxy.Proxy and *splice.Relay satisfy.
package control

import (
	"io"
	"time"
)

// DefaultPath is where rsp ctl looks for the control socket when neither
// -socket nor $RSP_CTL says; the packaged configuration puts it there.
const DefaultPath = "/run/rsp/rsp.ctl"

const (
	// connTimeout bounds one connection on the server side, request and
	// answer: every command answers from memory, at once, so a peer
	// still connected after it is stuck or hostile.
	connTimeout = 5 * time.Second
	// clientTimeout is longer than connTimeout, so that the server's
	// deadline, not the client's, ends a slow exchange.
	clientTimeout = 2 * connTimeout
	// maxRequest bounds a request line: a command and a few names.
	maxRequest = 4096
	// maxAnswerLine bounds one answer line the client reads.
	maxAnswerLine = 1 << 20
)

// Protocol words.
const (
	argSep    = "\t"
	statusOK  = "OK"
	statusErr = "ERR "
)

// Peer is who is on the other end of a control connection, from the
// kernel (SO_PEERCRED).
type Peer struct {
	PID int32
	UID uint32
	GID uint32
}

// Handler answers one request. args is the request, command first;
// what the handler writes to out is sent as the answer's output lines,
// and a non-nil error ends the answer with "ERR" and the error's text
// in place of "OK".
type Handler interface {
	Handle(peer Peer, args []string, out io.Writer) error
}

// HandlerFunc lets a function be a Handler.
type HandlerFunc func(peer Peer, args []string, out io.Writer) error

// Handle calls f.
func (f HandlerFunc) Handle(peer Peer, args []string, out io.Writer) error {
	return f(peer, args, out)
}
