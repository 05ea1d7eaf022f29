package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"rsp/internal/splice"
)

// options is everything the command line says.
type options struct {
	listen         []string // addresses to bind when not socket-activated
	backend        string   // host:port or unix:/path, as given
	connectTimeout time.Duration
	idleTimeout    time.Duration
	drainTimeout   time.Duration
	relay          splice.Mode
	pipeSize       int
	logLevel       slog.Level
	version        bool
	help           bool
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// listFlag is a flag that may be given several times.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

type modeFlag struct{ m *splice.Mode }

func (f modeFlag) String() string {
	if f.m == nil {
		return "splice"
	}
	return f.m.String()
}
func (f modeFlag) Set(s string) error {
	m, err := splice.ParseMode(s)
	if err != nil {
		return err
	}
	*f.m = m
	return nil
}

type levelFlag struct{ l *slog.Level }

func (f levelFlag) String() string {
	if f.l == nil {
		return "info"
	}
	return strings.ToLower(f.l.String())
}
func (f levelFlag) Set(s string) error {
	switch strings.ToLower(s) {
	case "debug":
		*f.l = slog.LevelDebug
	case "info":
		*f.l = slog.LevelInfo
	case "warn", "warning":
		*f.l = slog.LevelWarn
	case "error":
		*f.l = slog.LevelError
	default:
		return fmt.Errorf("unknown log level %q: use debug, info, warn or error", s)
	}
	return nil
}

// newFlagSet defines rsp's flags on a FlagSet that reports errors instead
// of printing them, writing into o.
func newFlagSet(name string, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var((*listFlag)(&o.listen), "listen", "")
	fs.StringVar(&o.backend, "backend", "", "")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", splice.DefaultConnectTimeout, "")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 10*time.Minute, "")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "")
	fs.Var(modeFlag{&o.relay}, "relay", "")
	fs.IntVar(&o.pipeSize, "pipe-size", 0, "")
	fs.Var(levelFlag{&o.logLevel}, "log-level", "")
	fs.BoolVar(&o.version, "version", false, "")
	fs.BoolVar(&o.help, "h", false, "")
	fs.BoolVar(&o.help, "help", false, "")
	return fs
}

const usageText = `usage: rsp [flags] <listen_port> <backend_addr> <backend_port>
       rsp [flags] -listen [HOST]:PORT -backend HOST:PORT
       rsp demo [-listen [HOST]:PORT]

rsp forwards every TCP connection it accepts to one backend, moving the
bytes inside the kernel with splice(2). Under systemd socket activation it
serves the sockets systemd passes and binds nothing itself.

flags:
  -listen [HOST]:PORT      address to accept on; repeat or comma-separate for
                           several (default: the <listen_port> argument on all
                           IPv4 and IPv6 addresses; ignored when systemd passes
                           sockets)
  -backend HOST:PORT       where connections go: host name, IPv4, [IPv6] or
                           unix:/path (default: <backend_addr>:<backend_port>)
  -connect-timeout DUR     give up connecting to the backend after DUR and
                           close the client (default 5s)
  -idle-timeout DUR        close a connection when no byte moved either way
                           for DUR; 0 disables (default 10m0s)
  -drain-timeout DUR       on SIGTERM/SIGINT, let live connections finish for
                           up to DUR, then close them (default 30s)
  -relay splice|copy       splice: zero-copy through kernel pipes (default);
                           copy: io.Copy through user space
  -log-level LEVEL         debug, info, warn or error (default info)
  -version                 print the version and exit
  -h, -help                print this help and exit

signals: SIGTERM/SIGINT drain and exit 0 (a second one closes at once);
SIGUSR1 logs counters (connections, pipes, goroutines, fds).
`

// parseArgs reads the command line. Errors are *usageError.
func parseArgs(args []string) (*options, error) {
	o := &options{}
	fs := newFlagSet("rsp", o)
	if err := fs.Parse(args); err != nil {
		return nil, flagError(err)
	}
	if o.help || o.version {
		return o, nil
	}
	pos := fs.Args()
	// Flags may also follow the classic positional arguments.
	if len(pos) > 0 {
		var rest []string
		for i := 0; i < len(pos); i++ {
			if strings.HasPrefix(pos[i], "-") && len(pos[i]) > 1 {
				if err := fs.Parse(pos[i:]); err != nil {
					return nil, flagError(err)
				}
				rest = append(rest, fs.Args()...)
				break
			}
			rest = append(rest, pos[i])
		}
		pos = rest
	}
	switch len(pos) {
	case 0:
	case 3:
		port, err := parsePort("listen port", pos[0])
		if err != nil {
			return nil, err
		}
		if _, err := parsePort("backend port", pos[2]); err != nil {
			return nil, err
		}
		if o.backend != "" {
			return nil, usagef("backend given twice: as arguments and as -backend %s; use one", o.backend)
		}
		if len(o.listen) == 0 {
			o.listen = []string{":" + strconv.Itoa(port)}
		}
		o.backend = net.JoinHostPort(pos[1], pos[2])
	default:
		return nil, usagef("expected <listen_port> <backend_addr> <backend_port>, got %d argument(s) %q; run 'rsp -h' for usage", len(pos), pos)
	}
	if o.backend == "" {
		return nil, usagef("no backend: give <listen_port> <backend_addr> <backend_port> or -backend HOST:PORT; run 'rsp -h' for usage")
	}
	for _, a := range o.listen {
		if err := checkListen(a); err != nil {
			return nil, err
		}
	}
	if err := checkBackend(o.backend); err != nil {
		return nil, err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-connect-timeout", o.connectTimeout}, {"-idle-timeout", o.idleTimeout}, {"-drain-timeout", o.drainTimeout}} {
		if d.v < 0 {
			return nil, usagef("%s %v is negative: give a duration such as 5s or 2m", d.name, d.v)
		}
	}
	if o.pipeSize < 0 || o.pipeSize > 64<<20 {
		return nil, usagef("-pipe-size %d out of range: give bytes from 4096 to 67108864, or 0 for the default", o.pipeSize)
	}
	if o.connectTimeout == 0 {
		return nil, usagef("-connect-timeout 0 would wait forever: give a duration such as 5s")
	}
	return o, nil
}

// flagError rewords the flag package's errors as one line with advice.
func flagError(err error) error {
	msg := err.Error()
	if strings.HasPrefix(msg, "flag provided but not defined: ") {
		return usagef("unknown flag %s; run 'rsp -h' for usage", strings.TrimPrefix(msg, "flag provided but not defined: "))
	}
	return usagef("%s; run 'rsp -h' for usage", msg)
}

// parsePort reads a TCP port number 1-65535.
func parsePort(what, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, usagef("%s %q is not a number: use 1-65535", what, s)
	}
	if n < 1 || n > 65535 {
		return 0, usagef("%s %d out of range: use 1-65535", what, n)
	}
	return n, nil
}

// checkListen validates a -listen address; port 0 asks the kernel for a
// free port.
func checkListen(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return usagef("-listen %q: %v; write [HOST]:PORT, e.g. :8080 or 127.0.0.1:8080", a, addrErr(err))
	}
	if port != "0" {
		if _, err := parsePort("listen port", port); err != nil {
			return err
		}
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return usagef("-listen %q: host must be an IP address (or empty for all addresses)", a)
		}
	}
	return nil
}

// checkBackend validates the shape of a backend address; resolving the
// host name comes later.
func checkBackend(b string) error {
	if path, ok := strings.CutPrefix(b, "unix:"); ok {
		if path == "" {
			return usagef("backend %q: give a socket path, e.g. unix:/run/app.sock", b)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(b)
	if err != nil {
		return usagef("backend %q: %v; write HOST:PORT, [IPv6]:PORT or unix:/path", b, addrErr(err))
	}
	if host == "" {
		return usagef("backend %q has no host: write HOST:PORT, e.g. 127.0.0.1:80", b)
	}
	_, err = parsePort("backend port", port)
	return err
}

func addrErr(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

// resolveBackend turns the backend string into an address the relay can
// dial. A host name is resolved once, at start.
func resolveBackend(ctx context.Context, b string) (net.Addr, error) {
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
		return nil, usagef("cannot resolve backend host '%s': %v; check the name or give an IP address", host, err)
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ips[0].Unmap(), uint16(port))), nil
}
