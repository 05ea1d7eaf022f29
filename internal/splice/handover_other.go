//go:build !linux

package splice

// Close closes fc's file descriptors.
func (fc *FrozenConn) Close() { fc.Forget() }
