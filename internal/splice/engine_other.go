//go:build !linux

package splice

import "net"

// startSplice falls back to the copy engine: splice(2) and epoll are
// Linux-only.
func startSplice(r *Relay, lns []net.Listener) (engine, error) {
	r.logger().Info("splice relay is Linux-only; relaying with io.Copy")
	return startCopy(r, lns)
}
