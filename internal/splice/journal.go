package splice

import "time"

// Journal records, while connections run, what another process needs to
// resume them if this one dies (handover = "crash"): each established
// connection's sockets and each pipe, kept outside the process, and which
// connection each pipe's bytes belong to. Loop returns the part of one
// event loop, whose methods that loop alone calls.
type Journal interface {
	Loop(index int) LoopJournal
}

// LoopJournal is one event loop's part of a Journal. A connection or pipe
// is named by the ref its recording returned; 0 means not recorded, and
// methods given 0 do nothing.
type LoopJournal interface {
	// Conn records an established connection: its sockets, names and
	// counters (fc's pipes are ignored). It returns 0 if it could not.
	Conn(fc *FrozenConn) int32
	// Sent records that a direction (down: server → client) has
	// delivered n bytes in all.
	Sent(conn int32, down bool, n int64)
	// Half records when the first direction ended, and whether it was
	// the client's.
	Half(conn int32, at time.Time, clientFirst bool)
	// Taint marks conn as one that cannot be resumed as it stands: after
	// a crash it is reset.
	Taint(conn int32)
	// End forgets conn: its sockets are about to be closed or to leave.
	// False means the store still holds them: Flush must try again.
	End(conn int32) bool
	// Pipe records a new pipe; it returns an error if it cannot.
	Pipe(r, w int) (int32, error)
	// Own records that pipe carries a direction of conn from now on;
	// it is called before any byte enters the pipe.
	Own(pipe, conn int32, down bool)
	// PipeEnd forgets pipe: it is about to be closed or to leave.
	// False means the store still holds it: Flush must try again.
	PipeEnd(pipe int32) bool
	// Flush tries again what the other methods could not finish, waiting
	// for it if wait; it reports whether some is still left.
	Flush(wait bool) bool
	// WaitFD returns a descriptor that polls writable once Flush can go
	// on, or -1 if what is left is to be tried again later.
	WaitFD() int
}
