//go:build linux

package handover

import (
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"rsp/internal/splice"
)

// frozen returns a connection as Freeze gives it: two sockets (one end
// of each socketpair; the other ends are returned) and a pipe holding
// data going up.
func frozen(t *testing.T, data string) (splice.FrozenConn, [2]int) {
	t.Helper()
	var peers [2]int
	var mine [2]int
	for i := range 2 {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		mine[i], peers[i] = sp[0], sp[1]
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(p[1], []byte(data)); err != nil {
		t.Fatal(err)
	}
	fc := splice.FrozenConn{
		ID: 7, Frontend: "f", Backend: "b", Server: "b/s", ClientFD: mine[0], ServerFD: mine[1], ClientUnix: true, ServerUnix: true,
		Up:   splice.FrozenHalf{PipeR: p[0], PipeW: p[1], N: len(data), Sent: 100},
		Down: splice.FrozenHalf{PipeR: -1, PipeW: -1, EOF: true, Done: true, Sent: 5},
	}
	return fc, peers
}

// pass gives copies of p's files as a new process gets them.
func pass(t *testing.T, p *Packed, drop func(i int) bool) ([]*os.File, []string) {
	t.Helper()
	var files []*os.File
	var names []string
	for i, f := range p.Files {
		if drop != nil && drop(i) {
			continue
		}
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(fd), p.Names[i]))
		names = append(names, p.Names[i])
	}
	return files, names
}

// TestPackUnpack: what Pack describes, Unpack rebuilds in another set of
// descriptors: the connection's fields, its sockets (still connected to
// their peers), its pipe with the bytes in flight (both ends told apart,
// though they share an inode) and the listeners by key.
func TestPackUnpack(t *testing.T) {
	fc, peers := frozen(t, "in flight")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, err := Pack([]splice.FrozenConn{fc}, []Listener{{Key: "listen 127.0.0.1:0", Listener: ln}})
	if err != nil {
		t.Fatal(err)
	}
	files, names := pass(t, p, nil)
	p.Close()
	fc.Forget()
	if names[0] != StateName || len(names) != 6 {
		t.Fatalf("names %v; want the state first, then 4 descriptors of the connection and the listener", names)
	}
	u, lost, err := Unpack(files, names)
	if err != nil || lost != 0 || len(u.Conns) != 1 || len(u.Listeners) != 1 {
		t.Fatalf("Unpack: %+v, lost %d, %v", u, lost, err)
	}
	got := u.Conns[0]
	defer got.Close()
	if got.ID != 7 || got.Server != "b/s" || got.Up.N != 9 || got.Up.Sent != 100 || !got.Down.Done || got.Down.PipeR != -1 {
		t.Errorf("connection %+v", got)
	}
	buf := make([]byte, 64)
	if n, err := unix.Read(got.Up.PipeR, buf); err != nil || string(buf[:n]) != "in flight" {
		t.Errorf("pipe read end: %q, %v", buf[:n], err)
	}
	if _, err := unix.Write(got.Up.PipeW, []byte("x")); err != nil {
		t.Errorf("pipe write end: %v", err)
	}
	if _, err := unix.Write(got.ClientFD, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Read(peers[0], buf); err != nil || string(buf[:n]) != "hello" {
		t.Errorf("client socket reaches its peer: %q, %v", buf[:n], err)
	}
	if _, ok := u.Listeners["listen 127.0.0.1:0"]; !ok {
		t.Errorf("listeners %v", u.Listeners)
	}
	for _, l := range u.Listeners {
		l.Close()
	}
}

// TestUnpackMissing: a connection whose descriptors did not all come is
// reset and counted lost; a hand-over without its state is refused.
func TestUnpackMissing(t *testing.T) {
	fc, peers := frozen(t, "abc")
	p, err := Pack([]splice.FrozenConn{fc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	fc.Forget()
	files, names := pass(t, p, func(i int) bool { return i == 3 }) // the pipe's read end
	u, lost, err := Unpack(files, names)
	if err != nil || lost != 1 || len(u.Conns) != 0 {
		t.Fatalf("Unpack with a descriptor missing: %+v, lost %d, %v", u, lost, err)
	}
	files, names = pass(t, p, func(i int) bool { return i == 0 })
	if _, _, err := Unpack(files, names); err == nil {
		t.Error("Unpack without the state succeeded")
	}
	unix.Close(peers[0])
	unix.Close(peers[1])
}

// TestPackUnpackPending: a connection not yet connected travels as its
// client socket alone, with what the next process needs to route it.
func TestPackUnpackPending(t *testing.T) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[1])
	fc := splice.FrozenConn{
		ID: 9, Frontend: "f", Backend: "b", ClientFD: sp[0], ServerFD: -1, ClientUnix: true, Tries: 1,
		Up: splice.FrozenHalf{PipeR: -1, PipeW: -1}, Down: splice.FrozenHalf{PipeR: -1, PipeW: -1},
		Pending: true, HeaderRead: true,
	}
	p, err := Pack([]splice.FrozenConn{fc}, nil)
	if err != nil {
		t.Fatalf("Pack of a pending connection: %v", err)
	}
	files, names := pass(t, p, nil)
	p.Close()
	fc.Forget()
	if len(names) != 2 {
		t.Fatalf("names %v; want the state and the client socket", names)
	}
	u, lost, err := Unpack(files, names)
	if err != nil || lost != 0 || len(u.Conns) != 1 {
		t.Fatalf("Unpack: %+v, lost %d, %v", u, lost, err)
	}
	got := u.Conns[0]
	defer got.Close()
	if !got.Pending || !got.HeaderRead || got.ServerFD != -1 || got.Tries != 1 || got.Up.PipeR != -1 || got.Down.PipeW != -1 {
		t.Errorf("connection %+v", got)
	}
	if _, err := unix.Write(sp[1], []byte("first bytes")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Read(got.ClientFD, buf); err != nil || string(buf[:n]) != "first bytes" {
		t.Errorf("client socket from its peer: %q, %v", buf[:n], err)
	}
}
