//go:build !linux

package splice

// startSplice falls back to the copy engine: splice(2) and epoll are
// Linux-only.
func startSplice(r *Relay) (engine, error) {
	r.logger().Info("splice relay is Linux-only; relaying with io.Copy")
	return newCopyEngine(r), nil
}
