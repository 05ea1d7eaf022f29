//go:build linux

package config

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// interfaceIndex returns the index of the network interface named name,
// asked of the kernel with the SIOCGIFINDEX ioctl on a datagram socket.
// Unlike net.InterfaceByName it needs no netlink socket, which rsp's
// systemd unit does not allow (RestrictAddressFamilies=).
func interfaceIndex(name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", errNoInterface, err) // too long for an interface name
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return 0, fmt.Errorf("socket for SIOCGIFINDEX: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return 0, errNoInterface
		}
		return 0, fmt.Errorf("SIOCGIFINDEX: %w", err)
	}
	return int(ifr.Uint32()), nil
}
