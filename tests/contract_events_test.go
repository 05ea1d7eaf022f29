// The rsp-side events of the stream contract (contract_test.go): rsp
// itself ends or holds a live connection (drain, idle, half-close and
// connect timeouts, a reload that removes the frontend, maxconn). Each runs
// through an rsp of its own, and each endpoint must get every byte and a
// clean EOF, or a reset: never a clean EOF after a short stream. Also the
// focused regression tests for the bugs the harness was built to catch.

package tests

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// contractTimeout is the drain, idle and half-close timeout of the event
// scenarios.
const contractTimeout = "1s"

// contractStall bounds how long a stalled endpoint of an event waits for
// rsp to end its connection (forcedEnd) before it goes on anyway.
const contractStall = 8 * time.Second

// fillEvent shapes the flows of an event scenario; sc.event, the relay and
// the transports are already chosen. Both endpoints shut down after
// sending and read to the end.
func fillEvent(r *rand.Rand, sc *scenario) {
	sc.clientEnd, sc.serverEnd = endpoint{close: closeShutdown}, endpoint{close: closeShutdown}
	sc.up, sc.down = steadyFlow(sc.seed*2+1, 0), steadyFlow(sc.seed*2+2, 0)
	sc.wire()
	// first, second: the two directions in a random order.
	first, second := &sc.up, &sc.down
	if r.IntN(2) == 0 {
		first, second = second, first
	}
	switch sc.event {
	case eventDrain, eventIdle:
		// first stalls: far more than the buffers on the way hold (with
		// tcp_rmem's maximum at 32 MiB, four sockets and a pipe can hold
		// some 70 MiB), and its reader stops until rsp has ended the
		// connection. Only what fits is ever written.
		first.size = contractEndless
		first.read.pauseAt = r.Int64N(256 << 10)
		first.read.pauseFor = contractStall
		first.expect = expectForcedEnd
		second.size = r.Int64N(64 << 10)
	case eventHalfCloseActive:
		// second's sender shuts down after a little; first keeps sending,
		// slowly but steadily, for longer than the half-close timeout.
		second.size = r.Int64N(4 << 10)
		first.write.pieces = 25 + r.IntN(11)
		first.size = int64(first.write.pieces) * logUniform(r, 16<<10, 64<<10)
		first.write.gap = 80 * time.Millisecond
	case eventHalfCloseQuiet:
		// second's sender shuts down after a little; first sends some,
		// goes quiet until rsp has ended the connection, then tries to
		// send the rest.
		second.size = r.Int64N(4 << 10)
		first.write.stallAt = r.Int64N(64 << 10)
		first.write.stallFor = contractStall
		first.size = first.write.stallAt + 64<<10
		first.expect = expectForcedEnd
	case eventConnectTimeout:
		sc.up.size = r.Int64N(64 << 10)
		if sc.server == unixStream {
			sc.server = tcp4 // the backend is a TCP listener whose backlog is full
		}
	case eventReload:
		for _, f := range []*flow{&sc.up, &sc.down} {
			f.size = logUniform(r, 256<<10, 4<<20)
			f.write.pieces, f.write.gap = 30, 50*time.Millisecond
		}
	case eventMaxConn:
		for _, f := range []*flow{&sc.up, &sc.down} {
			f.size = logUniform(r, 64<<10, 2<<20)
			f.write.pieces, f.write.gap = 20, 25*time.Millisecond
		}
		next := &scenario{relay: sc.relay, client: sc.client, server: sc.server, event: eventMaxConn,
			up: steadyFlow(sc.seed*2+3, logUniform(r, 1, 1<<20)), down: steadyFlow(sc.seed*2+4, logUniform(r, 1, 1<<20)),
			clientEnd: endpoint{close: closeShutdown}, serverEnd: endpoint{close: closeShutdown}}
		sc.second = next.wire()
	}
}

// contractEndless is the size of a stream that is never meant to end: rsp
// ends its connection first.
const contractEndless = 1 << 30

// steadyFlow is size bytes in big writes, read as fast as they come.
func steadyFlow(seed uint64, size int64) flow {
	return flow{seed: seed, size: size, urgentAt: -1, write: writePacing{stallAt: -1}, read: readPacing{pauseAt: -1}}
}

// eventScenario builds an event scenario by hand (for the focused tests),
// its flows shaped by fillEvent from a fixed seed.
func eventScenario(relay string, ev eventKind, client, server transport, shape uint64) *scenario {
	sc := &scenario{relay: relay, client: client, server: server, event: ev}
	fillEvent(rand.New(rand.NewPCG(shape, contractPCGStream)), sc)
	return sc.wire()
}

// runEvent runs an event scenario through an rsp of its own.
func (h *contractHarness) runEvent(t *testing.T, sc *scenario) {
	t.Helper()
	switch sc.event {
	case eventConnectTimeout:
		h.runConnectTimeout(t, sc)
		return
	case eventReload:
		h.runReload(t, sc)
		return
	case eventMaxConn:
		h.runMaxConn(t, sc)
		return
	}
	flag := map[eventKind]string{eventDrain: "-drain-timeout", eventIdle: "-idle-timeout",
		eventHalfCloseActive: "-half-close-timeout", eventHalfCloseQuiet: "-half-close-timeout"}[sc.event]
	ln := h.listen(t, sc.server)
	inst := h.startInstance(t, sc.relay, sc.client, backendArg(ln), ln, flag, contractTimeout)
	// The stalled endpoint goes on once rsp has ended the connection,
	// however long the buffers took to fill.
	ended := forcedEnd(inst.p)
	for _, f := range []*flow{&sc.up, &sc.down} {
		f.read.resume, f.write.resume = ended, ended
	}
	cn, accepted := signalAccept(inst.connector(sc.client, sc.server))
	done := make(chan pairObs, 1)
	go func() { done <- runPair(sc, cn) }()
	var problems []string
	if sc.event == eventDrain {
		// SIGTERM while the stalled stream is in flight: rsp drains for
		// the drain timeout, then must reset what is left.
		select {
		case <-accepted:
		case <-time.After(10 * time.Second):
		}
		time.Sleep(300 * time.Millisecond)
		inst.p.signal(syscall.SIGTERM)
	}
	obs := <-done
	if sc.event == eventDrain {
		if code := inst.p.wait(10 * time.Second); code != 0 {
			problems = append(problems, fmt.Sprintf("rsp exited %d after the drain, want 0", code))
		}
	} else if err := inst.quiesce(5 * time.Second); err != nil {
		problems = append(problems, err.Error())
	}
	v := judge(sc, obs)
	v.problems = append(v.problems, problems...)
	h.report(t, sc, v, obs)
}

// forcedEnd returns a channel that closes a little after rsp logs that it
// closed a connection (the connection log's default logs the ends that
// are not clean), or exits (or after contractStall at the latest).
func forcedEnd(p *proc) <-chan struct{} {
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		deadline := time.Now().Add(contractStall)
		for time.Now().Before(deadline) && !strings.Contains(p.stderr.String(), `msg=conn `) {
			select {
			case <-p.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		time.Sleep(200 * time.Millisecond) // for the ends to reach the endpoints
	}()
	return ended
}

// signalAccept wraps cn's accept so that the returned channel closes once
// the server side is connected (or failed to be).
func signalAccept(cn connector) (connector, <-chan struct{}) {
	accepted := make(chan struct{})
	inner := cn.accept
	cn.accept = func(deadline time.Time) (net.Conn, error) {
		defer close(accepted)
		return inner(deadline)
	}
	return cn, accepted
}

// runConnectTimeout: the backend never completes a handshake, so rsp gives
// up after -connect-timeout. The client must see EOF or a reset with no
// byte received, about when the timeout ends, and no byte it sent may have
// reached the backend.
func (h *contractHarness) runConnectTimeout(t *testing.T, sc *scenario) {
	t.Helper()
	hole := fullBacklog(t, sc.server)
	inst := h.startInstance(t, sc.relay, sc.client, hole.addr, nil, "-connect-timeout", "500ms")
	cn := inst.connector(sc.client, sc.server)
	cn.accept = func(time.Time) (net.Conn, error) {
		return nil, errors.New("the backend never completes a handshake")
	}
	obs := runPair(sc, cn)
	var v verdict
	bad := func(format string, args ...any) { v.problems = append(v.problems, fmt.Sprintf(format, args...)) }
	r, w := obs.client.read, obs.client.write
	switch {
	case obs.setupErr != nil:
		bad("%v", obs.setupErr)
	case r.got.n != 0 || (r.end != endEOF && r.end != endReset):
		bad("the client read %v, want no byte and then EOF or a reset", r)
	case r.took < 400*time.Millisecond || r.took > 6*time.Second:
		bad("the client's read side ended after %v, want about the 500ms connect timeout", r.took.Round(time.Millisecond))
	}
	if obs.setupErr == nil && w.end != endComplete && w.end != endReset {
		bad("the client's write ended %v (%v), want done or a reset", w.end, w.err)
	}
	if n, err := hole.delivered(); err != nil {
		bad("inspecting the backend: %v", err)
	} else if n > 0 {
		bad("%d bytes reached the backend that never completed a handshake", n)
	}
	h.report(t, sc, v, obs)
}

// blackHoleListener is a TCP listener whose accept queue is full, so that new
// connects to it hang: a backlog of 1, filled, never accepted.
type blackHoleListener struct {
	fd   int
	addr string
}

// fullBacklog returns a full-backlog listener on tr's loopback address
// (tcp4 or tcp6), closed when the test ends.
func fullBacklog(t *testing.T, tr transport) *blackHoleListener {
	t.Helper()
	family, sa := syscall.AF_INET, syscall.Sockaddr(&syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	if tr == tcp6 {
		family, sa = syscall.AF_INET6, &syscall.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, sa); err != nil {
		t.Fatalf("bind the full-backlog listener: %v", err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatalf("listen: %v", err)
	}
	got, _ := syscall.Getsockname(fd)
	var addr string
	switch a := got.(type) {
	case *syscall.SockaddrInet4:
		addr = (&net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}).String()
	case *syscall.SockaddrInet6:
		addr = (&net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}).String()
	}
	// Fill the queue; once it is full further SYNs are dropped and these
	// dials time out.
	for range 4 {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return &blackHoleListener{fd: fd, addr: addr}
}

// delivered accepts what is queued at the listener now and returns how
// many bytes those connections carry: our filler connections send none.
func (b *blackHoleListener) delivered() (int, error) {
	if err := syscall.SetNonblock(b.fd, true); err != nil {
		return 0, fmt.Errorf("set nonblocking: %w", err)
	}
	total := 0
	for range 64 {
		nfd, _, err := syscall.Accept4(b.fd, syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK)
		if err != nil {
			break // EAGAIN: the queue is empty
		}
		buf := make([]byte, 64<<10)
		n, _, _ := syscall.Recvfrom(nfd, buf, syscall.MSG_DONTWAIT)
		total += max(n, 0)
		syscall.Close(nfd)
	}
	return total, nil
}

// runReload: an established connection keeps flowing while a reload
// removes its frontend (SIGHUP after rewriting the file): both directions
// arrive whole.
func (h *contractHarness) runReload(t *testing.T, sc *scenario) {
	t.Helper()
	ln := h.listen(t, sc.server)
	config := func(frontend string) string {
		return fmt.Sprintf("[global]\nrelay = %q\n%s\nbackend = \"app\"\n[backend.app.server.s]\naddress = %q\n", sc.relay, frontend, backendArg(ln))
	}
	first := map[transport]string{tcp4: "[frontend.f]\nlisten = \"127.0.0.1:0\"", tcp6: "[frontend.f]\nlisten = \"[::1]:0\"",
		unixStream: "[frontend.f]\nsocket = \"web\""}[sc.client]
	path := writeConfig(t, "", config(first))
	inst := &rspInstance{backend: ln}
	if sc.client == unixStream {
		front := h.listen(t, unixStream)
		inst.p = launch(t, activatedCmd(t, front, "web", "-config", path))
		inst.p.waitStarted()
		inst.clientAddr = front.Addr().String()
	} else {
		inst.p = startRsp(t, "-config", path)
		inst.clientAddr = inst.p.addr
	}
	cn, accepted := signalAccept(inst.connector(sc.client, sc.server))
	done := make(chan pairObs, 1)
	go func() { done <- runPair(sc, cn) }()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
	}
	time.Sleep(200 * time.Millisecond)
	reloadConfig(t, inst.p, path, config("[frontend.g]\nlisten = \"127.0.0.1:0\""))
	obs := <-done
	v := judge(sc, obs)
	if err := inst.quiesce(5 * time.Second); err != nil {
		v.problems = append(v.problems, err.Error())
	}
	h.report(t, sc, v, obs)
}

// runMaxConn: with -maxconn 1, a second client connects while the first
// connection runs; it waits in the kernel's backlog and then completes
// whole, as does the first.
func (h *contractHarness) runMaxConn(t *testing.T, sc *scenario) {
	t.Helper()
	ln := h.listen(t, sc.server)
	inst := h.startInstance(t, sc.relay, sc.client, backendArg(ln), ln, "-maxconn", "1")
	cn, accepted := signalAccept(inst.connector(sc.client, sc.server))
	done := make(chan pairObs, 1)
	go func() { done <- runPair(sc, cn) }()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
	}
	time.Sleep(100 * time.Millisecond)
	second := runPair(sc.second, inst.connector(sc.client, sc.server))
	first := <-done
	v := judge(sc, first)
	for _, p := range judge(sc.second, second).problems {
		v.problems = append(v.problems, "second connection: "+p)
	}
	if err := inst.quiesce(5 * time.Second); err != nil {
		v.problems = append(v.problems, err.Error())
	}
	h.report(t, sc, v, first, second)
}

// plainScenario builds a scenario without an event by hand (for the
// focused tests).
func plainScenario(relay string, client, server transport, up, down flow, clientClose, serverClose closeStyle) *scenario {
	sc := &scenario{relay: relay, client: client, server: server, up: up, down: down,
		clientEnd: endpoint{close: clientClose}, serverEnd: endpoint{close: serverClose}}
	return sc.wire()
}

// TestContractUnixPeerCloses: a peer on a Unix socket that ends its stream
// with a plain close must not make rsp cut the other side short: a unix:
// backend that writes 8 MiB and closes (with or without a request it never
// read), and a client of a Unix listener that sends a body and closes at
// once (with or without a response it never read), each deliver every byte
// to the other side; without unread bytes, with a clean EOF too.
func TestContractUnixPeerCloses(t *testing.T) {
	h := newContractHarness(t)
	// unread is a 2 MiB stream its reader leaves alone for 2 s: the peer
	// closes with those bytes unread.
	unread := func(seed uint64) flow {
		f := steadyFlow(seed, 2<<20)
		f.read.pauseAt, f.read.pauseFor = 0, 2*time.Second
		return f
	}
	// response is 8 MiB that the client reads with a pause near the end,
	// so that bytes are still on their way when the backend closes.
	response := func(seed uint64) flow {
		f := steadyFlow(seed, 8<<20)
		f.read.pauseAt, f.read.pauseFor = 7<<20, 500*time.Millisecond
		return f
	}
	for _, relay := range relayModes {
		t.Run(relay+"/backend-writes-and-closes", func(t *testing.T) {
			t.Parallel()
			h.run(t, plainScenario(relay, tcp4, unixStream, steadyFlow(11, 0), response(12), closeAfterRead, closeNow))
		})
		t.Run(relay+"/backend-writes-and-closes-unread", func(t *testing.T) {
			t.Parallel()
			h.run(t, plainScenario(relay, tcp4, unixStream, unread(13), response(14), closeShutdown, closeNow))
		})
		t.Run(relay+"/client-sends-and-closes", func(t *testing.T) {
			t.Parallel()
			h.run(t, plainScenario(relay, unixStream, tcp4, steadyFlow(15, 4<<20), steadyFlow(16, 0), closeNow, closeShutdown))
		})
		t.Run(relay+"/client-sends-and-closes-unread", func(t *testing.T) {
			t.Parallel()
			h.run(t, plainScenario(relay, unixStream, tcp4, steadyFlow(17, 4<<20), unread(18), closeNow, closeShutdown))
		})
	}
}

// TestContractForcedEndResets: when rsp ends a connection with bytes still
// in flight (the drain timeout, the idle timeout, the half-close timeout of
// a connection gone quiet), both endpoints must see a reset, never a clean
// EOF.
func TestContractForcedEndResets(t *testing.T) {
	h := newContractHarness(t)
	for _, relay := range relayModes {
		for _, ev := range []eventKind{eventDrain, eventIdle, eventHalfCloseQuiet} {
			t.Run(relay+"/"+ev.String(), func(t *testing.T) {
				t.Parallel()
				h.run(t, eventScenario(relay, ev, tcp4, tcp4, 7))
			})
		}
	}
}

// TestContractUrgentData: TCP urgent data in the middle of a stream (and at
// its very start) neither stalls nor cuts it. The splice relay passes the
// urgent byte on as urgent, at its mark; the copy relay passes every
// in-band byte and drops the urgent one.
func TestContractUrgentData(t *testing.T) {
	h := newContractHarness(t)
	for _, relay := range relayModes {
		t.Run(relay+"/up-midstream", func(t *testing.T) {
			t.Parallel()
			up := steadyFlow(21, 1<<20)
			up.urgentAt, up.urgent = 64<<10, 0xa5
			h.run(t, plainScenario(relay, tcp4, tcp4, up, steadyFlow(22, 256<<10), closeShutdown, closeShutdown))
		})
		t.Run(relay+"/down-first-byte", func(t *testing.T) {
			t.Parallel()
			down := steadyFlow(23, 2<<20)
			down.urgentAt, down.urgent = 0, 0x5a
			client := tcp6
			if !h.v6 {
				client = tcp4
			}
			h.run(t, plainScenario(relay, client, tcp4, steadyFlow(24, 0), down, closeShutdown, closeShutdown))
		})
	}
}
