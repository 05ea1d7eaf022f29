// The scenarios of the stream contract (contract_test.go): what each of the
// two endpoints of a connection sends, how it paces its writes and reads,
// how it ends its side, and over which transports; drawn from a seed.

package tests

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// transport is how an endpoint's socket reaches its peer: rsp through rsp,
// or the other endpoint in a direct run.
type transport int

const (
	tcp4       transport = iota // TCP over 127.0.0.1
	tcp6                        // TCP over [::1]
	unixStream                  // a Unix stream socket in a temporary directory
)

func (tr transport) String() string { return [...]string{"tcp4", "tcp6", "unix"}[tr] }

// network is tr's name for net.Dial and net.Listen.
func (tr transport) network() string { return [...]string{"tcp4", "tcp6", "unix"}[tr] }

func (tr transport) isTCP() bool { return tr != unixStream }

// writePacing is how an endpoint writes its stream.
type writePacing struct {
	// pieces is how many writes the stream is cut into, with gap between
	// them; 0 means big writes of contractBigWrite bytes, no gaps.
	pieces int
	gap    time.Duration
	// stallAt is an offset where the writer stops for stallFor before
	// writing the rest (-1: never), to let a connection go quiet; it
	// resumes early when resume (if set) closes.
	stallAt  int64
	stallFor time.Duration
	resume   <-chan struct{}
}

// contractBigWrite is the size of one "big" write: a whole small stream in
// one call, a large one in calls of 1 MiB (the size of rsp's pipes).
const contractBigWrite = 1 << 20

// readPacing is how an endpoint reads its peer's stream.
type readPacing struct {
	// chunk is the most bytes asked of one read (0: 256 KiB); the first
	// gaps reads are each followed by a sleep of gap.
	chunk int
	gap   time.Duration
	gaps  int
	// pauseAt is an offset where the reader stops reading (-1: never),
	// for pauseFor, or for good (until the deadline) when pauseFor < 0. A
	// pause ends early when resume (if set) closes.
	pauseAt  int64
	pauseFor time.Duration
	resume   <-chan struct{}
}

// stopsForGood reports whether the reader stops reading before the end.
func (rp readPacing) stopsForGood() bool { return rp.pauseAt >= 0 && rp.pauseFor < 0 }

// expectation says which rule judges one direction of a connection.
type expectation int

const (
	// expectFromEnds derives the rule from what the two endpoints do:
	// every byte and a clean EOF when both behave gracefully, otherwise
	// "a prefix, and a clean EOF only after every byte".
	expectFromEnds expectation = iota
	// expectForcedEnd: rsp itself ends the connection while bytes of this
	// direction are still in flight (drain, idle or half-close timeout), so
	// the receiver must see a reset and the sender a failed write.
	expectForcedEnd
)

// flow is one direction of a connection: the bytes one endpoint sends and
// how the other reads them.
type flow struct {
	seed  uint64 // of the reproducible stream (see stream in harness_test.go)
	size  int64
	write writePacing
	read  readPacing
	// urgentAt is the in-band offset before which the sender sends one
	// byte, urgent, with MSG_OOB (-1: none). It is not part of the in-band
	// stream: a receiver with default options reads it only with MSG_OOB.
	urgentAt int64
	urgent   byte
	expect   expectation
}

// closeStyle is how an endpoint ends its side once it has sent its stream.
type closeStyle int

const (
	// closeShutdown: shutdown(SHUT_WR), read the peer's stream to its end,
	// then close.
	closeShutdown closeStyle = iota
	// closeNow: close() at once, whatever the peer still sends.
	closeNow
	// closeAfterRead: read the peer's stream to its end, then close()
	// without a shutdown first.
	closeAfterRead
	// resetNow: SO_LINGER 0 and close at once: an abortive close (a TCP
	// RST; on a Unix socket, which has no reset, a plain close).
	resetNow
	// resetAfterRead: read the peer's stream to its end, then the abortive
	// close.
	resetAfterRead
	// killed: the endpoint runs in a child process (writing its stream and
	// draining what comes) that is killed with SIGKILL, so the kernel ends
	// the socket.
	killed
)

func (cs closeStyle) String() string {
	return [...]string{"shutdown", "close-now", "close-after-read", "reset-now", "reset-after-read", "kill"}[cs]
}

// cutsOwnRead reports whether the endpoint stops reading when it closes,
// before the peer's stream has ended.
func (cs closeStyle) cutsOwnRead() bool { return cs == closeNow || cs == resetNow || cs == killed }

// waitsForRead reports whether the endpoint closes only after its read side
// ended (without having sent a FIN first). Two such endpoints would wait for
// each other.
func (cs closeStyle) waitsForRead() bool { return cs == closeAfterRead || cs == resetAfterRead }

// endpoint is what one side of a connection does.
type endpoint struct {
	name  string // "client" or "server"
	out   *flow  // what it sends
	in    *flow  // what it reads
	close closeStyle
	// killAfter, for a killed endpoint: SIGKILL this long after it started
	// (0: once it has written its whole stream).
	killAfter time.Duration
}

// graceful reports whether the endpoint ends its stream with a FIN after
// every byte and without a reset: it shuts down, or closes only after
// reading everything, or closes at once with nothing coming that could be
// left unread (unread data turns a close into a reset).
func (e *endpoint) graceful() bool {
	switch e.close {
	case closeShutdown:
		return true
	case closeAfterRead:
		return !e.in.read.stopsForGood()
	case closeNow:
		return e.in.size == 0 && e.in.urgentAt < 0
	}
	return false
}

// readsToEnd reports whether the endpoint reads its peer's stream until it
// ends (EOF or reset), rather than closing or stopping first.
func (e *endpoint) readsToEnd() bool {
	return !e.close.cutsOwnRead() && !e.in.read.stopsForGood()
}

// abortive reports whether the endpoint ends with a reset in the
// transports where that exists (TCP).
func (e *endpoint) abortive() bool { return e.close == resetNow || e.close == resetAfterRead }

// mayLeaveUnconnected reports whether a proxy may end the client before
// connecting it to the server at all: the client gave up (reset, killed,
// or closed with nothing sent or with data still coming to it).
func (e *endpoint) mayLeaveUnconnected() bool {
	switch e.close {
	case resetNow, killed:
		return true
	case closeNow:
		return e.out.size == 0 || e.in.size > 0
	}
	return false
}

// eventKind is something rsp itself does to a live connection.
type eventKind int

const (
	noEvent eventKind = iota
	eventDrain
	eventIdle
	eventHalfCloseActive
	eventHalfCloseQuiet
	eventConnectTimeout
	eventReload
	eventMaxConn
	numEvents
)

func (k eventKind) String() string {
	return [...]string{"none", "drain", "idle-timeout", "half-close-active", "half-close-quiet", "connect-timeout", "reload", "maxconn"}[k]
}

// scenario is one connection (two for eventMaxConn) run directly and
// through rsp, or, with an event, through rsp only.
type scenario struct {
	seed           uint64
	relay          string    // "splice" or "copy"
	client, server transport // each endpoint's transport to rsp
	up, down       flow      // client → server, server → client
	clientEnd      endpoint
	serverEnd      endpoint
	event          eventKind
	// second is eventMaxConn's second connection, started while the
	// first still runs.
	second *scenario
}

// wire connects the client and server endpoints to the flows; it is done
// once, when the scenario is built, since the runs read it concurrently.
func (sc *scenario) wire() *scenario {
	sc.clientEnd.name, sc.clientEnd.out, sc.clientEnd.in = "client", &sc.up, &sc.down
	sc.serverEnd.name, sc.serverEnd.out, sc.serverEnd.in = "server", &sc.down, &sc.up
	if sc.second != nil {
		sc.second.wire()
	}
	return sc
}

// endpoints returns the client and the server.
func (sc *scenario) endpoints() (client, server *endpoint) { return &sc.clientEnd, &sc.serverEnd }

// longOnly reports whether the scenario is for the long run only (a
// 32 MiB stream). The events' endless streams are cut on purpose after
// what the buffers hold and do not count.
func (sc *scenario) longOnly() bool {
	return sc.event == noEvent && (sc.up.size > 16<<20 || sc.down.size > 16<<20)
}

// budget is how long the scenario's endpoints may take before their
// deadline: generous for the sizes and pacing, short when a reader stops
// for good (then the deadline is what ends the connection).
func (sc *scenario) budget() time.Duration {
	if sc.event != noEvent {
		return 15 * time.Second // the events' streams stall on purpose, or are short
	}
	paced := sc.up.pacingTime() + sc.down.pacingTime()
	if sc.up.read.stopsForGood() || sc.down.read.stopsForGood() {
		return 3*time.Second + paced + time.Duration(sc.up.size+sc.down.size)*time.Second/(4<<20)
	}
	reads := sc.up.readTime() + sc.down.readTime()
	return 10*time.Second + paced + reads + time.Duration(sc.up.size+sc.down.size)*time.Second/(4<<20)
}

// contractReadCost is what one small read may take, a system call on a
// busy machine: about 2.7 µs was measured on a 2-core VM running the
// harness, read a byte at a time, with room for load beside it.
const contractReadCost = 8 * time.Microsecond

// readTime is how long f's reads may take besides their sleeps: a slow
// reader asks for a few bytes at a time, and a 10 MiB stream read a byte
// at a time is ten million reads (seeds 890 and 943 of the long run
// stalled at their deadline, directly as through rsp).
func (f *flow) readTime() time.Duration {
	if f.read.chunk <= 0 {
		return 0
	}
	return time.Duration(f.size/int64(f.read.chunk)) * contractReadCost
}

// pacingTime is how long f's sleeps add up to, at most.
func (f *flow) pacingTime() time.Duration {
	d := time.Duration(f.write.pieces)*f.write.gap + time.Duration(f.read.gaps)*f.read.gap
	if f.write.stallAt >= 0 {
		d += f.write.stallFor
	}
	if f.read.pauseAt >= 0 && f.read.pauseFor > 0 {
		d += f.read.pauseFor
	}
	return d
}

// contractPCGStream is the second word of every scenario's PCG state: the
// seed alone names a scenario.
const contractPCGStream = 0x5ca1ab1e

// drawScenario builds the scenario named by seed. The same seed always
// gives the same scenario; without IPv6, tcp6 becomes tcp4 after drawing,
// so the rest of the scenario stays the same.
func drawScenario(seed uint64, haveV6 bool) *scenario {
	r := rand.New(rand.NewPCG(seed, contractPCGStream))
	sc := &scenario{seed: seed, relay: relayModes[r.IntN(len(relayModes))]}
	sc.client, sc.server = drawTransport(r), drawTransport(r)
	if r.IntN(100) < 8 {
		sc.event = eventKind(1 + r.IntN(int(numEvents)-1))
		fillEvent(r, sc)
	} else {
		drawPlain(r, sc)
	}
	if !haveV6 {
		sc.client, sc.server = noV6(sc.client), noV6(sc.server)
		if sc.second != nil {
			sc.second.client, sc.second.server = sc.client, sc.server
		}
	}
	return sc.wire()
}

func noV6(tr transport) transport {
	if tr == tcp6 {
		return tcp4
	}
	return tr
}

func drawTransport(r *rand.Rand) transport {
	switch n := r.IntN(100); {
	case n < 40:
		return tcp4
	case n < 65:
		return tcp6
	default:
		return unixStream
	}
}

// drawPlain fills in a scenario without an rsp-side event.
func drawPlain(r *rand.Rand, sc *scenario) {
	sc.up = drawFlow(r, sc.seed*2+1)
	sc.down = drawFlow(r, sc.seed*2+2)
	sc.clientEnd = drawEndpoint(r)
	sc.serverEnd = drawEndpoint(r)
	sc.wire()
	if sc.clientEnd.close.waitsForRead() && sc.serverEnd.close.waitsForRead() {
		sc.serverEnd.close = closeShutdown // else each waits for the other's end
	}
	// A reader that stops for good leaves its connection open until the
	// deadline: keep the rest of it short, and have one such reader at most.
	if sc.up.read.stopsForGood() {
		sc.down.read.pauseAt = -1
		sc.down.size = min(sc.down.size, 1<<20)
	} else if sc.down.read.stopsForGood() {
		sc.up.size = min(sc.up.size, 1<<20)
	}
	// A killed endpoint's child drains what comes, at full speed.
	client, server := sc.endpoints()
	for _, e := range []*endpoint{client, server} {
		if e.close == killed {
			e.in.read = readPacing{pauseAt: -1}
		}
	}
	if r.IntN(100) < 25 && sc.client.isTCP() && sc.server.isTCP() {
		f, sender := &sc.up, client
		if r.IntN(2) == 0 {
			f, sender = &sc.down, server
		}
		if sender.close != killed {
			f.urgentAt = r.Int64N(f.size + 1)
			f.urgent = byte(r.IntN(256))
			if f.read.stopsForGood() {
				f.read.pauseAt = -1 // the reader must reach the mark
			}
		}
	}
}

// drawSize is a stream length: mostly small, some 1-16 MiB, rarely 32 MiB
// (long run only).
func drawSize(r *rand.Rand) int64 {
	switch n := r.IntN(1000); {
	case n < 150:
		return 0
	case n < 600:
		return logUniform(r, 1, 64<<10)
	case n < 850:
		return logUniform(r, 64<<10, 1<<20)
	case n < 985:
		return logUniform(r, 1<<20, 16<<20)
	default:
		return 32 << 20
	}
}

// logUniform draws from [lo, hi] with every power of two equally likely.
func logUniform(r *rand.Rand, lo, hi int64) int64 {
	v := math.Exp(math.Log(float64(lo)) + r.Float64()*(math.Log(float64(hi))-math.Log(float64(lo))))
	return min(max(int64(v), lo), hi)
}

func drawFlow(r *rand.Rand, seed uint64) flow {
	f := flow{seed: seed, size: drawSize(r), urgentAt: -1}
	f.write = writePacing{stallAt: -1}
	if f.size > 0 && r.IntN(2) == 0 {
		// Many small writes: at most 200, with sleeps of at most 2 ms.
		f.write.pieces = int(min(f.size, int64(2+r.IntN(199))))
		f.write.gap = time.Duration(r.IntN(2001)) * time.Microsecond
	}
	f.read = readPacing{pauseAt: -1}
	switch n := r.IntN(100); {
	case n < 45: // fast
	case n < 75: // slow: small reads, the first up to 200 followed by a sleep
		f.read.chunk = int(logUniform(r, 1, 4096))
		f.read.gaps = 1 + r.IntN(200)
		f.read.gap = time.Duration(r.IntN(2001)) * time.Microsecond
	case n < 93: // stops for a while
		f.read.pauseAt = r.Int64N(f.size + 1)
		f.read.pauseFor = time.Duration(100+r.IntN(701)) * time.Millisecond
	default: // stops for good, before the end
		if f.size > 0 {
			f.read.pauseAt = r.Int64N(f.size)
			f.read.pauseFor = -1
		}
	}
	return f
}

func drawEndpoint(r *rand.Rand) endpoint {
	var e endpoint
	switch n := r.IntN(100); {
	case n < 40:
		e.close = closeShutdown
	case n < 55:
		e.close = closeNow
	case n < 70:
		e.close = closeAfterRead
	case n < 80:
		e.close = resetNow
	case n < 90:
		e.close = resetAfterRead
	default:
		e.close = killed
		if r.IntN(2) == 0 {
			e.killAfter = time.Duration(1+r.IntN(300)) * time.Millisecond
		}
	}
	return e
}

// String is the scenario in one line.
func (sc *scenario) String() string {
	var b strings.Builder
	if sc.seed != 0 {
		fmt.Fprintf(&b, "seed=%d ", sc.seed)
	}
	fmt.Fprintf(&b, "%s %s→rsp→%s", sc.relay, sc.client, sc.server)
	if sc.event != noEvent {
		fmt.Fprintf(&b, " event=%s", sc.event)
	}
	fmt.Fprintf(&b, "; up %s; down %s; client %s, server %s", sc.up.String(), sc.down.String(), sc.clientEnd.describe(), sc.serverEnd.describe())
	if sc.second != nil {
		fmt.Fprintf(&b, "; then a second connection: up %s; down %s", sc.second.up.String(), sc.second.down.String())
	}
	return b.String()
}

func (e *endpoint) describe() string {
	if e.close == killed {
		if e.killAfter > 0 {
			return fmt.Sprintf("kill@%v", e.killAfter)
		}
		return "kill-after-send"
	}
	return e.close.String()
}

// String is the flow in a few words: size, writes, reads, urgent byte.
func (f *flow) String() string {
	if f.size == 0 && f.urgentAt < 0 {
		return "0B"
	}
	var parts []string
	parts = append(parts, sizeString(f.size))
	if f.write.pieces > 0 {
		parts = append(parts, fmt.Sprintf("w=%dx%v", f.write.pieces, f.write.gap))
	} else {
		parts = append(parts, "w=big")
	}
	if f.write.stallAt >= 0 {
		parts = append(parts, fmt.Sprintf("w-stall@%s/%v", sizeString(f.write.stallAt), f.write.stallFor))
	}
	switch rp := f.read; {
	case rp.stopsForGood():
		parts = append(parts, "r=stop@"+sizeString(rp.pauseAt))
	case rp.pauseAt >= 0:
		parts = append(parts, fmt.Sprintf("r=pause@%s/%v", sizeString(rp.pauseAt), rp.pauseFor))
	case rp.chunk > 0:
		parts = append(parts, fmt.Sprintf("r=slow(%dB,%dx%v)", rp.chunk, rp.gaps, rp.gap))
	default:
		parts = append(parts, "r=fast")
	}
	if f.urgentAt >= 0 {
		parts = append(parts, fmt.Sprintf("urgent %#02x@%d", f.urgent, f.urgentAt))
	}
	if f.expect == expectForcedEnd {
		parts = append(parts, "forced-end")
	}
	return strings.Join(parts, " ")
}

// sizeString writes n bytes the short way: 0B, 512B, 12.5KiB, 3.0MiB.
func sizeString(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// v6Available reports whether this host can listen on [::1].
func v6Available() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
