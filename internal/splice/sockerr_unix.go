//go:build unix

package splice

import (
	"net"
	"syscall"
)

// pendingError returns the error the kernel holds for c's socket (a reset
// or a timeout that has not been read yet), or nil.
func pendingError(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var soErr int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		soErr, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
	}); err != nil {
		return err
	}
	if gerr != nil {
		return gerr
	}
	if soErr != 0 {
		return syscall.Errno(soErr)
	}
	return nil
}
