//go:build !unix

package splice

import "net"

// pendingError reports nothing where the socket error cannot be read: a
// failed peer is then noticed at the idle timeout.
func pendingError(net.Conn) error { return nil }
