//go:build linux

package handover

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// FDStore is a file descriptor store that speaks the part of systemd's
// notification protocol that the hand-over and the journal use
// (FDSTORE=1 with FDNAME=, FDSTOREREMOVE=1): with NOTIFY_SOCKET set to
// Path, an rsp runs as under systemd's store, for rsp bench and the
// tests, which pass what it holds to the next rsp as systemd would
// (Files). Like systemd, it keeps a descriptor once however often it is
// stored.
type FDStore struct {
	Path string

	fd     int
	done   chan struct{}
	closed atomic.Bool
	mu     sync.Mutex
	held   map[string][]*os.File // by name
	ids    map[FileID]string
	msgs   int64
	status string        // the last STATUS=
	hold   chan struct{} // open while Hold holds reading back; nil: read on
	stop   chan struct{} // closed by Close
}

// NewFDStore listens on a socket in dir.
func NewFDStore(dir string) (*FDStore, error) {
	s := &FDStore{Path: filepath.Join(dir, "notify"), done: make(chan struct{}), stop: make(chan struct{}), held: map[string][]*os.File{}, ids: map[FileID]string{}}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("store socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: s.Path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("store socket %s: %w", s.Path, err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	s.fd = fd
	go s.serve()
	return s, nil
}

// serve takes messages until Close.
func (s *FDStore) serve() {
	defer close(s.done)
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*maxFDsPerMessage))
	for {
		s.mu.Lock()
		hold := s.hold
		s.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-s.stop:
				return
			}
		}
		n, oobn, _, _, err := unix.Recvmsg(s.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || s.closed.Load() {
			return
		}
		var fds []int
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if r, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, r...)
				}
			}
		}
		s.take(buf[:n], fds)
	}
}

// take carries out one message.
func (s *FDStore) take(msg []byte, fds []int) {
	var store, remove bool
	name := "stored"
	for _, line := range bytes.Split(msg, []byte("\n")) {
		k, v, _ := bytes.Cut(line, []byte("="))
		switch string(k) {
		case "FDSTORE":
			store = string(v) == "1"
		case "FDSTOREREMOVE":
			remove = string(v) == "1"
		case "FDNAME":
			name = string(v)
		case "STATUS":
			s.mu.Lock()
			s.status = string(v)
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs++
	if remove {
		for _, f := range s.held[name] {
			if id, err := idOf(int(f.Fd())); err == nil {
				delete(s.ids, id)
			}
			f.Close()
		}
		delete(s.held, name)
	}
	for _, fd := range fds {
		id, err := idOf(fd)
		if !store || err != nil {
			unix.Close(fd)
			continue
		}
		if _, dup := s.ids[id]; dup {
			unix.Close(fd)
			continue
		}
		s.ids[id] = name
		s.held[name] = append(s.held[name], os.NewFile(uintptr(fd), name))
	}
}

// Len returns how many descriptors the store holds and the messages it
// has taken.
func (s *FDStore) Len() (fds int, msgs int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids), s.msgs
}

// Status returns the last STATUS= text the store was sent.
func (s *FDStore) Status() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Hold stops the store taking messages, as a busy systemd would, until
// release is called: what is sent meanwhile fills the socket's queue (at
// most one message more is taken).
func (s *FDStore) Hold() (release func()) {
	h := make(chan struct{})
	s.mu.Lock()
	s.hold = h
	s.mu.Unlock()
	return sync.OnceFunc(func() {
		s.mu.Lock()
		s.hold = nil
		s.mu.Unlock()
		close(h)
	})
}

// Files returns duplicates of what the store holds, with their names.
func (s *FDStore) Files() ([]*os.File, []string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var files []*os.File
	var names []string
	for name, fs := range s.held {
		for _, f := range fs {
			fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
			if err != nil {
				for _, f := range files {
					f.Close()
				}
				return nil, nil, fmt.Errorf("duplicate a stored descriptor: %w", err)
			}
			files = append(files, os.NewFile(uintptr(fd), name))
			names = append(names, name)
		}
	}
	return files, names, nil
}

// Close stops the store and closes what it holds; once is enough.
func (s *FDStore) Close() {
	if s.closed.Swap(true) {
		return
	}
	close(s.stop)
	unix.Shutdown(s.fd, unix.SHUT_RDWR) // wakes serve
	<-s.done
	unix.Close(s.fd)
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, fs := range s.held {
		for _, f := range fs {
			f.Close()
		}
		delete(s.held, name)
	}
	clear(s.ids)
}
