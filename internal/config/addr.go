package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ParsePort reads a TCP port number 1-65535; what names it in the error
// ("listen port").
func ParsePort(what, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a number: use 1-65535", what, s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%s %d out of range: use 1-65535", what, n)
	}
	return n, nil
}

// Ephemeral reports whether the listen address a asks for port 0: the
// kernel picks a free port, so two such addresses never clash.
func Ephemeral(a string) bool {
	_, port, err := net.SplitHostPort(a)
	return err == nil && port == "0"
}

// CheckListen validates a listen address [HOST]:PORT, where HOST is an IP
// address or empty for all addresses; port 0 asks the kernel for a free
// port. what names the setting in the error ("-listen", "listen").
func CheckListen(what, a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%s %q: %v; write [HOST]:PORT, e.g. :8080 or 127.0.0.1:8080", what, a, addrErr(err))
	}
	if port != "0" {
		if _, err := ParsePort("listen port", port); err != nil {
			return err
		}
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return fmt.Errorf("%s %q: host must be an IP address (or empty for all addresses)", what, a)
		}
	}
	return nil
}

// CheckServer validates the shape of a backend address: HOST:PORT,
// [IPv6]:PORT or unix:/path. Resolving the host name is ResolveServer's.
// what names the setting in the error ("backend").
func CheckServer(what, b string) error {
	if path, ok := strings.CutPrefix(b, "unix:"); ok {
		if path == "" {
			return fmt.Errorf("%s %q: give a socket path, e.g. unix:/run/app.sock", what, b)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(b)
	if err != nil {
		return fmt.Errorf("%s %q: %v; write HOST:PORT, [IPv6]:PORT or unix:/path", what, b, addrErr(err))
	}
	if host == "" {
		return fmt.Errorf("%s %q has no host: write HOST:PORT, e.g. 127.0.0.1:80", what, b)
	}
	_, err = ParsePort(what+" port", port)
	return err
}

func addrErr(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

// ResolveServer turns a backend address checked by CheckServer into one
// that can be dialed. A host name is resolved once, now.
func ResolveServer(ctx context.Context, what, b string) (net.Addr, error) {
	if path, ok := strings.CutPrefix(b, "unix:"); ok {
		return &net.UnixAddr{Name: path, Net: "unix"}, nil
	}
	host, portStr, _ := net.SplitHostPort(b)
	port, _ := strconv.Atoi(portStr)
	if ip, err := netip.ParseAddr(host); err == nil {
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) {
			err = errors.New(de.Err)
		}
		return nil, fmt.Errorf("cannot resolve %s host '%s': %v; check the name or give an IP address", what, host, err)
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ips[0].Unmap(), uint16(port))), nil
}
