// Package handover carries rsp's live connections and listening sockets
// to the process that follows it: it packs the connections a relay froze
// (sockets, pipes with the bytes in flight) and the listeners into file
// descriptors and a memfd describing them, for systemd's file descriptor
// store or for a new rsp started by this one, and unpacks them on the
// other side.
//
// Each descriptor is known by its device and inode, which stay the same
// in every process that holds it, so the order in which descriptors
// arrive does not matter.
package handover

import (
	"net"
	"os"

	"rsp/internal/activation"
	"rsp/internal/splice"
)

// Names of the descriptors a hand-over passes (systemd's FDNAME).
const (
	StateName  = activation.HandoverState  // the memfd describing the rest
	FDName     = activation.HandoverFD     // a connection's socket or pipe
	ListenName = activation.HandoverListen // a listener rsp bound itself
	// ReadyName names the socket on which a process started by Exec
	// says that it serves, and hears that it may resume.
	ReadyName = activation.HandoverReady
)

// Listener is a listening socket rsp bound itself, by its key.
type Listener struct {
	Key string
	net.Listener
}

// Packed is what a hand-over passes: Files[i] named Names[i].
type Packed struct {
	Files []*os.File
	Names []string
}

// Close closes the packed descriptors (this process's copies).
func (p *Packed) Close() {
	for _, f := range p.Files {
		f.Close()
	}
}

// Unpacked is what a process received: the connections to thaw, with
// their descriptors, and the listeners by key.
type Unpacked struct {
	Conns     []splice.FrozenConn
	Listeners map[string]net.Listener
}
