//go:build !linux

package splice

// peerShutWrite reports whether the peer of socket fd has sent FIN;
// where that cannot be asked without reading, it says no, and a peek
// waits for its deadline.
func peerShutWrite(fd uintptr) bool { return false }
