//go:build linux

package handover

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rsp/internal/splice"
)

// tcpPair returns the two ends of a loopback TCP connection: the
// remote's as a net.Conn, the local's as a raw descriptor.
func tcpPair(t *testing.T, ln net.Listener) (remote net.Conn, local int) {
	t.Helper()
	remote, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remote.Close() })
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.(*net.TCPConn).File()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return remote, fd
}

// pipeWith returns a pipe holding b.
func pipeWith(t *testing.T, b string) (r, w int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if b != "" {
		unix.Write(p[1], []byte(b))
	}
	return p[0], p[1]
}

// TestJournalRecover: what a journal recorded is rebuilt from the store
// alone, as after a crash: a live connection with its pipe's bytes, names
// and counters; a tainted one, one whose direction two pipes claim, and
// one missing a socket are reset; an ended one and a pipe of an ended
// connection are gone from the store; a pipe's bytes never reach another
// connection.
func TestJournalRecover(t *testing.T) {
	store, err := NewFDStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	t.Setenv("NOTIFY_SOCKET", store.Path)
	j, err := OpenJournal(2, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Publish(); err != nil {
		t.Fatal(err)
	}
	lj := j.Loop(1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	born := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	conn := func(name string) (cRemote, sRemote net.Conn, fc splice.FrozenConn, ref int32) {
		cRemote, cfd := tcpPair(t, ln)
		sRemote, sfd := tcpPair(t, ln)
		fc = splice.FrozenConn{Frontend: "fe-" + name, Backend: "be", Server: "be/" + name, Peer: netip.MustParseAddrPort("192.0.2.7:4242"),
			ClientFD: cfd, ServerFD: sfd, Born: born, Connect: 3 * time.Millisecond, Tries: 2,
			Up: splice.FrozenHalf{Sent: 100}, Down: splice.FrozenHalf{Sent: 200}}
		ref = lj.Conn(&fc)
		if ref == 0 {
			t.Fatalf("conn %s not journaled", name)
		}
		return cRemote, sRemote, fc, ref
	}
	pipe := func(data string, owner int32, down bool) int32 {
		r, w := pipeWith(t, "")
		ref, err := lj.Pipe(r, w)
		if err != nil {
			t.Fatal(err)
		}
		lj.Own(ref, owner, down)
		unix.Write(w, []byte(data))
		lj.Flush(true) // stored before this process's copies close
		unix.Close(r)  // the store holds it
		unix.Close(w)
		return ref
	}
	closeFDs := func(fc splice.FrozenConn) { unix.Close(fc.ClientFD); unix.Close(fc.ServerFD) }

	_, _, live, liveRef := conn("live")
	pipe("hello", liveRef, true)
	lj.Sent(liveRef, false, 123)
	lj.Half(liveRef, time.Now().Add(-time.Second), true)
	taintedC, _, tainted, taintedRef := conn("tainted")
	lj.Taint(taintedRef)
	twoC, _, two, twoRef := conn("two")
	pipe("a", twoRef, false)
	pipe("b", twoRef, false)
	_, _, ended, endedRef := conn("ended")
	pipe("stale", endedRef, false)
	lj.End(endedRef)
	// "half" takes the slot "ended" left.
	_, _, halfGone, halfRef := conn("half")
	pipe("", liveRef, false) // empty: nothing to resume
	// "lostpipe" has bytes in a pipe systemd did not keep.
	_, _, lost, lostRef := conn("lostpipe")
	lostPipe := pipe("gone", lostRef, false)
	lj.Flush(true)
	for _, fc := range []splice.FrozenConn{live, tainted, two, ended, halfGone, lost} {
		closeFDs(fc) // the process dies: the store keeps them
	}
	// What systemd's full queue held back goes as the event loop would
	// send it: by Flush.
	if !waitFor(func() bool { lj.Flush(false); n, _ := store.Len(); return n == 1+2*5+2*6 }) {
		n, _ := store.Len()
		t.Fatalf("store holds %d descriptors; want the journal, 5 connections' sockets and 6 pipes' ends", n)
	}
	files, names, err := store.Files()
	if err != nil {
		t.Fatal(err)
	}
	// Drop one socket of "half" and the pipe of "lostpipe", as if systemd
	// never got them.
	droppedSocket := false
	var dropped []string
	for i := 0; i < len(names); i++ {
		socket := strings.HasSuffix(names[i], ".c."+itoa(halfRef)) && !droppedSocket
		if socket || strings.HasSuffix(names[i], ".p."+itoa(lostPipe)) {
			droppedSocket = droppedSocket || socket
			dropped = append(dropped, names[i])
			files[i].Close()
			files, names = append(files[:i], files[i+1:]...), append(names[:i], names[i+1:]...)
			i--
		}
	}
	rec := Recover(files, names)
	if len(rec.Conns) != 1 || rec.Reset != 4 {
		t.Fatalf("recovered %d connections and reset %d; want 1 and 4 (tainted, two pipes, a socket missing, a pipe missing)", len(rec.Conns), rec.Reset)
	}
	fc := rec.Conns[0]
	defer fc.Close()
	if fc.Frontend != "fe-live" || fc.Server != "be/live" || fc.Backend != "be" || fc.Peer != live.Peer || !fc.Born.Equal(born) ||
		fc.Connect != 3*time.Millisecond || fc.Tries != 2 || !fc.ClientFirst || fc.HalfClosed < time.Second || fc.HalfClosed > time.Minute {
		t.Errorf("recovered %+v; want the journaled names, peer, times and tries", fc)
	}
	if fc.Up.Sent != 123 || fc.Down.Sent != 200 || fc.Up.N != 0 || fc.Up.PipeR != -1 || fc.Down.N != 5 {
		t.Errorf("halves %+v / %+v; want sent 123/200 and the 5 bytes of the down pipe", fc.Up, fc.Down)
	}
	buf := make([]byte, 16)
	if n, _ := unix.Read(fc.Down.PipeR, buf); string(buf[:n]) != "hello" {
		t.Errorf("down pipe holds %q; want hello", buf[:n])
	}
	if err := Forget(append(rec.Names, dropped...)); err != nil { // the test's store has what was dropped
		t.Fatal(err)
	}
	if !waitFor(func() bool { n, _ := store.Len(); return n == 0 }) {
		n, _ := store.Len()
		t.Errorf("store holds %d descriptors after Forget; want 0", n)
	}
	// Only now is the last copy of the reset connections' sockets closed.
	for what, c := range map[string]net.Conn{"tainted": taintedC, "two pipes": twoC} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s connection: client read %v; want a reset", what, err)
		}
	}
}

func itoa(v int32) string { return strconv.Itoa(int(v)) }

// waitFor polls cond for up to 5 s: the store takes messages on its own
// goroutine.
func waitFor(cond func() bool) bool {
	for range 500 {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}

// TestJournalQueueFull: when systemd's queue is full the journal never
// blocks its event loop: stores and removals wait, in order, for Flush; a
// connection that ends before its store was sent is never stored nor
// removed; a slot is used again only once its removal is sent.
func TestJournalQueueFull(t *testing.T) {
	dir := t.TempDir()
	sink, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sink)
	path := dir + "/notify"
	if err := unix.Bind(sink, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	j, err := OpenJournal(1, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	lj := j.Loop(0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, cfd := tcpPair(t, ln)
	_, sfd := tcpPair(t, ln)
	defer unix.Close(cfd)
	defer unix.Close(sfd)
	fc := splice.FrozenConn{Frontend: "f", Backend: "b", Server: "b/s", ClientFD: cfd, ServerFD: sfd, Born: time.Now()}
	var refs []int32
	queued := 0
	for len(refs) < 4000 && queued < 3 { // until stores wait, and some more
		ref := lj.Conn(&fc)
		if ref == 0 {
			t.Fatal("connection not journaled")
		}
		refs = append(refs, ref)
		if len(lj.(*loopJournal).queue) > 0 {
			queued++
		}
	}
	if queued == 0 {
		t.Fatalf("%d stores, none waited: systemd's queue never filled", len(refs))
	}
	if kept, waiting := j.Counts(); kept != int64(len(refs)-queued) || waiting != int64(queued) {
		t.Errorf("Counts = %d kept, %d waiting; want %d and %d", kept, waiting, len(refs)-queued, queued)
	}
	// While stores wait, WaitFD polls writable only once systemd's queue
	// has room.
	wfd := lj.WaitFD()
	if wfd < 0 {
		t.Fatal("WaitFD is -1 with stores held back by a full queue")
	}
	writable := func() bool {
		p := []unix.PollFd{{Fd: int32(wfd), Events: unix.POLLOUT}}
		n, err := unix.Poll(p, 0)
		return err == nil && n == 1 && p[0].Revents&unix.POLLOUT != 0
	}
	if writable() {
		t.Error("WaitFD's descriptor polls writable with systemd's queue full")
	}
	first, last := refs[0], refs[len(refs)-1]
	if lj.End(first) {
		t.Fatal("End reported its removal sent behind a full queue")
	}
	lj.End(last) // its store was never sent: both are dropped
	if !lj.Flush(false) {
		t.Fatal("Flush reported nothing left with systemd's queue full")
	}
	if kept, waiting := j.Counts(); kept != int64(len(refs)-queued-1) || waiting != int64(queued) {
		t.Errorf("after two ends: Counts = %d kept, %d waiting; want %d and %d (the first's removal waits, the last's store is dropped)", kept, waiting, len(refs)-queued-1, queued)
	}
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(8))
	var got []string
	// takeOne reads one message as systemd would; false if none is there.
	takeOne := func() bool {
		n, oobn, _, _, err := unix.Recvmsg(sink, buf, oob, 0)
		if err != nil {
			return false
		}
		got = append(got, strings.ReplaceAll(string(buf[:n]), "\n", " "))
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		}
		return true
	}
	drain := func() {
		for takeOne() {
		}
	}
	if !takeOne() {
		t.Fatal("systemd's side has nothing to read with its queue full")
	}
	// Where systemd raised net.unix.max_dgram_qlen, the sender's send
	// buffer is what filled: it polls writable once a quarter used.
	for range 4000 {
		if writable() || !takeOne() {
			break
		}
	}
	if !writable() {
		t.Error("WaitFD's descriptor does not poll writable once systemd's queue has room")
	}
	for range 100 {
		drain()
		if !lj.Flush(false) {
			break
		}
	}
	drain()
	if lj.Flush(false) {
		t.Fatal("Flush left messages unsent with systemd's queue drained")
	}
	if fd := lj.WaitFD(); fd != -1 {
		t.Errorf("WaitFD = %d with nothing left; want -1", fd)
	}
	if kept, waiting := j.Counts(); kept != int64(len(refs)-2) || waiting != 0 {
		t.Errorf("once all is sent: Counts = %d kept, %d waiting; want %d and 0", kept, waiting, len(refs)-2)
	}
	want := len(refs) - 1 + 1 // every store but the last's, and the first's removal
	if len(got) != want {
		t.Fatalf("systemd got %d messages; want %d:\n%s", len(got), want, strings.Join(got, "\n"))
	}
	for i, m := range got[:len(got)-1] {
		if !strings.HasPrefix(m, "FDSTORE=1") || !strings.HasSuffix(m, ".c."+itoa(refs[i])) {
			t.Errorf("message %d is %q; want the store of conn %d", i, m, refs[i])
		}
	}
	if m := got[len(got)-1]; !strings.HasPrefix(m, "FDSTOREREMOVE=1") || !strings.HasSuffix(m, ".c."+itoa(first)) {
		t.Errorf("last message is %q; want the removal of conn %d, after every store", m, first)
	}
	// Both slots are free again: the one whose store was dropped and the
	// one whose removal went.
	a, b := lj.Conn(&fc), lj.Conn(&fc)
	if !(a == first && b == last || a == last && b == first) {
		t.Errorf("new connections got refs %d and %d; want the freed %d and %d", a, b, first, last)
	}
}
