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

// Journal is crash survival's record, which needs Linux.
type Journal struct{}

// OpenJournal fails off Linux.
func OpenJournal(int, int) (*Journal, error) { return nil, errLinux }

// Loop is never called off Linux.
func (j *Journal) Loop(int) splice.LoopJournal { return nil }

// Close does nothing off Linux.
func (j *Journal) Close() {}

// Publish fails off Linux.
func (j *Journal) Publish() error { return errLinux }

// Capacity is 0 off Linux.
func (j *Journal) Capacity() int { return 0 }

// Recovered is empty off Linux.
type Recovered struct {
	Conns []splice.FrozenConn
	Reset int
	Names []string
}

// Recover finds nothing off Linux.
func Recover([]*os.File, []string) *Recovered { return &Recovered{} }

// Forget does nothing off Linux.
func Forget([]string) error { return nil }

// FDStore is a stand-in for systemd's store, which needs Linux.
type FDStore struct{ Path string }

// NewFDStore fails off Linux.
func NewFDStore(string) (*FDStore, error) { return nil, errLinux }

// Close does nothing off Linux.
func (s *FDStore) Close() {}

// Counts returns zeros: nothing is kept off Linux.
func (j *Journal) Counts() (kept, waiting int64) { return 0, 0 }
