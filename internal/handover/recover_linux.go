//go:build linux

package handover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"rsp/internal/activation"
	"rsp/internal/splice"
)

// Recovered is what rsp processes that ended without handing over
// (a crash, kill -9) left in systemd's store by their journals.
type Recovered struct {
	// Conns can be resumed: their sockets and the bytes in flight, in
	// pipes. Which directions had ended is found again by reading.
	Conns []splice.FrozenConn
	// Reset counts the connections whose state was not whole (bytes in
	// user space, an urgent byte, an end under way, a missing socket):
	// they were reset, never resumed with a gap or a duplicate.
	Reset int
	// Names are the store's names of everything recovered, to remove
	// from the store (Forget) once the connections are resumed.
	Names []string
}

// storedName splits a journal's store name: "rsp-j.ID" (kind 0),
// "rsp-j.ID.c.N" (kind 'c', ref N) or "rsp-j.ID.p.N" (kind 'p'); ID is
// the pid and a nonce.
func storedName(name string) (journal string, kind byte, ref int32, ok bool) {
	rest, found := strings.CutPrefix(name, activation.JournalPrefix)
	if !found {
		return "", 0, 0, false
	}
	id, tail, more := strings.Cut(rest, ".")
	if id == "" || strings.Trim(id, "0123456789abcdefghijklmnopqrstuvwxyz-") != "" {
		return "", 0, 0, false
	}
	journal = activation.JournalPrefix + id
	if !more {
		return journal, 0, 0, true
	}
	k, n, found := strings.Cut(tail, ".")
	v, err := strconv.ParseInt(n, 10, 32)
	if !found || len(k) != 1 || (k[0] != 'c' && k[0] != 'p') || err != nil || v < 1 {
		return "", 0, 0, false
	}
	return journal, k[0], int32(v), true
}

// journalView is a journal read back.
type journalView struct {
	mem                   []byte
	loops, perLoop, pipes int
}

func (v *journalView) conn(ref int32) []byte {
	if ref < 1 || int(ref) > v.loops*v.perLoop {
		return nil
	}
	off := journalHeader + int(ref-1)*connRecord
	return v.mem[off : off+connRecord]
}

func (v *journalView) pipe(ref int32) []byte {
	if ref < 1 || int(ref) > v.loops*v.pipes {
		return nil
	}
	off := journalHeader + v.loops*v.perLoop*connRecord + int(ref-1)*pipeRecord
	return v.mem[off : off+pipeRecord]
}

// readJournal maps a journal memfd for reading.
func readJournal(f *os.File) (*journalView, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if st.Size < journalHeader {
		return nil, fmt.Errorf("journal of %d bytes: too short", st.Size)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map journal: %w", err)
	}
	le := binary.LittleEndian
	v := &journalView{mem: mem, loops: int(le.Uint32(mem[8:])), perLoop: int(le.Uint32(mem[12:])), pipes: int(le.Uint32(mem[16:]))}
	switch {
	case le.Uint32(mem[0:]) != journalMagic:
		err = fmt.Errorf("journal: not an rsp journal")
	case le.Uint32(mem[4:]) != journalVersion:
		err = fmt.Errorf("journal of version %d; this rsp reads version %d", le.Uint32(mem[4:]), journalVersion)
	case v.loops < 1 || v.loops > maxLoops ||
		int64(journalHeader+v.loops*(v.perLoop*connRecord+v.pipes*pipeRecord)) != st.Size:
		err = fmt.Errorf("journal: header does not match its size")
	}
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return v, nil
}

// pending is a connection being put together from the store.
type pending struct {
	files    []*os.File
	up, down *pipeFiles
	conflict bool // two pipes claim the same direction
}

// pipeFiles is a stored pipe: its ends and how many bytes it holds.
type pipeFiles struct {
	r, w *os.File
	n    int
}

func (p *pipeFiles) close() {
	for _, f := range []*os.File{p.r, p.w} {
		if f != nil {
			f.Close()
		}
	}
}

// connKey names a connection of one journal.
type connKey struct {
	journal string
	ref     int32
}

// Recover rebuilds the connections of the journals among files (named as
// passed; other names are ignored and left open). Connections it cannot
// resume are reset, pipes nobody resumes closed; it closes every file
// of a journal's it does not return.
func Recover(files []*os.File, names []string) *Recovered {
	out := &Recovered{}
	views := map[string]*journalView{}
	conns := map[connKey]*pending{}
	var pipes []struct {
		key  connKey
		ref  int32
		p    *pipeFiles
		view string
	}
	seen := map[string]bool{}
	pipeFilesOf := map[connKey]*pipeFiles{}
	for i, f := range files {
		journal, kind, ref, ok := storedName(names[i])
		if !ok {
			continue
		}
		if !seen[names[i]] {
			seen[names[i]] = true
			out.Names = append(out.Names, names[i])
		}
		switch kind {
		case 0:
			if v, err := readJournal(f); err == nil && views[journal] == nil {
				views[journal] = v
			}
			f.Close()
		case 'c':
			k := connKey{journal, ref}
			if conns[k] == nil {
				conns[k] = &pending{}
			}
			conns[k].files = append(conns[k].files, f)
		case 'p':
			k := connKey{journal, ref}
			pf := pipeFilesOf[k]
			if pf == nil {
				pf = &pipeFiles{}
				pipeFilesOf[k] = pf
				pipes = append(pipes, struct {
					key  connKey
					ref  int32
					p    *pipeFiles
					view string
				}{k, ref, pf, journal})
			}
			fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
			switch {
			case fl&unix.O_ACCMODE == unix.O_RDONLY && pf.r == nil:
				pf.r = f
			case fl&unix.O_ACCMODE == unix.O_WRONLY && pf.w == nil:
				pf.w = f
			default:
				f.Close()
			}
		}
	}
	defer func() {
		for _, v := range views {
			unix.Munmap(v.mem)
		}
	}()
	le := binary.LittleEndian
	// Each pipe that holds bytes goes to the direction that owns it.
	for _, sp := range pipes {
		p := sp.p
		v := views[sp.view]
		if p.r != nil {
			p.n, _ = unix.IoctlGetInt(int(p.r.Fd()), unix.TIOCINQ)
		}
		if p.r == nil || p.w == nil {
			p.close() // its owner, if any, is reset (below)
			continue
		}
		var rec []byte
		if v != nil {
			rec = v.pipe(sp.ref)
		}
		if p.n <= 0 || rec == nil || le.Uint32(rec[pState:]) != recLive {
			p.close()
			continue
		}
		owner := connKey{sp.view, int32(le.Uint32(rec[pOwner:]))}
		c := conns[owner]
		crec := v.conn(owner.ref)
		if c == nil || crec == nil || le.Uint32(crec[cGen:]) != le.Uint32(rec[pGen:]) {
			p.close() // its connection is gone: nobody waits for these bytes
			continue
		}
		slot := &c.up
		if le.Uint32(rec[pDown:]) == 1 {
			slot = &c.down
		}
		if *slot != nil {
			c.conflict = true
			p.close()
			continue
		}
		*slot = p
	}
	// A pipe a connection owns that is not all in the store (systemd
	// dropped it, its store full) may have held its bytes.
	for name, v := range views {
		hw := binary.LittleEndian.Uint32
		for l := range v.loops {
			used := int(hw(v.mem[64+4*v.loops+4*l:]))
			for s := range min(used, v.pipes) {
				ref := int32(l*v.pipes + s + 1)
				rec := v.pipe(ref)
				owner := connKey{name, int32(hw(rec[pOwner:]))}
				if hw(rec[pState:]) != recLive || owner.ref == 0 || conns[owner] == nil {
					continue
				}
				if pf := pipeFilesOf[connKey{name, ref}]; pf == nil || pf.r == nil || pf.w == nil {
					conns[owner].conflict = true
				}
			}
		}
	}
	for k, c := range conns {
		v := views[k.journal]
		var rec []byte
		if v != nil {
			rec = v.conn(k.ref)
		}
		fc, ok := resumable(rec, c)
		if ok {
			out.Conns = append(out.Conns, fc)
			continue
		}
		reset := rec == nil || le.Uint32(rec[cState:]) != recFree
		for _, f := range c.files {
			if reset {
				setLinger0(int(f.Fd()))
			}
			f.Close()
		}
		for _, p := range []*pipeFiles{c.up, c.down} {
			if p != nil {
				p.close()
			}
		}
		if reset {
			out.Reset++
		}
	}
	return out
}

// resumable rebuilds the connection that rec describes from its stored
// files, taking them; false if it cannot be resumed as it was.
func resumable(rec []byte, c *pending) (splice.FrozenConn, bool) {
	le := binary.LittleEndian
	if rec == nil || le.Uint32(rec[cState:]) != recLive || c.conflict || len(c.files) != 2 {
		return splice.FrozenConn{}, false
	}
	want := [2]FileID{
		{Dev: le.Uint64(rec[cClient:]), Ino: le.Uint64(rec[cClient+8:])},
		{Dev: le.Uint64(rec[cServer:]), Ino: le.Uint64(rec[cServer+8:])},
	}
	var socks [2]*os.File
	for _, f := range c.files {
		id, err := idOf(int(f.Fd()))
		if err != nil {
			return splice.FrozenConn{}, false
		}
		for i := range want {
			if id.Dev == want[i].Dev && id.Ino == want[i].Ino && socks[i] == nil {
				socks[i] = f
			}
		}
	}
	if socks[0] == nil || socks[1] == nil {
		return splice.FrozenConn{}, false
	}
	flags := le.Uint32(rec[cFlags:])
	fc := splice.FrozenConn{
		Frontend: getName(rec[cFrontend:cBackend]), Backend: getName(rec[cBackend:cServerNm]), Server: getName(rec[cServerNm:]),
		ClientUnix: flags&flagClientUnix != 0, ServerUnix: flags&flagServerUnix != 0, ClientFirst: flags&flagClientFirst != 0,
		Born:    time.Unix(0, int64(le.Uint64(rec[cBorn:]))),
		Connect: time.Duration(le.Uint64(rec[cConnect:])),
		Tries:   int(le.Uint32(rec[cTries:])),
		Up:      splice.FrozenHalf{PipeR: -1, PipeW: -1, Sent: int64(le.Uint64(rec[cSentUp:]))},
		Down:    splice.FrozenHalf{PipeR: -1, PipeW: -1, Sent: int64(le.Uint64(rec[cSentDown:]))},
	}
	if at := int64(le.Uint64(rec[cHalfAt:])); at != 0 {
		fc.HalfClosed = max(time.Since(time.Unix(0, at)), time.Nanosecond)
	}
	var a16 [16]byte
	copy(a16[:], rec[cPeer:cPeer+16])
	switch rec[cPeer+18] {
	case 4:
		fc.Peer = netip.AddrPortFrom(netip.AddrFrom16(a16).Unmap(), le.Uint16(rec[cPeer+16:]))
	case 6:
		fc.Peer = netip.AddrPortFrom(netip.AddrFrom16(a16), le.Uint16(rec[cPeer+16:]))
	}
	fc.ClientFD, fc.ServerFD = takeFile(socks[0]), takeFile(socks[1])
	for _, h := range []struct {
		p  *pipeFiles
		fh *splice.FrozenHalf
	}{{c.up, &fc.Up}, {c.down, &fc.Down}} {
		if h.p != nil {
			h.fh.PipeR, h.fh.PipeW, h.fh.N = takeFile(h.p.r), takeFile(h.p.w), h.p.n
		}
	}
	if fc.ClientFD < 0 || fc.ServerFD < 0 || fc.Up.N > 0 && (fc.Up.PipeR < 0 || fc.Up.PipeW < 0) ||
		fc.Down.N > 0 && (fc.Down.PipeR < 0 || fc.Down.PipeW < 0) {
		fc.Close()
		return splice.FrozenConn{}, false
	}
	// Until a relay resumes it, closing it must reset it.
	setLinger0(fc.ClientFD)
	setLinger0(fc.ServerFD)
	fc.ID = uint64(le.Uint32(rec[cGen:]))<<32 | uint64(uint32(fc.ClientFD))
	return fc, true
}

// getName reads a name written by putName.
func getName(b []byte) string {
	n := int(binary.LittleEndian.Uint16(b))
	if n > len(b)-2 {
		return ""
	}
	return string(b[2 : 2+n])
}

// takeFile returns a non-blocking duplicate of f's descriptor, closing f;
// -1 if it cannot.
func takeFile(f *os.File) int {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	f.Close()
	if err != nil {
		return -1
	}
	unix.SetNonblock(fd, true)
	return fd
}

// setLinger0 makes closing fd reset its connection.
func setLinger0(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// Forget removes names from systemd's store.
func Forget(names []string) error {
	var errs []error
	for _, name := range names {
		if err := notify("FDSTOREREMOVE=1\nFDNAME="+name+"\n", nil); err != nil {
			errs = append(errs, err)
			break // the socket is not there: the rest fail alike
		}
	}
	return errors.Join(errs...)
}
