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
// that can be dialed. A host name is resolved once, now, and so is the
// zone of a link-local IPv6 address ([fe80::1%eth0]:80): the interface
// name becomes its index, so the returned *net.TCPAddr's Zone is always
// numeric ("2") and dialing it needs no interface lookup.
func ResolveServer(ctx context.Context, what, b string) (net.Addr, error) {
	if path, ok := strings.CutPrefix(b, "unix:"); ok {
		return &net.UnixAddr{Name: path, Net: "unix"}, nil
	}
	host, portStr, _ := net.SplitHostPort(b)
	port, _ := strconv.Atoi(portStr)
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip, err = numericZone(what, ip); err != nil {
			return nil, err
		}
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

// numericZone replaces the interface name in ip's zone by the interface's
// index, looked up once, now; a numeric zone is kept as it is. what names
// the address in the error ("server", "backend").
func numericZone(what string, ip netip.Addr) (netip.Addr, error) {
	zone := ip.Zone()
	if zone == "" {
		return ip, nil
	}
	if n, err := strconv.Atoi(zone); err == nil && n > 0 {
		return ip, nil
	}
	idx, err := interfaceIndex(zone)
	switch {
	case errors.Is(err, errNoInterface):
		return ip, fmt.Errorf("no network interface %q on this host (the zone of %s %s): name one that 'ip link' lists, or give its index", zone, what, ip)
	case err != nil:
		return ip, fmt.Errorf("look up network interface %q (the zone of %s %s): %v", zone, what, ip, err)
	}
	return ip.WithZone(strconv.Itoa(idx)), nil
}

// errNoInterface is wrapped by interfaceIndex's error when no interface
// has the name.
var errNoInterface = errors.New("no such network interface")

// bindKey is the socket a listen address binds: an IP (the zero Addr for
// all addresses) and a port.
type bindKey struct {
	ip   netip.Addr
	port int
}

// listenKey returns the socket the listen address a (checked by
// CheckListen) binds. An empty host, 0.0.0.0 and [::] all bind one
// dual-stack socket on every IPv4 and IPv6 address (Go's net.Listen
// "tcp"); localhost binds 127.0.0.1, the first IPv4 address it has.
func listenKey(a string) bindKey {
	host, portStr, _ := net.SplitHostPort(a)
	port, _ := strconv.Atoi(portStr)
	k := bindKey{port: port}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
		k.ip = ip.Unmap()
	}
	return k
}

// clashes reports whether sockets k and o cannot both be bound: the same
// port, and the same address or one of them on all addresses.
func (k bindKey) clashes(o bindKey) bool {
	return k.port == o.port && (k.ip == o.ip || !k.ip.IsValid() || !o.ip.IsValid())
}
