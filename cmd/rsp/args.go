package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"rsp/internal/config"
	"rsp/internal/splice"
)

// options is everything the command line says.
type options struct {
	config         string   // -config FILE; the other relay settings then come from it
	listen         []string // addresses to bind when not socket-activated
	backend        string   // host:port or unix:/path, as given
	connectTimeout time.Duration
	idleTimeout    time.Duration
	halfClose      time.Duration
	drainTimeout   time.Duration
	keepAlive      time.Duration // TCP keepalive idle and interval, both sides; 0 = off
	userTimeout    time.Duration // TCP_USER_TIMEOUT, both sides; 0 = the kernel's
	maxConn        int
	relay          splice.Mode
	pipeSize       int
	notSentLowat   int
	logLevel       slog.Level
	metrics        string          // -metrics [HOST]:PORT
	control        string          // -control PATH
	connLog        string          // -conn-log all|errors|off
	logFormat      string          // -log-format text|json
	set            map[string]bool // flags given explicitly
	version        bool
	help           bool
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error {
	return &usageError{msg: config.OneLine(fmt.Sprintf(format, a...))}
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
	fs.StringVar(&o.config, "config", "", "")
	fs.Var((*listFlag)(&o.listen), "listen", "")
	fs.StringVar(&o.backend, "backend", "", "")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", config.DefaultConnectTimeout, "")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", config.DefaultIdleTimeout, "")
	fs.DurationVar(&o.halfClose, "half-close-timeout", 0, "")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", config.DefaultDrainTimeout, "")
	fs.DurationVar(&o.keepAlive, "tcp-keepalive", config.DefaultTCPKeepAlive, "")
	fs.DurationVar(&o.userTimeout, "tcp-user-timeout", 0, "")
	fs.IntVar(&o.maxConn, "maxconn", 0, "")
	fs.Var(modeFlag{&o.relay}, "relay", "")
	fs.IntVar(&o.pipeSize, "pipe-size", 0, "")
	fs.IntVar(&o.notSentLowat, "notsent-lowat", 0, "")
	fs.Var(levelFlag{&o.logLevel}, "log-level", "")
	fs.StringVar(&o.metrics, "metrics", "", "")
	fs.StringVar(&o.control, "control", "", "")
	fs.StringVar(&o.connLog, "conn-log", config.DefaultConnLog, "")
	fs.StringVar(&o.logFormat, "log-format", "text", "")
	fs.BoolVar(&o.version, "version", false, "")
	fs.BoolVar(&o.help, "h", false, "")
	fs.BoolVar(&o.help, "help", false, "")
	return fs
}

const usageText = `usage: rsp [flags] <listen_port> <backend_addr> <backend_port>
       rsp [flags] -listen [HOST]:PORT -backend HOST:PORT
       rsp -config FILE [-log-level LEVEL]
       rsp check -config FILE
       rsp ctl [-socket PATH] COMMAND [ARGS]   (rsp ctl help)
       rsp demo [-listen [HOST]:PORT]

rsp forwards every TCP connection it accepts to a backend, moving the
bytes inside the kernel with splice(2). Under systemd socket activation it
serves the sockets systemd passes and binds nothing itself. With -config it
serves several frontends and balances over pools of servers (see rsp(8));
'rsp check' validates a configuration file without starting.

flags:
  -config FILE             read frontends, backends and settings from FILE
                           (TOML); SIGHUP reloads it
  -listen [HOST]:PORT      address to accept on; repeat or comma-separate for
                           several (default: the <listen_port> argument on all
                           IPv4 and IPv6 addresses; ignored when systemd passes
                           sockets)
  -backend HOST:PORT       where connections go: host name, IPv4, [IPv6] or
                           unix:/path (default: <backend_addr>:<backend_port>)
  -connect-timeout DUR     give up connecting to the backend after DUR and
                           close the client (default 5s)
  -idle-timeout DUR        reset a connection when no byte moved either way
                           for DUR; 0 disables (default 10m0s)
  -half-close-timeout DUR  reset a connection on which one side finished
                           sending and no byte moved for DUR; 0 disables
                           (default 0)
  -maxconn N               relay at most N connections at once; more wait in
                           the kernel's backlog; 0 = no limit (default 0)
  -drain-timeout DUR       on SIGTERM/SIGINT, let live connections finish for
                           up to DUR, then close them (default 30s)
  -tcp-keepalive DUR       TCP keepalive on client and backend sockets: the
                           first probe after DUR quiet, then one every DUR;
                           whole seconds; 0 turns it off (default 15s)
  -tcp-user-timeout DUR    end a connection whose sent bytes stay
                           unacknowledged for DUR (TCP_USER_TIMEOUT), both
                           sides; 0 keeps the kernel's default (default 0)
  -relay splice|copy       splice: zero-copy through kernel pipes (default);
                           copy: io.Copy through user space
  -pipe-size BYTES         capacity asked of each pipe, 4096 to 67108864;
                           0 for the default (1048576)
  -notsent-lowat BYTES     bytes not yet sent that each TCP socket the splice
                           relay writes to may queue (TCP_NOTSENT_LOWAT),
                           4096 to 67108864; 0 for the default (131072), -1
                           for the kernel's (net.ipv4.tcp_notsent_lowat)
  -log-level LEVEL         debug, info, warn or error (default info)
  -log-format text|json    log lines as logfmt (default) or JSON
  -conn-log all|errors|off one log line per connection: every one, those
                           that did not end cleanly (default), or none
  -metrics [HOST]:PORT     serve Prometheus metrics at /metrics there
                           (default: none)
  -control PATH            serve 'rsp ctl' on a Unix socket at PATH
                           (default: none)
  -version                 print the version and exit
  -h, -help                print this help and exit

signals: SIGTERM/SIGINT drain and exit 0 (a second one closes at once);
SIGHUP reloads -config; SIGUSR1 logs counters (connections, pipes,
goroutines, fds).
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
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	if o.config != "" {
		for _, name := range []string{"listen", "backend", "connect-timeout", "idle-timeout", "half-close-timeout", "drain-timeout",
			"tcp-keepalive", "tcp-user-timeout", "maxconn", "relay", "pipe-size", "notsent-lowat", "metrics", "control", "conn-log", "log-format"} {
			if o.set[name] {
				return nil, usagef("-%s cannot be combined with -config: set it in the configuration file (see rsp(8))", name)
			}
		}
		if len(pos) > 0 {
			return nil, usagef("arguments %q cannot be combined with -config: the configuration file names the frontends and backends", pos)
		}
		return o, nil
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
	// The same checks, and words, as the configuration file's.
	for _, d := range []struct {
		name  string
		v     time.Duration
		check func(string, time.Duration) error
	}{
		{"-connect-timeout", o.connectTimeout, config.CheckConnectTimeout},
		{"-idle-timeout", o.idleTimeout, config.CheckDuration},
		{"-half-close-timeout", o.halfClose, config.CheckDuration},
		{"-drain-timeout", o.drainTimeout, config.CheckDuration},
		{"-tcp-keepalive", o.keepAlive, config.CheckKeepAlive},
		{"-tcp-user-timeout", o.userTimeout, config.CheckUserTimeout},
	} {
		if err := d.check(d.name, d.v); err != nil {
			return nil, &usageError{msg: err.Error()}
		}
	}
	if err := config.CheckPipeSize("-pipe-size", o.pipeSize); err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	if err := config.CheckNotSentLowat("-notsent-lowat", o.notSentLowat); err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	if o.maxConn < 0 {
		return nil, usagef("-maxconn %d is negative: give the most concurrent connections, or 0 for no limit", o.maxConn)
	}
	if o.metrics != "" {
		if err := config.CheckListen("-metrics", o.metrics); err != nil {
			return nil, &usageError{msg: err.Error()}
		}
	}
	if o.control != "" && !strings.HasPrefix(o.control, "/") {
		return nil, usagef("-control %q is not an absolute path: give the socket's path, such as /run/rsp/rsp.ctl", o.control)
	}
	switch o.connLog {
	case "all", "errors", "off":
	default:
		return nil, usagef("unknown -conn-log %q: use all, errors or off", o.connLog)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, usagef("unknown -log-format %q: use text or json", o.logFormat)
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
	n, err := config.ParsePort(what, s)
	if err != nil {
		return 0, &usageError{msg: err.Error()}
	}
	return n, nil
}

// checkListen validates a -listen address.
func checkListen(a string) error {
	if err := config.CheckListen("-listen", a); err != nil {
		return &usageError{msg: err.Error()}
	}
	return nil
}

// checkBackend validates the shape of a backend address; resolving the
// host name comes later.
func checkBackend(b string) error {
	if err := config.CheckServer("backend", b); err != nil {
		return &usageError{msg: err.Error()}
	}
	return nil
}
