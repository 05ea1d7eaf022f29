//go:build unix

package splice

import (
	"net"
	"syscall"
)

// soError returns the error the kernel holds for socket fd (a reset or a
// timeout that has not been read yet), or nil. Reading it clears it.
func soError(fd int) error {
	n, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
	if err != nil {
		return err
	}
	if n != 0 {
		return syscall.Errno(n)
	}
	return nil
}

// pendingError returns soError of c's socket.
func pendingError(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = soError(int(fd)) }); err != nil {
		return err
	}
	return serr
}
