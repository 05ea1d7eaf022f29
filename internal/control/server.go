package control

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Server serves a Handler on a Unix control socket.
type Server struct {
	path    string
	ln      *net.UnixListener
	file    os.FileInfo // the socket file as bound, to remove only ours
	handler Handler
	log     *slog.Logger
	euid    int // besides root, the only uid allowed to talk

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen creates the control socket at path, mode 0600, and serves h on
// it, each connection in its own goroutine. A socket file left at path
// by an rsp that died is replaced; a live one (something answers), or a
// file that is not a socket, is an error. log receives refusals and
// failures; nil means slog.Default().
func Listen(path string, h Handler, log *slog.Logger) (*Server, error) {
	return listen(path, h, log, os.Geteuid())
}

// listen is Listen with the effective uid to allow besides root.
func listen(path string, h Handler, log *slog.Logger, euid int) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// Close removes the file itself, and only if it is still ours.
	ln.SetUnlinkOnClose(false)
	// bind(2) made the file 0777 less the umask; a peer that connects
	// before the chmod is still checked by its credentials.
	fail := func(err error) (*Server, error) {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	s := &Server{path: path, ln: ln, file: fi, handler: h, log: log, euid: euid, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// removeStale removes a socket file at path that nobody answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: a file that is not a socket is in the way; remove it or set another control path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("control socket %s is in use: is another rsp running with it?", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control socket %s exists and cannot be checked: %w", path, err)
	}
	// Refused: no process listens on it; it is left from one that died.
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("control socket: remove stale %w", err)
	}
	return nil
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving, ends the connections being served, waits for
// their handlers, and removes the socket file if it is still the one
// Listen made.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	if fi, lerr := os.Lstat(s.path); lerr == nil && os.SameFile(fi, s.file) {
		if rerr := os.Remove(s.path); rerr != nil && err == nil {
			err = rerr
		}
	}
	s.wg.Wait()
	if err != nil {
		return fmt.Errorf("close control socket %s: %w", s.path, err)
	}
	return nil
}

// acceptLoop accepts connections until Close.
func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds, most likely: wait rather than spin.
			s.log.Warn("control socket: accept failed", "socket", s.path, "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if !s.track(c) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go s.serveConn(c)
	}
}

// track records c as being served, unless the server is closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// serveConn reads c's request, checks the peer, runs the handler and
// answers. The request is read before a refusal is sent: closing a Unix
// socket with unread bytes would reset the peer before it read why.
func (s *Server) serveConn(c *net.UnixConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	c.SetDeadline(time.Now().Add(connTimeout))
	args, rerr := readRequest(c)
	peer, err := peerCred(c)
	if err != nil {
		s.log.Warn("control socket: cannot check the peer's credentials; refused", "err", err)
		s.answer(c, nil, fmt.Errorf("permission denied: cannot check your credentials: %w", err))
		return
	}
	if !allowed(peer.UID, s.euid) {
		s.log.Warn("control socket: refused a peer that is neither root nor rsp's user",
			"uid", peer.UID, "pid", peer.PID, "rsp_uid", s.euid)
		s.answer(c, nil, fmt.Errorf("permission denied: uid %d may not control rsp (only root and uid %d)", peer.UID, s.euid))
		return
	}
	if rerr != nil {
		s.answer(c, nil, rerr)
		return
	}
	var out bytes.Buffer
	err = s.handler.Handle(peer, args, &out)
	s.answer(c, out.Bytes(), err)
}

// allowed reports whether a peer of uid may talk to a server running as
// euid: root, and the server's own user.
func allowed(uid uint32, euid int) bool {
	return uid == 0 || int64(uid) == int64(euid)
}

// readRequest reads one request line and splits it into its arguments.
// A request that ends at EOF without a newline is whole too.
func readRequest(r io.Reader) ([]string, error) {
	br := bufio.NewReaderSize(r, maxRequest)
	line, err := br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		// Read the rest (bounded by the connection's deadline): closing
		// with unread bytes would reset the client before it read why.
		io.CopyN(io.Discard, br, 1<<20)
		return nil, fmt.Errorf("request longer than %d bytes", maxRequest)
	case err != nil && !(errors.Is(err, io.EOF) && len(line) > 0):
		return nil, fmt.Errorf("reading the request: %w", err)
	}
	req := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
	if req == "" {
		return nil, errors.New("empty request: send a command, e.g. help")
	}
	return strings.Split(req, argSep), nil
}

// answer writes out, as whole lines, then the status line for err.
func (s *Server) answer(c net.Conn, out []byte, err error) {
	var b bytes.Buffer
	b.Write(out)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		b.WriteByte('\n')
	}
	if err != nil {
		// The status is one line: a reason of several becomes one.
		b.WriteString(statusErr + strings.ReplaceAll(err.Error(), "\n", "; ") + "\n")
	} else {
		b.WriteString(statusOK + "\n")
	}
	if _, werr := c.Write(b.Bytes()); werr != nil {
		s.log.Debug("control socket: answer not delivered", "err", werr)
	}
}
