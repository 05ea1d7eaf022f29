// The rules of the stream contract (contract_test.go): what each endpoint
// may observe of each direction of a connection, given what both endpoints
// did. The same rules judge the direct run and the run through rsp; a
// direct run that breaks one means the rule (or the harness) is wrong, and
// is reported as such.
//
// For one direction, sender S → receiver R:
//
//   - prefix: R's bytes are always a prefix of S's stream (same length and
//     SHA-256 as that many bytes of the seeded stream);
//   - exact: when S ends gracefully (every byte, then a FIN, no reset) and R
//     reads to the end, R gets every byte and a clean EOF, and S's writes
//     all succeed: directly and through rsp alike;
//   - no silent cut: R never sees a clean EOF after a short stream unless R
//     saw a reset, or S was killed (the kernel sends a FIN after what S had
//     written: R must get at least every byte S reported written);
//   - resets travel: when S resets (SO_LINGER 0 on TCP) or rsp ends the
//     connection with bytes in flight (a forced end), R, reading to the
//     end, sees a reset, not a clean end; in a forced end S's write fails
//     too;
//   - a Unix socket keeps what it was given: when S is on a Unix socket and
//     closes after writing (or is killed), R, reading to the end, gets every
//     byte S wrote before its end, then EOF or a reset: AF_UNIX never
//     discards written bytes at a close, so directly R always gets them;
//   - a read side still open at the deadline only behind a reader that
//     stopped for good; a write still blocked only in front of one;
//   - urgent data: a byte R reads with MSG_OOB is the one S sent; in an
//     exact direction R reads it at its mark directly and through the
//     splice relay; the copy relay drops it (and passes every in-band byte).
//
// "R saw a reset" is said of the endpoint, not of its read side: Linux
// reports a reset once per socket, to whichever call meets it first, and
// after that reads return 0. An endpoint whose writer met the reset
// (ECONNRESET, or EPIPE) reads a plain EOF, directly as well as through
// rsp; it still knows its connection was reset.
//
// One exception is written down where it applies (unixNoReset): a Unix
// stream socket has no reset. When rsp must pass on a cut to a receiver on
// a Unix socket, all it can do is close, which the receiver reads as EOF.

package tests

import (
	"fmt"
	"strings"
)

// direction is one direction of one run, with what both of its ends did
// and observed.
type direction struct {
	name         string // "up (client→server)" or "down (server→client)"
	f            *flow
	from, to     *endpoint
	client       *endpoint // the connection's client: only it decides whether a server may stay unconnected
	fromTr, toTr transport // the endpoints' transports in this run
	via          bool
	relay        string
	w            writeObs // the sender's writes
	r            readObs  // the receiver's reads
	rw           writeObs // the receiver's own writes (of the other direction)
	fr           readObs  // the sender's own reads (of the other direction)
}

// directions returns the two directions of run obs of sc.
func directions(sc *scenario, obs pairObs) [2]direction {
	client, server := sc.endpoints()
	return [2]direction{
		{name: "up (client→server)", f: &sc.up, from: client, to: server, client: client,
			fromTr: obs.clientTr, toTr: obs.serverTr, via: obs.via, relay: sc.relay,
			w: obs.client.write, r: obs.server.read, rw: obs.server.write, fr: obs.client.read},
		{name: "down (server→client)", f: &sc.down, from: server, to: client, client: client,
			fromTr: obs.serverTr, toTr: obs.clientTr, via: obs.via, relay: sc.relay,
			w: obs.server.write, r: obs.client.read, rw: obs.client.write, fr: obs.server.read},
	}
}

// exact reports whether the direction must arrive whole with a clean EOF.
func (d *direction) exact() bool {
	return d.f.expect == expectFromEnds && d.from.graceful() && d.to.readsToEnd()
}

// mustReset reports whether the receiver, reading to the end, must see a
// reset: the sender reset over TCP, or rsp cut the direction.
func (d *direction) mustReset() bool {
	if !d.to.readsToEnd() {
		return false
	}
	return d.f.expect == expectForcedEnd || (d.from.abortive() && d.fromTr.isTCP())
}

// unixNoReset reports whether the receiver is on a Unix socket to rsp
// while the direction was cut upstream (the sender did not end
// gracefully, or rsp forced the end): rsp can only close that socket, and
// a Unix peer reads a close as EOF (AF_UNIX has no reset; ECONNRESET comes
// only from a close with unread data on the closing side).
func (d *direction) unixNoReset() bool {
	return d.via && d.toTr == unixStream && (d.f.expect == expectForcedEnd || !d.from.graceful())
}

// receiverSawReset reports whether the receiving endpoint met a reset, on
// its read side or on its write side.
func (d *direction) receiverSawReset() bool { return d.r.end == endReset || d.rw.end == endReset }

// unixKept returns how many bytes the receiver must get because the sender
// wrote them to a Unix socket before it closed: all of them once its
// writes completed, or what a killed sender reported written. ok is false
// where the rule does not apply (another transport, rsp forced the end, or
// the receiver does not read to the end).
func (d *direction) unixKept() (want int64, ok bool) {
	if d.fromTr != unixStream || d.f.expect != expectFromEnds || !d.to.readsToEnd() {
		return 0, false
	}
	switch d.w.end {
	case endComplete, endKilled:
		return d.w.n, true
	}
	return 0, false
}

// mayStallAtDeadline reports whether the direction may still be open at
// the deadline: its reader stopped for good, or its sender closes only
// after its own reader, which stopped for good.
func (d *direction) mayStallAtDeadline() bool {
	return d.f.read.stopsForGood() || (d.from.close.waitsForRead() && d.from.in.read.stopsForGood())
}

// findings is what checking a direction found: broken rules, and notes on
// exceptions that applied.
type findings struct{ problems, notes []string }

func (fs *findings) bad(format string, args ...any) {
	fs.problems = append(fs.problems, fmt.Sprintf(format, args...))
}

func (fs *findings) note(format string, args ...any) {
	fs.notes = append(fs.notes, fmt.Sprintf(format, args...))
}

// check applies the rules to one direction.
func (d *direction) check() findings {
	var fs findings
	d.checkRead(&fs)
	d.checkWrite(&fs)
	d.checkUrgent(&fs)
	return fs
}

// checkRead judges the receiver's bytes and how its read side ended.
func (d *direction) checkRead(fs *findings) {
	f, r := d.f, d.r
	whole := r.got.n == f.size
	before := len(fs.problems)
	if r.end != endNotConnected && r.end != endKilled && !isPrefix(r.got, f) {
		fs.bad("received %v, which is not a prefix of the %d bytes sent", r.got, f.size)
	}
	switch r.end {
	case endEOF:
		d.checkEOF(fs)
	case endReset:
		// Judged by exact below.
	case endDeadline:
		if !d.mayStallAtDeadline() {
			fs.bad("the read side was still open at the deadline after %d of %d bytes: the stream stalled", r.got.n, f.size)
		}
	case endSelfClosed:
		if !d.to.close.cutsOwnRead() {
			fs.bad("harness: the %s's read side was closed under it", d.to.name)
		}
	case endKilled:
	case endNotConnected:
		if !d.client.mayLeaveUnconnected() {
			fs.bad("the server never got a connection (%v)", r.err)
		}
	default:
		fs.bad("the read side failed: %v", r.err)
	}
	if want, ok := d.unixKept(); ok && (r.end == endEOF || r.end == endReset) && r.got.n < want {
		fs.bad("received %d of the %d bytes the %s wrote before closing its Unix socket, then %v: a Unix socket keeps every byte written before a close, and so must the proxy", r.got.n, want, d.from.name, r.end)
	}
	if d.exact() && !(r.end == endEOF && whole) && len(fs.problems) == before {
		fs.bad("want all %d bytes and a clean EOF (%s ends gracefully, %s reads to the end), got %v", f.size, d.from.name, d.to.name, r)
	}
}

// checkEOF judges a read side that ended in a clean EOF: after every byte,
// or after a reset the receiver met, or where an exception applies.
func (d *direction) checkEOF(fs *findings) {
	f, r, w := d.f, d.r, d.w
	whole := r.got.n == f.size
	switch {
	case d.receiverSawReset():
		// Its writer met the reset first (see above).
	case d.mustReset() && d.unixNoReset():
		if !whole {
			fs.note("%s: a cut reached a Unix-socket receiver as EOF after %d of %d bytes (AF_UNIX has no reset)", d.name, r.got.n, f.size)
		}
	case d.mustReset():
		fs.bad("clean EOF after %d of %d bytes and no reset, want a reset: %s", r.got.n, f.size, d.resetCause())
	case whole:
	case d.from.close == killed && r.got.n >= w.n:
		// The kernel closed the killed sender after what it had written.
	case d.from.close == killed && d.unixNoReset() && d.fromTr.isTCP() && d.fr.unreadAtKill > 0:
		// The killed TCP sender died with bytes of its peer's unread, so
		// its kernel reset the connection, and rsp ends the direction as
		// a reset (what the sender wrote need not arrive): a Unix
		// receiver reads that as EOF.
		fs.note("%s: a reset reached a Unix-socket receiver as EOF after %d of the %d bytes its killed sender wrote (AF_UNIX has no reset)", d.name, r.got.n, w.n)
	case d.from.close == killed:
		fs.bad("clean EOF after %d bytes and no reset, but the killed sender had written %d: bytes lost before its FIN", r.got.n, w.n)
	case d.unixNoReset():
		fs.note("%s: a cut reached a Unix-socket receiver as EOF after %d of %d bytes (AF_UNIX has no reset)", d.name, r.got.n, f.size)
	default:
		fs.bad("clean EOF after %d of %d bytes and no reset: a stream that was cut must end in a reset", r.got.n, f.size)
	}
}

// checkWrite judges how the sender's writes ended.
func (d *direction) checkWrite(fs *findings) {
	f, w := d.f, d.w
	switch w.end {
	case endComplete:
		if w.n != f.size {
			fs.bad("harness: the %s wrote %d of %d bytes without an error", d.from.name, w.n, f.size)
		}
		if f.expect == expectForcedEnd {
			fs.bad("the %s wrote all %d bytes although rsp ended the connection", d.from.name, f.size)
		}
	case endReset:
		if d.exact() {
			fs.bad("the %s's write failed after %d bytes (%v), although the %s reads everything", d.from.name, w.n, w.err, d.to.name)
		}
	case endDeadline:
		if !f.read.stopsForGood() {
			fs.bad("the %s's write was still blocked at the deadline after %d of %d bytes", d.from.name, w.n, f.size)
		}
	case endKilled:
	case endNotConnected:
		if !d.client.mayLeaveUnconnected() {
			fs.bad("the server never got a connection (%v)", w.err)
		}
	default:
		fs.bad("the %s's write failed after %d bytes: %v", d.from.name, w.n, w.err)
	}
	if f.expect == expectForcedEnd && w.end != endReset && w.end != endComplete {
		fs.bad("the %s's write ended %v, want it to fail with a reset once rsp ended the connection", d.from.name, w.end)
	}
}

// checkUrgent judges the urgent byte, if the direction carries one.
func (d *direction) checkUrgent(fs *findings) {
	f, u := d.f, d.r.urgent
	if f.urgentAt < 0 {
		return
	}
	switch {
	case u.seen && u.b != f.urgent:
		fs.bad("urgent byte %#02x, sent %#02x", u.b, f.urgent)
	case d.via && d.relay == "copy" && u.seen:
		fs.bad("the copy relay passed on an urgent byte; it drops urgent data")
	case d.exact() && (!d.via || d.relay == "splice") && !(u.seen && u.atMark):
		if d.via {
			fs.bad("the urgent byte sent at offset %d was not there to read at its mark (%v)", f.urgentAt, u)
		} else {
			fs.bad("harness: the direct receiver did not see the urgent byte at its mark (%v)", u)
		}
	}
}

// resetCause says why a direction must end in a reset.
func (d *direction) resetCause() string {
	if d.f.expect == expectForcedEnd {
		return "rsp ended the connection with bytes in flight"
	}
	return fmt.Sprintf("the %s reset the connection (%s over %s)", d.from.name, d.from.close, d.fromTr)
}

// isPrefix reports whether got is the first got.n bytes of f's stream.
func isPrefix(got digest, f *flow) bool {
	return got.n <= f.size && expected(f.seed, got.n) == got
}

// verdict is the outcome of a scenario: what broke the rules, in which
// run, and the exceptions that applied.
type verdict struct {
	problems []string
	notes    []string
}

// judge checks every direction of every run against the rules. For an
// exact direction it also holds the run through rsp to what the same
// endpoint saw directly.
func judge(sc *scenario, runs ...pairObs) verdict {
	var v verdict
	var direct *[2]direction
	for i := range runs {
		run := runs[i]
		label := "direct"
		if run.via {
			label = "through rsp"
		}
		if run.setupErr != nil {
			v.problems = append(v.problems, fmt.Sprintf("%s: %v", label, run.setupErr))
			continue
		}
		dirs := directions(sc, run)
		if !run.via {
			direct = &dirs
		}
		for j := range dirs {
			d := &dirs[j]
			fs := d.check()
			if run.via && direct != nil && d.exact() && len(fs.problems) == 0 {
				fs.problems = differs(&direct[j], d)
			}
			for _, p := range fs.problems {
				prefix := label + " " + d.name + ": "
				if !run.via {
					prefix = "direct " + d.name + " (the rule or the harness is wrong): "
				}
				v.problems = append(v.problems, prefix+p)
			}
			v.notes = append(v.notes, fs.notes...)
		}
	}
	return v
}

// differs compares an exact direction through rsp with the same direction
// run directly: received bytes, how the read side ended and, in the splice
// relay, the urgent byte.
func differs(direct, via *direction) []string {
	var out []string
	if direct.r.got != via.r.got || direct.r.end != via.r.end {
		out = append(out, fmt.Sprintf("received %v through rsp, %v directly", via.r, direct.r))
	}
	if via.f.urgentAt >= 0 && via.relay == "splice" && direct.r.urgent != via.r.urgent {
		out = append(out, fmt.Sprintf("%v through rsp, %v directly", via.r.urgent, direct.r.urgent))
	}
	return out
}

// describeRun is one run's observations on one line.
func describeRun(obs pairObs) string {
	if obs.setupErr != nil {
		return obs.setupErr.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s→%s: client read %v, %v", obs.clientTr, obs.serverTr, obs.client.read, obs.client.write)
	if obs.client.read.urgent.seen {
		fmt.Fprintf(&b, ", %v", obs.client.read.urgent)
	}
	fmt.Fprintf(&b, "; server read %v, %v", obs.server.read, obs.server.write)
	if obs.server.read.urgent.seen {
		fmt.Fprintf(&b, ", %v", obs.server.read.urgent)
	}
	return b.String()
}
