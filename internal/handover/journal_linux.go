//go:build linux

package handover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"rsp/internal/activation"
	"rsp/internal/splice"
)

// The journal is a memfd, shared with systemd's store and mapped into
// the process, that says which stored sockets form each connection and
// which connection each stored pipe's bytes belong to. Its layout:
//
//	header (journalHeader bytes): magic, version, loops, conn slots per
//	loop, pipe slots per loop, then per loop the conn and pipe slots
//	ever used (high-water marks).
//	conn records (connRecord bytes each), loop by loop.
//	pipe records (pipeRecord bytes each), loop by loop.
//
// Every field is little-endian. The process writes it with plain stores:
// a SIGKILL loses no store already made, since the pages are the kernel's.
const (
	journalMagic   = 0x4a505352 // "RSPJ"
	journalVersion = 1
	journalHeader  = 4096
	connRecord     = 512
	pipeRecord     = 16
	maxLoops       = (journalHeader - 64) / 8
)

// Offsets in a conn record.
const (
	cState    = 0   // u32: recFree, recLive or recTainted
	cGen      = 4   // u32: how many times the slot was used
	cClient   = 8   // u64 dev, u64 ino of the client socket
	cServer   = 24  // u64 dev, u64 ino of the server socket
	cBorn     = 40  // i64 unix ns
	cConnect  = 48  // i64 ns
	cTries    = 56  // u32
	cFlags    = 60  // u32: flagClientUnix, flagServerUnix, flagClientFirst
	cHalfAt   = 64  // i64 unix ns; 0 if no direction ended
	cSentUp   = 72  // i64
	cSentDown = 80  // i64
	cPeer     = 88  // 16 bytes address, u16 port at 104, u8 4/6/0 at 106
	cFrontend = 112 // u16 length + 126 bytes
	cBackend  = 240 // u16 length + 126 bytes
	cServerNm = 368 // u16 length + 142 bytes
)

// Offsets in a pipe record.
const (
	pState = 0  // u32: recFree or recLive
	pOwner = 4  // u32: the owning conn's ref (slot+1); 0 none
	pGen   = 8  // u32: the owner's generation
	pDown  = 12 // u32: 1 if it carries server → client
)

const (
	recFree    = 0
	recLive    = 1
	recTainted = 2
)

const (
	flagClientUnix  = 1
	flagServerUnix  = 2
	flagClientFirst = 4
)

// Journal keeps rsp's live connections recoverable after a crash
// (handover = "crash"): each established connection's sockets and each
// pipe are stored in systemd's file descriptor store while they live,
// and a memfd in the same store says what they are (Recover reads it).
type Journal struct {
	mem     []byte
	mfd     int
	name    string // the memfd's name in the store: JournalPrefix + pid-nonce
	loops   int
	perLoop int // conn slots per loop
	pipes   int // pipe slots per loop
	sock    int // datagram socket connected to systemd's notification socket
	addr    *unix.SockaddrUnix
	parts   []*loopJournal
	// kept counts the connections whose sockets' store systemd has been
	// sent and not their removal; waiting the stores and removals the loops hold
	// back for room in systemd's queue.
	kept, waiting atomic.Int64
}

// OpenJournal makes the journal of a relay with loops event loops whose
// connections and pipes may take up to fds descriptors of systemd's store
// (FDSTORE: two sockets and two pipes of two ends each per connection).
// Publish stores it with systemd.
func OpenJournal(loops, fds int) (*Journal, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	switch {
	case path == "":
		return nil, errors.New("NOTIFY_SOCKET is not set: not run by systemd")
	case loops < 1 || loops > maxLoops:
		return nil, fmt.Errorf("journal: %d event loops; at most %d", loops, maxLoops)
	}
	// The pid and a nonce: a pid may come again after a wrap.
	id := strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36)
	j := &Journal{name: activation.JournalPrefix + id, loops: loops, addr: &unix.SockaddrUnix{Name: path}}
	// Per loop: perLoop connections (2 sockets) and 2*perLoop+64 pipes
	// (2 ends); one descriptor is the journal's.
	j.perLoop = ((fds-1)/loops - 128) / 6
	if j.perLoop < 16 {
		return nil, fmt.Errorf("journal: a store of %d descriptors holds too few connections for %d event loops; raise FileDescriptorStoreMax= and FDSTORE=", fds, loops)
	}
	j.pipes = 2*j.perLoop + 64
	size := journalHeader + loops*(j.perLoop*connRecord+j.pipes*pipeRecord)
	mfd, err := unix.MemfdCreate(j.name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("journal memfd: %w", err)
	}
	j.mfd = mfd
	if err := unix.Ftruncate(mfd, int64(size)); err != nil {
		return nil, fmt.Errorf("journal memfd of %d bytes: %w", size, err)
	}
	if j.mem, err = unix.Mmap(mfd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("map the journal: %w", err)
	}
	le := binary.LittleEndian
	le.PutUint32(j.mem[0:], journalMagic)
	le.PutUint32(j.mem[4:], journalVersion)
	le.PutUint32(j.mem[8:], uint32(loops))
	le.PutUint32(j.mem[12:], uint32(j.perLoop))
	le.PutUint32(j.mem[16:], uint32(j.pipes))
	// Non-blocking: an event loop must not wait for PID 1. What systemd's
	// full queue cannot take waits in its loop's part (Flush). Connected,
	// so that the socket polls writable once that queue has room (WaitFD).
	if j.sock, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0); err != nil {
		unix.Munmap(j.mem)
		unix.Close(mfd)
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := unix.Connect(j.sock, j.addr); err != nil {
		j.Close()
		return nil, fmt.Errorf("connect to systemd's notification socket %s: %w", path, err)
	}
	for i := range loops {
		j.parts = append(j.parts, &loopJournal{j: j, index: i})
	}
	return j, nil
}

// Capacity returns how many connections the journal can hold.
func (j *Journal) Capacity() int { return j.loops * j.perLoop }

// Counts returns how many connections' sockets systemd's store holds for
// a successor now, and how many stores and removals wait in rsp for room
// in systemd's queue.
func (j *Journal) Counts() (kept, waiting int64) { return j.kept.Load(), j.waiting.Load() }

// Publish stores the journal itself with systemd: once done, a crash
// leaves what a successor needs. It is stored after what a crashed rsp
// left has been taken out of the store (Forget), which may have filled it.
func (j *Journal) Publish() error {
	if err := j.sendWait(storeMsg(nil, j.name), j.mfd); err != nil {
		return fmt.Errorf("store the journal with systemd: %w", err)
	}
	return nil
}

// Close stops journaling; what is stored stays stored.
func (j *Journal) Close() {
	unix.Close(j.sock)
	unix.Close(j.mfd)
	unix.Munmap(j.mem)
}

// Loop returns loop index's part of the journal.
func (j *Journal) Loop(index int) splice.LoopJournal { return j.parts[index] }

// send sends msg with fds to systemd's notification socket: the one
// polled for room (WaitFD), connected again if its path names a new one.
func (j *Journal) send(msg []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	err := unix.Sendmsg(j.sock, msg, oob, nil, 0)
	if err == unix.ECONNREFUSED || err == unix.ENOTCONN {
		if err = unix.Connect(j.sock, j.addr); err == nil {
			err = unix.Sendmsg(j.sock, msg, oob, nil, 0)
		}
	}
	if err != nil {
		return fmt.Errorf("send to %s: %w", j.addr.Name, err)
	}
	return nil
}

// sendWait is send, waiting up to 5 s while systemd's queue is full.
func (j *Journal) sendWait(msg []byte, fds ...int) error {
	for range 500 {
		err := j.send(msg, fds...)
		if !errors.Is(err, unix.EAGAIN) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return j.send(msg, fds...)
}

// storeMsg appends to b the message that stores descriptors as name.
func storeMsg(b []byte, name string) []byte {
	b = append(b, "FDSTORE=1\nFDPOLL=0\nFDNAME="...)
	return append(b, name...)
}

// loopJournal is one loop's slots: conn slots [index*perLoop,
// (index+1)*perLoop) and pipe slots likewise, each used lowest first.
type loopJournal struct {
	j           *Journal
	index       int
	free, pfree []int32 // local slots given back
	hw, phw     int32   // local slots ever used
	stored      []bool  // by local conn slot: its store was sent (counted in kept)
	msg         []byte
	// queue holds what could not be sent yet (systemd's queue was
	// full), in order: a slot is used again only once its removal is
	// sent, and a store not sent when its connection or pipe ends is
	// dropped with its removal.
	queue   []journalOp
	counted int  // len(queue) as last added to j.waiting
	blocked bool // the last send found systemd's queue full
}

// journalOp is a store (fds set) or a removal of a connection's or a
// pipe's descriptors.
type journalOp struct {
	remove, pipe bool
	ref          int32
	fds          [2]int
}

// connAt returns the record of ref, a global conn slot + 1.
func (lj *loopJournal) connAt(ref int32) []byte {
	off := journalHeader + int(ref-1)*connRecord
	return lj.j.mem[off : off+connRecord]
}

// pipeAt returns the record of pipe ref.
func (lj *loopJournal) pipeAt(ref int32) []byte {
	j := lj.j
	off := journalHeader + j.loops*j.perLoop*connRecord + int(ref-1)*pipeRecord
	return j.mem[off : off+pipeRecord]
}

// alloc takes a local slot from free or past *hw (at most limit), and
// records the high-water mark at header offset at; -1 if none is left.
func (lj *loopJournal) alloc(free *[]int32, hw *int32, limit int, at int) int32 {
	if n := len(*free); n > 0 {
		s := (*free)[n-1]
		*free = (*free)[:n-1]
		return s
	}
	if int(*hw) >= limit {
		return -1
	}
	*hw++
	binary.LittleEndian.PutUint32(lj.j.mem[at:], uint32(*hw))
	return *hw - 1
}

// connName is the store's name of conn ref; pipeName of a pipe's.
func (lj *loopJournal) connName(b []byte, ref int32) []byte {
	b = append(b, lj.j.name...)
	b = append(b, ".c."...)
	return strconv.AppendInt(b, int64(ref), 10)
}

func (lj *loopJournal) pipeName(b []byte, ref int32) []byte {
	b = append(b, lj.j.name...)
	b = append(b, ".p."...)
	return strconv.AppendInt(b, int64(ref), 10)
}

// Conn records fc and stores its two sockets.
func (lj *loopJournal) Conn(fc *splice.FrozenConn) int32 {
	j := lj.j
	s := lj.alloc(&lj.free, &lj.hw, j.perLoop, 64+4*lj.index)
	if s < 0 {
		return 0
	}
	ref := int32(lj.index*j.perLoop) + s + 1
	rec := lj.connAt(ref)
	le := binary.LittleEndian
	var cid, sid unix.Stat_t
	err1 := unix.Fstat(fc.ClientFD, &cid)
	err2 := unix.Fstat(fc.ServerFD, &sid)
	gen := le.Uint32(rec[cGen:]) + 1
	clear(rec)
	le.PutUint32(rec[cGen:], gen)
	le.PutUint64(rec[cClient:], uint64(cid.Dev))
	le.PutUint64(rec[cClient+8:], cid.Ino)
	le.PutUint64(rec[cServer:], uint64(sid.Dev))
	le.PutUint64(rec[cServer+8:], sid.Ino)
	le.PutUint64(rec[cBorn:], uint64(fc.Born.UnixNano()))
	le.PutUint64(rec[cConnect:], uint64(fc.Connect))
	le.PutUint32(rec[cTries:], uint32(fc.Tries))
	var flags uint32
	if fc.ClientUnix {
		flags |= flagClientUnix
	}
	if fc.ServerUnix {
		flags |= flagServerUnix
	}
	if fc.ClientFirst {
		flags |= flagClientFirst
	}
	le.PutUint32(rec[cFlags:], flags)
	if fc.HalfClosed > 0 {
		le.PutUint64(rec[cHalfAt:], uint64(time.Now().Add(-fc.HalfClosed).UnixNano()))
	}
	le.PutUint64(rec[cSentUp:], uint64(fc.Up.Sent))
	le.PutUint64(rec[cSentDown:], uint64(fc.Down.Sent))
	if a := fc.Peer.Addr(); a.IsValid() {
		b := a.As16()
		copy(rec[cPeer:], b[:])
		le.PutUint16(rec[cPeer+16:], fc.Peer.Port())
		rec[cPeer+18] = 6
		if a.Is4() {
			rec[cPeer+18] = 4
		}
	}
	fits := putName(rec[cFrontend:cBackend], fc.Frontend) && putName(rec[cBackend:cServerNm], fc.Backend) &&
		putName(rec[cServerNm:], fc.Server)
	state := uint32(recLive)
	if !fits || err1 != nil || err2 != nil {
		state = recTainted // stored, so that a successor resets it
	}
	le.PutUint32(rec[cState:], state)
	lj.do(journalOp{ref: ref, fds: [2]int{fc.ClientFD, fc.ServerFD}})
	return ref
}

// putName writes name as a u16 length and its bytes into b; false if it
// does not fit.
func putName(b []byte, name string) bool {
	if len(name) > len(b)-2 {
		return false
	}
	binary.LittleEndian.PutUint16(b, uint16(len(name)))
	copy(b[2:], name)
	return true
}

// Sent records the bytes a direction delivered.
func (lj *loopJournal) Sent(ref int32, down bool, n int64) {
	if ref == 0 {
		return
	}
	off := cSentUp
	if down {
		off = cSentDown
	}
	binary.LittleEndian.PutUint64(lj.connAt(ref)[off:], uint64(n))
}

// Half records the end of the first direction.
func (lj *loopJournal) Half(ref int32, at time.Time, clientFirst bool) {
	if ref == 0 {
		return
	}
	rec := lj.connAt(ref)
	le := binary.LittleEndian
	le.PutUint64(rec[cHalfAt:], uint64(at.UnixNano()))
	if clientFirst {
		le.PutUint32(rec[cFlags:], le.Uint32(rec[cFlags:])|flagClientFirst)
	}
}

// Taint marks a live conn as one to reset after a crash.
func (lj *loopJournal) Taint(ref int32) {
	if ref == 0 {
		return
	}
	rec := lj.connAt(ref)
	if binary.LittleEndian.Uint32(rec[cState:]) == recLive {
		binary.LittleEndian.PutUint32(rec[cState:], recTainted)
	}
}

// End frees conn ref's slot and removes its sockets from the store.
func (lj *loopJournal) End(ref int32) bool {
	if ref == 0 {
		return true
	}
	binary.LittleEndian.PutUint32(lj.connAt(ref)[cState:], recFree)
	return lj.do(journalOp{remove: true, ref: ref})
}

// do sends op, or queues it behind what is queued; false if it waits. A
// removal whose store is still queued cancels it instead.
func (lj *loopJournal) do(op journalOp) bool {
	defer lj.count()
	if op.remove {
		for i, q := range lj.queue {
			if !q.remove && q.pipe == op.pipe && q.ref == op.ref {
				lj.queue = append(lj.queue[:i], lj.queue[i+1:]...)
				lj.release(op)
				return len(lj.queue) == 0
			}
		}
		if !op.pipe && lj.sent(op.ref, false) {
			lj.j.kept.Add(-1)
		}
	}
	if len(lj.queue) > 0 || !lj.send(op) {
		lj.queue = append(lj.queue, op)
		return false
	}
	return true
}

// count brings j.waiting up to date with the queue's length.
func (lj *loopJournal) count() {
	if d := len(lj.queue) - lj.counted; d != 0 {
		lj.j.waiting.Add(int64(d))
		lj.counted = len(lj.queue)
	}
}

// sent reports whether conn ref's store was sent, and records now.
func (lj *loopJournal) sent(ref int32, now bool) bool {
	s := int(ref - 1 - int32(lj.index*lj.j.perLoop))
	for len(lj.stored) <= s {
		lj.stored = append(lj.stored, false)
	}
	was := lj.stored[s]
	lj.stored[s] = now
	return was
}

// send sends op now; false if it could not. A removal that could not
// go is kept (its slot stays taken: a new store of the same name before
// it would be removed by it); a store that failed for another reason
// than a full queue is dropped (a successor finds the connection or pipe
// not whole in the store, and resets it).
func (lj *loopJournal) send(op journalOp) bool {
	msg := lj.msg[:0]
	if op.remove {
		msg = append(msg, "FDSTOREREMOVE=1\nFDNAME="...)
	} else {
		msg = storeMsg(msg, "")
	}
	if op.pipe {
		msg = lj.pipeName(msg, op.ref)
	} else {
		msg = lj.connName(msg, op.ref)
	}
	lj.msg = msg
	var err error
	if op.remove {
		err = lj.j.send(msg)
	} else {
		err = lj.j.send(msg, op.fds[0], op.fds[1])
	}
	lj.blocked = errors.Is(err, unix.EAGAIN)
	switch {
	case op.remove && err != nil, lj.blocked:
		return false
	case op.remove:
		lj.release(op)
	case err == nil && !op.pipe:
		lj.sent(op.ref, true)
		lj.j.kept.Add(1)
	}
	return true
}

// release frees a removed connection's or pipe's slot.
func (lj *loopJournal) release(op journalOp) {
	if op.pipe {
		lj.pfree = append(lj.pfree, op.ref-1-int32(lj.index*lj.j.pipes))
	} else {
		lj.free = append(lj.free, op.ref-1-int32(lj.index*lj.j.perLoop))
	}
}

// Flush sends what is queued; with wait, for up to 5 s.
func (lj *loopJournal) Flush(wait bool) bool {
	defer lj.count()
	for try := 0; len(lj.queue) > 0; try++ {
		n := 0
		for n < len(lj.queue) && lj.send(lj.queue[n]) {
			n++
		}
		lj.queue = lj.queue[:copy(lj.queue, lj.queue[n:])]
		if len(lj.queue) == 0 || !wait || try == 500 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return len(lj.queue) > 0
}

// WaitFD returns the journal's socket while systemd's full queue holds
// back what is queued: it polls writable once that queue has room. -1
// if nothing waits for that (what is left is tried again at a tick).
func (lj *loopJournal) WaitFD() int {
	if len(lj.queue) > 0 && lj.blocked {
		return lj.j.sock
	}
	return -1
}

// Pipe records a pipe and stores its two ends.
func (lj *loopJournal) Pipe(r, w int) (int32, error) {
	j := lj.j
	s := lj.alloc(&lj.pfree, &lj.phw, j.pipes, 64+4*j.loops+4*lj.index)
	if s < 0 {
		return 0, fmt.Errorf("journal: all %d pipe slots of loop %d in use", j.pipes, lj.index)
	}
	ref := int32(lj.index*j.pipes) + s + 1
	rec := lj.pipeAt(ref)
	clear(rec)
	binary.LittleEndian.PutUint32(rec[pState:], recLive)
	lj.do(journalOp{pipe: true, ref: ref, fds: [2]int{r, w}})
	return ref, nil
}

// Own records whose bytes pipe carries from now on.
func (lj *loopJournal) Own(pipe, conn int32, down bool) {
	if pipe == 0 {
		return
	}
	rec := lj.pipeAt(pipe)
	le := binary.LittleEndian
	var gen, dir uint32
	if conn != 0 {
		gen = le.Uint32(lj.connAt(conn)[cGen:])
	}
	if down {
		dir = 1
	}
	le.PutUint32(rec[pGen:], gen)
	le.PutUint32(rec[pDown:], dir)
	le.PutUint32(rec[pOwner:], uint32(conn))
}

// PipeEnd frees pipe's slot and removes it from the store.
func (lj *loopJournal) PipeEnd(pipe int32) bool {
	if pipe == 0 {
		return true
	}
	binary.LittleEndian.PutUint32(lj.pipeAt(pipe)[pState:], recFree)
	return lj.do(journalOp{remove: true, pipe: true, ref: pipe})
}
