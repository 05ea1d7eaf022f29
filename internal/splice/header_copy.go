package splice

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// headerPoll is how often the copy relay looks again at a header that
// came in part.
const headerPoll = 5 * time.Millisecond

// readHeaderConn reads, for the copy relay, the header a client sends
// before its bytes: it peeks until the header is whole (at most until
// deadline), then consumes exactly its length. It returns the client the
// header names (invalid: keep the connection's own).
func readHeaderConn(c net.Conn, h *HeaderRule, deadline time.Time) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, wrapHeader("the client socket cannot be peeked")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", errBadHeader, err)
	}
	c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, h.MaxLen)
	for {
		var (
			n    int
			rerr error
		)
		err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return rerr != syscall.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return netip.AddrPort{}, wrapHeader("none came within the connect timeout")
			}
			return netip.AddrPort{}, &peerError{err: fmt.Errorf("read PROXY header from client: %w", err)}
		}
		client, size, done, perr := parseHeader(h, buf[:n], n == 0)
		if perr != nil {
			return client, perr
		}
		if done {
			if _, err := io.ReadFull(c, buf[:size]); err != nil {
				return client, &peerError{err: fmt.Errorf("read PROXY header from client: %w", err)}
			}
			return client, nil
		}
		// Part of a header: the socket stays readable (a peek consumes
		// nothing), so the poller cannot wait for the rest; look again
		// shortly. A header rarely comes in pieces.
		if time.Now().After(deadline) {
			return netip.AddrPort{}, wrapHeader("none came within the connect timeout")
		}
		time.Sleep(headerPoll)
	}
}
