//go:build !linux

package config

import (
	"errors"
	"net"
)

// interfaceIndex returns the index of the network interface named name.
func interfaceIndex(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil && oe.Err.Error() == "no such network interface" {
			return 0, errNoInterface
		}
		return 0, err
	}
	return ifi.Index, nil
}
