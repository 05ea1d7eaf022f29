//go:build !linux

package splice

import "net"

// resetClosed is false: the TCP state cannot be read here.
func resetClosed(net.Conn) bool { return false }

// waitFlushed returns at once: the send queue cannot be read here, so a
// reset may throw away bytes still queued.
func waitFlushed(net.Conn) {}
