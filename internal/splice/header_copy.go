package splice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// peekPoll is how often the copy relay looks again at a client's first
// bytes that came in part.
const peekPoll = 5 * time.Millisecond

// errPeekTimeout: the bytes looked for did not come by the deadline.
var errPeekTimeout = errors.New("deadline passed")

// peekUntil peeks, for the copy relay, at up to max of the first bytes c
// sends, until look says it has seen enough (look's eof: no more will
// come), deadline passes (errPeekTimeout), or ctx ends (the relay closes:
// errClosedByRelay). Nothing is consumed.
func peekUntil(ctx context.Context, c net.Conn, max int, deadline time.Time, look func(b []byte, eof bool) bool) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T cannot be peeked", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	// The relay closing ends the wait at once (a deadline now wakes the
	// read), not when the client's time is up.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, max)
	for {
		var (
			n    int
			fin  bool
			rerr error
		)
		err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			// Bytes and then FIN: the bytes peeked are all there is.
			fin = n > 0 && n < max && peerShutWrite(fd)
			if fin {
				n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			}
			return rerr != syscall.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		switch {
		case ctx.Err() != nil:
			return errClosedByRelay
		case errors.Is(err, os.ErrDeadlineExceeded):
			return errPeekTimeout
		case err != nil:
			return &peerError{err: fmt.Errorf("read from client: %w", err)}
		}
		if look(buf[:n], n == 0 || fin) {
			return nil
		}
		// Part of what is looked for: the socket stays readable (a peek
		// consumes nothing), so the poller cannot wait for the rest;
		// look again shortly. It rarely comes in pieces.
		if ctx.Err() != nil {
			return errClosedByRelay
		}
		if time.Now().After(deadline) {
			return errPeekTimeout
		}
		time.Sleep(peekPoll)
	}
}

// readHeaderConn reads, for the copy relay, the header a client sends
// before its bytes: it peeks until the header is whole (at most until
// deadline), then consumes exactly its length. It returns the client the
// header names (invalid: keep the connection's own).
func readHeaderConn(ctx context.Context, c net.Conn, h *HeaderRule, deadline time.Time) (netip.AddrPort, error) {
	var (
		client netip.AddrPort
		size   int
		perr   error
	)
	err := peekUntil(ctx, c, h.MaxLen, deadline, func(b []byte, eof bool) bool {
		var done bool
		client, size, done, perr = parseHeader(h, b, eof)
		return done || perr != nil
	})
	switch {
	case errors.Is(err, errPeekTimeout):
		return netip.AddrPort{}, wrapHeader("none came within the connect timeout")
	case err != nil:
		return netip.AddrPort{}, err
	case perr != nil:
		return netip.AddrPort{}, perr
	}
	if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
		return client, &peerError{err: fmt.Errorf("read PROXY header from client: %w", err)}
	}
	return client, nil
}

// readHelloConn routes d, for the copy relay, by the TLS ClientHello the
// client starts with, peeked and left in place.
func readHelloConn(ctx context.Context, r *Relay, c net.Conn, h *HelloRule, d *dialing) error {
	var name, why string
	err := peekUntil(ctx, c, h.MaxLen, time.Now().Add(h.timeout()), func(b []byte, eof bool) bool {
		var done bool
		name, why, done = parseHello(h, b, eof)
		return done
	})
	switch {
	case errors.Is(err, errPeekTimeout):
		name, why = "", fmt.Sprintf("no whole ClientHello within %v", h.timeout())
	case err != nil:
		return err
	}
	return routeHello(r, h, d, name, why)
}
