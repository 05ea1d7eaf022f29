//go:build !linux

package handover

import (
	"errors"
	"net"
	"os"
	"time"

	"rsp/internal/splice"
)

// errLinux: a hand-over needs Linux (memfd, the splice relay).
var errLinux = errors.New("handing live connections over needs Linux")

// Pack fails off Linux.
func Pack([]splice.FrozenConn, []Listener) (*Packed, error) { return nil, errLinux }

// AddListener fails off Linux.
func (p *Packed) AddListener(string, net.Listener) error { return errLinux }

// Unpack fails off Linux, closing files.
func Unpack(files []*os.File, _ []string) (*Unpacked, int, error) {
	for _, f := range files {
		f.Close()
	}
	return nil, 0, errLinux
}

// Exec fails off Linux.
func Exec(string, []string, *Packed, time.Duration) (*os.Process, error) { return nil, errLinux }

// Ready does nothing off Linux.
func Ready([]*os.File, []string) {}

// Store fails off Linux.
func Store(*Packed) error { return errLinux }

// Release does nothing off Linux.
func Release() error { return nil }
