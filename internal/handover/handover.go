//go:build linux

package handover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"rsp/internal/splice"
)

// version is the state's format; a process refuses another.
const version = 1

// FileID names a descriptor by what it refers to: the two ends of a
// pipe share an inode and differ by their access mode.
type FileID struct {
	Dev, Ino uint64
	Mode     int // O_RDONLY, O_WRONLY or O_RDWR
}

// state is what the memfd holds.
type state struct {
	Version   int
	Conns     []conn
	Listeners []listenerRef
}

// conn is a frozen connection with its descriptors named by FileID, in
// the order of fdsOf. Its descriptor numbers are the old process's; one
// of -1 was not passed.
type conn struct {
	splice.FrozenConn
	IDs []FileID
}

// fdsOf points at the descriptors of fc that it has: its two sockets
// (its client's only, if Pending), then the ends of the pipes that hold
// bytes.
func fdsOf(fc *splice.FrozenConn) []*int {
	out := []*int{&fc.ClientFD}
	if !fc.Pending {
		out = append(out, &fc.ServerFD)
	}
	for _, fd := range []*int{&fc.Up.PipeR, &fc.Up.PipeW, &fc.Down.PipeR, &fc.Down.PipeW} {
		if *fd >= 0 {
			out = append(out, fd)
		}
	}
	return out
}

// listenerRef is a listener rsp bound: Key is how the configuration
// names it ("listen ADDR").
type listenerRef struct {
	Key string
	ID  FileID
}

// Pack describes conns and listeners in a memfd and returns it with every
// descriptor to pass. conns' descriptors stay open and owned by conns;
// the files are duplicates.
func Pack(conns []splice.FrozenConn, listeners []Listener) (*Packed, error) {
	p := &Packed{}
	st := state{Version: version}
	add := func(fd int, name string) (FileID, error) {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return FileID{}, fmt.Errorf("duplicate fd %d: %w", fd, err)
		}
		id, err := idOf(dup)
		if err != nil {
			unix.Close(dup)
			return FileID{}, err
		}
		p.Files = append(p.Files, os.NewFile(uintptr(dup), name))
		p.Names = append(p.Names, name)
		return id, nil
	}
	fail := func(err error) (*Packed, error) {
		p.Close()
		return nil, err
	}
	for _, fc := range conns {
		c := conn{FrozenConn: fc}
		// Whoever closes a socket last without resuming it (systemd
		// dropping its store, a successor that failed) resets it: a
		// stream cut short must not look finished. Thaw clears it.
		for _, fd := range [2]int{fc.ClientFD, fc.ServerFD} {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		for _, fd := range fdsOf(&fc) {
			id, err := add(*fd, FDName)
			if err != nil {
				return fail(err)
			}
			c.IDs = append(c.IDs, id)
		}
		st.Conns = append(st.Conns, c)
	}
	for _, l := range listeners {
		fd, err := listenerFD(l.Listener)
		if err != nil {
			return fail(fmt.Errorf("listener %s: %w", l.Key, err))
		}
		id, err := add(fd, ListenName)
		unix.Close(fd)
		if err != nil {
			return fail(err)
		}
		st.Listeners = append(st.Listeners, listenerRef{Key: l.Key, ID: id})
	}
	mfd, err := unix.MemfdCreate(StateName, unix.MFD_CLOEXEC)
	if err != nil {
		return fail(fmt.Errorf("memfd for the hand-over state: %w", err))
	}
	f := os.NewFile(uintptr(mfd), StateName)
	if err := json.NewEncoder(f).Encode(&st); err != nil {
		f.Close()
		return fail(fmt.Errorf("write the hand-over state: %w", err))
	}
	p.Files = append([]*os.File{f}, p.Files...)
	p.Names = append([]string{StateName}, p.Names...)
	return p, nil
}

// AddListener adds a listener that keeps its own name (a socket systemd
// passed under FileDescriptorName=), for a successor started by Exec.
func (p *Packed) AddListener(name string, ln net.Listener) error {
	fd, err := listenerFD(ln)
	if err != nil {
		return fmt.Errorf("listener %s: %w", name, err)
	}
	p.Files = append(p.Files, os.NewFile(uintptr(fd), name))
	p.Names = append(p.Names, name)
	return nil
}

// Unpack reads the hand-over among files (named as passed): it returns
// the connections and listeners, and closes what it does not return. A
// connection whose descriptors are not all there is reset, and counted
// in lost.
func Unpack(files []*os.File, names []string) (u *Unpacked, lost int, err error) {
	byID := map[FileID]*os.File{}
	var stFile *os.File
	for i, f := range files {
		switch names[i] {
		case StateName:
			stFile = f
			continue
		case ReadyName:
			continue // Ready's
		}
		id, err := idOf(int(f.Fd()))
		if err != nil {
			f.Close()
			continue
		}
		byID[id] = f
	}
	defer func() {
		for _, f := range byID {
			f.Close()
		}
	}()
	if stFile == nil {
		return nil, 0, errors.New("hand-over: no state (" + StateName + ") came with its descriptors")
	}
	defer stFile.Close()
	var st state
	if _, err := stFile.Seek(0, io.SeekStart); err != nil {
		return nil, 0, fmt.Errorf("hand-over state: %w", err)
	}
	if err := json.NewDecoder(stFile).Decode(&st); err != nil {
		return nil, 0, fmt.Errorf("hand-over state: %w", err)
	}
	if st.Version != version {
		return nil, 0, fmt.Errorf("hand-over state of version %d; this rsp reads version %d", st.Version, version)
	}
	u = &Unpacked{Listeners: map[string]net.Listener{}}
	take := func(id FileID) int {
		f := byID[id]
		if f == nil {
			return -1
		}
		delete(byID, id)
		return takeFile(f)
	}
	for _, c := range st.Conns {
		fc := c.FrozenConn
		if fc.Pending {
			fc.ServerFD = -1 // not passed: no number of the old process's may stay
		}
		fds := fdsOf(&fc) // still the old process's numbers
		whole := len(fds) == len(c.IDs)
		for i, fd := range fds {
			*fd = -1
			if i < len(c.IDs) {
				*fd = take(c.IDs[i])
			}
			whole = whole && *fd >= 0
		}
		if !whole {
			fc.Close()
			lost++
			continue
		}
		u.Conns = append(u.Conns, fc)
	}
	for _, l := range st.Listeners {
		f := byID[l.ID]
		if f == nil {
			continue
		}
		delete(byID, l.ID)
		ln, err := net.FileListener(f)
		f.Close()
		if err == nil {
			u.Listeners[l.Key] = ln
		}
	}
	return u, lost, nil
}

// idOf names fd's file.
func idOf(fd int) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileID{}, fmt.Errorf("fstat fd %d: %w", fd, err)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return FileID{}, fmt.Errorf("fcntl fd %d: %w", fd, err)
	}
	return FileID{Dev: uint64(st.Dev), Ino: uint64(st.Ino), Mode: fl & unix.O_ACCMODE}, nil
}

// listenerFD returns a duplicate of ln's descriptor.
func listenerFD(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no file descriptor", ln)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 3) }); err != nil {
		return -1, err
	}
	return fd, dupErr
}
