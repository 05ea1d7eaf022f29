// Package config reads rsp's configuration file: TOML describing
// frontends (where to listen), backends (pools of servers) and their
// timeouts, limits, balancing and health checks. It checks everything it
// can before rsp starts and names file:line and what to fix in each error.
//
// Typical usage:
//
//	cfg, err := config.Load("/etc/rsp/rsp.conf")
//	if err != nil { ... } // every mistake, one per line: "rsp.conf:12: ..."
package config

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"

	"rsp/internal/balance"
	"rsp/internal/dns"
	"rsp/internal/proxyproto"
	"rsp/internal/splice"
)

// Defaults of settings the file (or the command line) leaves out.
const (
	DefaultConnectTimeout = splice.DefaultConnectTimeout
	DefaultIdleTimeout    = 10 * time.Minute
	DefaultDrainTimeout   = 30 * time.Second
	// DefaultTCPKeepAlive is the idle time before the first keepalive
	// probe and the interval between probes: Go's net package default,
	// which the copy relay used before keepalive was configurable.
	DefaultTCPKeepAlive  = 15 * time.Second
	DefaultRetries       = 2
	DefaultEjectAfter    = 3
	DefaultEjectTime     = balance.DefaultEjectTime
	DefaultCheckInterval = 2 * time.Second
	DefaultCheckTimeout  = time.Second
	DefaultRise          = balance.DefaultRise
	DefaultFall          = balance.DefaultFall
	DefaultWeight        = 1
	// MaxWeight bounds a server's weight, as in HAProxy.
	MaxWeight = 256
)

// Config is a checked configuration.
type Config struct {
	Path         string
	MaxConn      int
	Relay        string // "splice" or "copy"
	DrainTimeout time.Duration
	LogLevel     string // "debug", "info", "warn" or "error"
	PipeSize     int
	// NotSentLowat is notsent_lowat: 0 for the default, -1 for the
	// kernel's own setting.
	NotSentLowat int
	// Metrics is the [HOST]:PORT of the /metrics listener; "" for none
	// (a systemd socket named "metrics" serves it too).
	Metrics string
	// Control is the path of the control socket for rsp ctl; "" for none.
	Control string
	// LogFormat is "text" (logfmt) or "json".
	LogFormat string
	// ConnLog is which connections get a line: "all", "errors" or "off".
	ConnLog string
	// ConnLogSample is the share of clean connections logged with
	// ConnLog "all", in (0, 1].
	ConnLogSample float64
	// Resolvers are the DNS servers ("IP:PORT") asked for the servers'
	// host and SRV names; empty: those of /etc/resolv.conf.
	Resolvers []string
	// Handover is what SIGTERM does under systemd: "auto" (hand over when
	// systemd restarts rsp and keeps its descriptors, else drain),
	// "restart" (the same, saying why not when it cannot), "crash" (as
	// "restart", and each connection is kept in systemd's store while it
	// lives, so that one killed rsp's successor resumes it) or "off"
	// (always drain).
	Handover  string
	Frontends []*Frontend // by name
	Backends  []*Backend  // by name
}

// AnySocket as a Frontend's Socket takes every socket systemd passed,
// whatever its name: the classic command line under socket activation.
const AnySocket = "*"

// Frontend is where clients connect and which backend serves them.
type Frontend struct {
	Name             string
	Listen           []string // [HOST]:PORT to bind; empty when Socket is set
	Socket           string   // name of a socket passed by systemd (FileDescriptorName=)
	Backend          string
	ConnectTimeout   time.Duration
	IdleTimeout      time.Duration
	HalfCloseTimeout time.Duration
	// MaxConn bounds the frontend's connections at once; a client beyond
	// it is reset at once. 0 means no limit.
	MaxConn int
	// Allow and Deny are the client prefixes let in and kept out: a
	// client in Deny, or outside a non-empty Allow, is refused before
	// any server is dialed.
	Allow, Deny []netip.Prefix
	// AcceptProxyFrom, if not empty, makes the frontend take a PROXY
	// protocol header (v1 or v2) from each client, which must be in one
	// of these prefixes.
	AcceptProxyFrom []netip.Prefix
	// SNI routes by TLS server name: exact names, then "*." wildcards of
	// one label; what matches none goes to Backend, or is closed with
	// SNIFallback "close" (so are clients that are not TLS, send no name
	// or take longer than SNITimeout).
	SNI         []SNIRoute
	SNIFallback string
	SNITimeout  time.Duration
	// Sources bounds what each client address may take.
	Sources SourceLimits
	// KeepAlive is set on the frontend's client sockets.
	KeepAlive splice.KeepAlive
	// Where is "file:line" of the frontend's section, for errors found
	// at run time (a socket systemd did not pass).
	Where string
}

// SourceLimits bound what each client address of a frontend may take;
// zero values mean no limit.
type SourceLimits struct {
	PerSource int     // connections at once per client address
	PerPrefix int     // connections at once per prefix of PrefixV4 / PrefixV6 bits
	PrefixV4  int     // 24 by default
	PrefixV6  int     // 64 by default
	Rate      float64 // new connections per second per address
	Burst     int     // token bucket size; 0: the rate rounded up, at least 1
}

// Enabled reports whether any limit is set.
func (s SourceLimits) Enabled() bool { return s.PerSource > 0 || s.PerPrefix > 0 || s.Rate > 0 }

// SNIRoute sends connections whose TLS server name matches Pattern to
// Backend.
type SNIRoute struct {
	Pattern string // a host name, or "*." and a domain
	Backend string
}

// Backend is a pool of servers and how to balance and check them.
type Backend struct {
	Name    string
	Balance balance.Algorithm
	Retries int
	Health  balance.Health
	// Servers are the pool: those given by address and those the
	// name servers found, in name order.
	Servers []balance.ServerConfig
	// Names are the servers given by a host name or an SRV name, which
	// DNS is asked for again while rsp runs.
	Names []*NameServer
	// KeepAlive is set on the sockets connected to the servers.
	KeepAlive splice.KeepAlive
	// Source is the local address of connections to the servers; zero
	// lets the kernel choose.
	Source netip.Addr
	// SendProxy is the PROXY protocol version sent to the servers before
	// a connection's bytes; 0 sends none.
	SendProxy proxyproto.Version

	static []balance.ServerConfig // the servers given by address
}

// Backend returns the backend named name, or nil.
func (c *Config) Backend(name string) *Backend {
	for _, b := range c.Backends {
		if b.Name == name {
			return b
		}
	}
	return nil
}

// The file's shape. Pointers tell "left out" from zero.
type fileConfig struct {
	Global   globalSection              `toml:"global"`
	Defaults defaultsSection            `toml:"defaults"`
	Frontend map[string]frontendSection `toml:"frontend"`
	Backend  map[string]backendSection  `toml:"backend"`
}

type globalSection struct {
	MaxConn       *int      `toml:"maxconn"`
	Relay         *string   `toml:"relay"`
	DrainTimeout  *duration `toml:"drain_timeout"`
	LogLevel      *string   `toml:"log_level"`
	PipeSize      *int      `toml:"pipe_size"`
	NotSentLowat  *int      `toml:"notsent_lowat"`
	Metrics       *string   `toml:"metrics"`
	Control       *string   `toml:"control"`
	LogFormat     *string   `toml:"log_format"`
	ConnLog       *string   `toml:"conn_log"`
	ConnLogSample *float64  `toml:"conn_log_sample"`
	Resolvers     *hostList `toml:"resolvers"`
	Handover      *string   `toml:"handover"`
}

type timeoutSection struct {
	ConnectTimeout   *duration `toml:"connect_timeout"`
	IdleTimeout      *duration `toml:"idle_timeout"`
	HalfCloseTimeout *duration `toml:"half_close_timeout"`
}

// keepAliveSection is how a socket notices a vanished peer; in
// [defaults] for both sides, in a frontend for its clients' sockets, in a
// backend for its servers'.
type keepAliveSection struct {
	TCPKeepAlive      *duration `toml:"tcp_keepalive"`
	TCPKeepAliveCount *int      `toml:"tcp_keepalive_count"`
	TCPUserTimeout    *duration `toml:"tcp_user_timeout"`
}

type defaultsSection struct {
	timeoutSection
	keepAliveSection
}

type frontendSection struct {
	Listen  *addrList   `toml:"listen"`
	Socket  *string     `toml:"socket"`
	Backend *string     `toml:"backend"`
	MaxConn *int        `toml:"maxconn"`
	Allow   *prefixList `toml:"allow"`
	// AcceptProxyFrom lists the proxies in front trusted to send a
	// PROXY header.
	AcceptProxyFrom *prefixList `toml:"accept_proxy_from"`
	// SNI maps TLS server names ("api.example.com", "*.example.com") to
	// backends.
	SNI         map[string]string `toml:"sni"`
	SNIFallback *string           `toml:"sni_fallback"`
	// Per-source limits.
	PerSourceMaxConn *int        `toml:"per_source_maxconn"`
	PerPrefixMaxConn *int        `toml:"per_prefix_maxconn"`
	SourcePrefixV4   *int        `toml:"source_prefix_v4"`
	SourcePrefixV6   *int        `toml:"source_prefix_v6"`
	PerSourceRate    *float64    `toml:"per_source_rate"`
	PerSourceBurst   *int        `toml:"per_source_burst"`
	SNITimeout       *duration   `toml:"sni_timeout"`
	Deny             *prefixList `toml:"deny"`
	timeoutSection
	keepAliveSection
}

type backendSection struct {
	Balance    *string                  `toml:"balance"`
	Retries    *int                     `toml:"retries"`
	EjectAfter *int                     `toml:"eject_after"`
	EjectTime  *duration                `toml:"eject_time"`
	Health     *healthSection           `toml:"health"`
	Server     map[string]serverSection `toml:"server"`
	Source     *string                  `toml:"source"`
	SendProxy  *string                  `toml:"send_proxy"`
	keepAliveSection
}

type healthSection struct {
	Interval *duration `toml:"interval"`
	Timeout  *duration `toml:"timeout"`
	Rise     *int      `toml:"rise"`
	Fall     *int      `toml:"fall"`
}

type serverSection struct {
	Address      *string   `toml:"address"`
	SRV          *string   `toml:"srv"`
	Resolve      *string   `toml:"resolve"`
	ResolveEvery *duration `toml:"resolve_every"`
	Weight       *int      `toml:"weight"`
	MaxConn      *int      `toml:"maxconn"`
	Backup       *bool     `toml:"backup"`
}

// duration is a TOML string such as "5s" or "2m30s".
type duration time.Duration

func (d *duration) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("duration must be a string with a unit, e.g. \"5s\" or \"2m\", not %v", v)
	}
	x, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("bad duration %q: write a number with a unit, e.g. \"500ms\", \"5s\", \"2m\"", s)
	}
	if x < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = duration(x)
	return nil
}

// addrList is one address or a list of them.
type addrList []string

// hostList is a string or a list of strings (resolvers).
type hostList []string

func (l *hostList) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*l = hostList{v}
		return nil
	case []any:
		*l = hostList{}
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("resolvers takes DNS server addresses (\"10.0.0.53\", \"[2001:db8::53]:53\") as a string or a list; found %v", e)
			}
			*l = append(*l, s)
		}
		return nil
	}
	return fmt.Errorf("resolvers takes DNS server addresses (\"10.0.0.53\", \"[2001:db8::53]:53\") as a string or a list, not %v", v)
}

// prefixList is a string or a list of strings: CIDR prefixes or
// addresses (allow, deny, accept_proxy_from). An empty list is allowed.
type prefixList []string

func (l *prefixList) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*l = prefixList{v}
		return nil
	case []any:
		*l = prefixList{}
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("allow, deny and accept_proxy_from take a CIDR prefix string (\"10.0.0.0/8\") or a list of them; found %v", e)
			}
			*l = append(*l, s)
		}
		return nil
	}
	return fmt.Errorf("allow, deny and accept_proxy_from take a CIDR prefix string (\"10.0.0.0/8\") or a list of them, not %v", v)
}

func (l *addrList) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*l = addrList{v}
		return nil
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("listen must be an address string or a list of them, found %v", e)
			}
			*l = append(*l, s)
		}
		if len(*l) == 0 {
			return errors.New("listen is an empty list: give at least one [HOST]:PORT")
		}
		return nil
	}
	return fmt.Errorf("listen must be an address string or a list of them, not %v", v)
}

// Error is one mistake in a configuration file.
type Error struct {
	Path string
	Line int // 0 when not known
	Msg  string
}

func (e *Error) Error() string {
	msg := OneLine(e.Msg) // each mistake is one line of the error
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, msg)
}

// Load reads and checks the configuration file at path. Host names of
// servers are resolved now. The error lists every mistake found, one per
// line.
func Load(path string) (*Config, error) { return LoadAfter(path, nil) }

// LoadAfter is Load for a reload of running: a server with resolve =
// "first" keeps the address it has while its name still gives it, as
// between two lookups while rsp runs.
func LoadAfter(path string, running *Config) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return parseAfter(path, string(src), NewLookup, running)
}

// checker collects the mistakes of one file.
type checker struct {
	path    string
	idx     lineIndex
	errs    []error
	lookup  func(resolvers []string) Lookup
	dns     Lookup        // set once [global] is read
	names   []pendingName // resolved once the whole file is read
	running *Config       // the configuration a reload replaces; nil at start
}

func (c *checker) add(key []string, format string, a ...any) {
	c.errs = append(c.errs, &Error{Path: c.path, Line: c.idx.line(key...), Msg: fmt.Sprintf(format, a...)})
}

func (c *checker) where(key ...string) string {
	return fmt.Sprintf("%s:%d", c.path, c.idx.line(key...))
}

// Parse checks the configuration src, read from path (used in errors).
func Parse(path, src string) (*Config, error) {
	return parse(path, src, NewLookup)
}

// NewLookup is the Lookup rsp uses: DNS servers resolvers, or those of
// /etc/resolv.conf when it is empty, after /etc/hosts.
func NewLookup(resolvers []string) Lookup { return &dns.Client{Servers: resolvers} }

// parse is Parse with the name lookup given (the fuzz test resolves
// nothing over the network).
func parse(path, src string, lookup func([]string) Lookup) (*Config, error) {
	return parseAfter(path, src, lookup, nil)
}

// parseAfter is parse for a reload of running (nil at start).
func parseAfter(path, src string, lookup func([]string) Lookup, running *Config) (*Config, error) {
	var f fileConfig
	md, err := toml.Decode(src, &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{Path: path, Line: pe.Position.Line, Msg: pe.Message}
		}
		return nil, &Error{Path: path, Msg: err.Error()}
	}
	c := &checker{path: path, idx: indexLines(src), lookup: lookup, running: running}
	c.unknownKeys(md.Undecoded())
	cfg := c.build(&f)
	c.resolveNames()
	for _, b := range cfg.Backends {
		b.expand()
	}
	if len(c.errs) > 0 {
		// In file order: names are resolved after every other check.
		slices.SortStableFunc(c.errs, func(a, b error) int {
			var ea, eb *Error
			if !errors.As(a, &ea) || !errors.As(b, &eb) {
				return 0
			}
			return cmp.Compare(ea.Line, eb.Line)
		})
		return nil, errors.Join(c.errs...)
	}
	return cfg, nil
}

// unknownKeys reports keys rsp does not know, with the nearest known one.
// Of an unknown table only the table is reported, not every key in it.
func (c *checker) unknownKeys(keys []toml.Key) {
	var reported []toml.Key
	for _, k := range keys {
		k = firstUnknown(k)
		if slices.ContainsFunc(reported, func(r toml.Key) bool { return hasPrefix(k, r) }) {
			continue
		}
		reported = append(reported, k)
		name := k[len(k)-1]
		section, known := knownKeys(k[:len(k)-1])
		msg := fmt.Sprintf("unknown key %q in %s", name, section)
		if where := belongsIn(name); where != "" {
			msg += ": set it in " + where
		} else if s := closest(name, known); s != "" {
			msg += fmt.Sprintf("; did you mean %q?", s)
		} else if len(known) > 0 {
			msg += "; known keys: " + strings.Join(known, ", ")
		}
		c.add(k, "%s", msg)
	}
}

// firstUnknown shortens k to its first part that its section does not
// know.
func firstUnknown(k toml.Key) toml.Key {
	for i := 1; i <= len(k); i++ {
		if _, known := knownKeys(k[:i-1]); known != nil && !slices.Contains(known, k[i-1]) {
			return k[:i]
		}
	}
	return k
}

func hasPrefix(k, p toml.Key) bool {
	return len(k) >= len(p) && slices.Equal(k[:len(p)], p)
}

// knownKeys names the section a key sits in and lists the keys allowed
// there.
func knownKeys(parent toml.Key) (string, []string) {
	var t reflect.Type
	section := "[" + strings.Join(parent, ".") + "]"
	switch {
	case len(parent) == 0:
		t, section = reflect.TypeFor[fileConfig](), "the top level"
	case len(parent) == 1 && parent[0] == "global":
		t = reflect.TypeFor[globalSection]()
	case len(parent) == 1 && parent[0] == "defaults":
		t = reflect.TypeFor[defaultsSection]()
	case len(parent) == 2 && parent[0] == "frontend":
		t = reflect.TypeFor[frontendSection]()
	case len(parent) == 2 && parent[0] == "backend":
		t = reflect.TypeFor[backendSection]()
	case len(parent) == 3 && parent[0] == "backend" && parent[2] == "health":
		t = reflect.TypeFor[healthSection]()
	case len(parent) == 4 && parent[0] == "backend" && parent[2] == "server":
		t = reflect.TypeFor[serverSection]()
	default:
		return section, nil
	}
	return section, tomlKeys(t)
}

// belongsIn names the sections where key is allowed, if it is a key of
// a section at all ("[defaults] or [frontend.NAME]"); "" if it is not.
func belongsIn(key string) string {
	var where []string
	for _, s := range []struct {
		name string
		t    reflect.Type
	}{
		{"[global]", reflect.TypeFor[globalSection]()},
		{"[defaults]", reflect.TypeFor[defaultsSection]()},
		{"[frontend.NAME]", reflect.TypeFor[frontendSection]()},
		{"[backend.NAME]", reflect.TypeFor[backendSection]()},
		{"[backend.NAME.health]", reflect.TypeFor[healthSection]()},
		{"[backend.NAME.server.SNAME]", reflect.TypeFor[serverSection]()},
	} {
		if slices.Contains(tomlKeys(s.t), key) {
			where = append(where, s.name)
		}
	}
	switch len(where) {
	case 0:
		return ""
	case 1:
		return where[0]
	}
	return strings.Join(where[:len(where)-1], ", ") + " or " + where[len(where)-1]
}

func tomlKeys(t reflect.Type) []string {
	var keys []string
	for f := range t.Fields() {
		if f.Anonymous {
			keys = append(keys, tomlKeys(f.Type)...)
			continue
		}
		if tag := f.Tag.Get("toml"); tag != "" {
			keys = append(keys, tag)
		}
	}
	return keys
}

// closest returns the known key within two edits of name, if any.
func closest(name string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func durOr(d *duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return time.Duration(*d)
}

func intOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

func strOr(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

// build checks f and turns it into a Config.
func (c *checker) build(f *fileConfig) *Config {
	cfg := &Config{
		Path:         c.path,
		MaxConn:      intOr(f.Global.MaxConn, 0),
		Relay:        strOr(f.Global.Relay, "splice"),
		DrainTimeout: durOr(f.Global.DrainTimeout, DefaultDrainTimeout),
		LogLevel:     strOr(f.Global.LogLevel, "info"),
		PipeSize:     intOr(f.Global.PipeSize, 0),
		NotSentLowat: intOr(f.Global.NotSentLowat, 0),
		Metrics:      strOr(f.Global.Metrics, ""),
		Control:      strOr(f.Global.Control, ""),
		LogFormat:    strOr(f.Global.LogFormat, "text"),
		ConnLog:      strOr(f.Global.ConnLog, DefaultConnLog),
		Handover:     strOr(f.Global.Handover, "auto"),
	}
	cfg.ConnLogSample = 1
	if f.Global.ConnLogSample != nil {
		cfg.ConnLogSample = *f.Global.ConnLogSample
	}
	c.checkObservability(cfg)
	if cfg.MaxConn < 0 {
		c.add([]string{"global", "maxconn"}, "maxconn %d is negative: give the most concurrent connections, or 0 for no limit", cfg.MaxConn)
	}
	switch cfg.Handover {
	case "auto", "restart", "crash", "off":
	default:
		c.add([]string{"global", "handover"}, "unknown handover %q: use \"auto\" (hand live connections to the next rsp when systemd restarts it, if the unit sets FileDescriptorStoreMax=), \"restart\" (the same, warning when it cannot), \"crash\" (the same, and connections outlive a killed rsp) or \"off\" (drain at every stop)", cfg.Handover)
	}
	if cfg.Relay != "splice" && cfg.Relay != "copy" {
		c.add([]string{"global", "relay"}, "unknown relay %q: use \"splice\" or \"copy\"", cfg.Relay)
	}
	switch cfg.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		c.add([]string{"global", "log_level"}, "unknown log_level %q: use debug, info, warn or error", cfg.LogLevel)
	}
	if err := CheckPipeSize("pipe_size", cfg.PipeSize); err != nil {
		c.add([]string{"global", "pipe_size"}, "%v", err)
	}
	if err := CheckNotSentLowat("notsent_lowat", cfg.NotSentLowat); err != nil {
		c.add([]string{"global", "notsent_lowat"}, "%v", err)
	}
	c.checkDuration([]string{"global", "drain_timeout"}, "", f.Global.DrainTimeout, CheckDuration)
	if f.Global.Resolvers != nil {
		cfg.Resolvers = c.resolvers(*f.Global.Resolvers)
	}
	c.dns = c.lookup(cfg.Resolvers)
	c.checkTimeouts([]string{"defaults"}, "", f.Defaults.timeoutSection)
	c.checkKeepAlive([]string{"defaults"}, "", f.Defaults.keepAliveSection)

	for _, name := range sortedKeys(f.Backend) {
		if b := c.backend(name, f.Backend[name], f.Defaults.keepAliveSection); b != nil {
			cfg.Backends = append(cfg.Backends, b)
		}
	}
	if len(f.Frontend) == 0 {
		c.add(nil, "no frontend: add a [frontend.NAME] section with listen (or socket) and backend")
	}
	type boundBy struct {
		key      bindKey
		frontend string
		listen   string
	}
	var listens []boundBy
	socketBy := map[string]string{}
	for _, name := range sortedKeys(f.Frontend) {
		fs := f.Frontend[name]
		key := []string{"frontend", name}
		fe := &Frontend{
			Name:             name,
			Backend:          strOr(fs.Backend, ""),
			Socket:           strOr(fs.Socket, ""),
			ConnectTimeout:   durOr(fs.ConnectTimeout, durOr(f.Defaults.ConnectTimeout, DefaultConnectTimeout)),
			IdleTimeout:      durOr(fs.IdleTimeout, durOr(f.Defaults.IdleTimeout, DefaultIdleTimeout)),
			HalfCloseTimeout: durOr(fs.HalfCloseTimeout, durOr(f.Defaults.HalfCloseTimeout, 0)),
			MaxConn:          intOr(fs.MaxConn, 0),
			KeepAlive:        keepAlive(fs.keepAliveSection, f.Defaults.keepAliveSection),
			Where:            c.where(key...),
		}
		c.checkTimeouts(key, "frontend "+name+": ", fs.timeoutSection)
		fe.Allow = c.prefixes(append(key, "allow"), "frontend "+name+": allow", fs.Allow)
		fe.Deny = c.prefixes(append(key, "deny"), "frontend "+name+": deny", fs.Deny)
		fe.AcceptProxyFrom = c.prefixes(append(key, "accept_proxy_from"), "frontend "+name+": accept_proxy_from", fs.AcceptProxyFrom)
		if fs.AcceptProxyFrom != nil && len(fe.AcceptProxyFrom) == 0 && len(*fs.AcceptProxyFrom) == 0 {
			c.add(append(key, "accept_proxy_from"), "frontend %s: accept_proxy_from is empty: list the proxies in front (CIDR prefixes), or remove the key", name)
		}
		c.sni(key, name, fe, fs, f.Backend)
		c.sourceLimits(key, name, fe, fs)
		if fe.MaxConn < 0 {
			c.add(append(key, "maxconn"), "frontend %s: maxconn %d is negative: give the most connections at once, or 0 for no limit", name, fe.MaxConn)
		}
		c.checkKeepAlive(key, "frontend "+name+": ", fs.keepAliveSection)
		if fs.Listen != nil {
			fe.Listen = *fs.Listen
		}
		if name == "" {
			c.add(key, "frontend has an empty name: write [frontend.NAME]")
		}
		switch {
		case fs.Listen != nil && fs.Socket != nil:
			c.add(append(key, "socket"), "frontend %s has both listen and socket: keep listen to bind the address yourself, or socket to take it from systemd", name)
		case fs.Listen == nil && fs.Socket == nil:
			c.add(key, "frontend %s has no listen or socket: add listen = \"[HOST]:PORT\" or socket = \"NAME\" (a FileDescriptorName= of rsp.socket)", name)
		}
		for _, a := range fe.Listen {
			if err := CheckListen("listen", a); err != nil {
				c.add(append(key, "listen"), "frontend %s: %v", name, err)
				continue
			}
			if Ephemeral(a) {
				continue
			}
			k := listenKey(a)
			for _, o := range listens {
				if !k.clashes(o.key) {
					continue
				}
				switch {
				case o.listen == a:
					c.add(append(key, "listen"), "frontend %s: listen %s is also frontend %s's: each address may be bound once", name, a, o.frontend)
				case k == o.key && !k.ip.IsValid():
					c.add(append(key, "listen"), "frontend %s: listen %s clashes with frontend %s's listen %s: both bind every IPv4 and IPv6 address on port %d; keep one", name, a, o.frontend, o.listen, k.port)
				case k == o.key:
					c.add(append(key, "listen"), "frontend %s: listen %s clashes with frontend %s's listen %s: the same address and port; keep one", name, a, o.frontend, o.listen)
				default:
					c.add(append(key, "listen"), "frontend %s: listen %s clashes with frontend %s's listen %s: one of them binds port %d on every IPv4 and IPv6 address, so the other cannot be bound; use another port, or drop one", name, a, o.frontend, o.listen, k.port)
				}
				break
			}
			listens = append(listens, boundBy{key: k, frontend: name, listen: a})
		}
		if fs.Socket != nil {
			if fe.Socket == "" {
				c.add(append(key, "socket"), "frontend %s: socket is empty: give the FileDescriptorName= of the socket unit", name)
			} else if fe.Socket == MetricsSocket {
				c.add(append(key, "socket"), "frontend %s: socket %q is reserved for the metrics listener (rsp-metrics.socket): name the frontend's socket otherwise", name, fe.Socket)
			} else if other, ok := socketBy[fe.Socket]; ok {
				c.add(append(key, "socket"), "frontend %s: socket %q is also frontend %s's: each socket may serve one frontend", name, fe.Socket, other)
			}
			socketBy[fe.Socket] = name
		}
		switch {
		case fs.Backend == nil:
			c.add(key, "frontend %s has no backend: add backend = \"NAME\" naming a [backend.NAME] section", name)
		case !hasKey(f.Backend, fe.Backend):
			c.add(append(key, "backend"), "frontend %s: no backend named %q; defined: %s", name, fe.Backend, strings.Join(sortedKeys(f.Backend), ", "))
		}
		cfg.Frontends = append(cfg.Frontends, fe)
	}
	return cfg
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// backend checks one [backend.NAME] section.
func (c *checker) backend(name string, bs backendSection, defaults keepAliveSection) *Backend {
	key := []string{"backend", name}
	at := func(k ...string) []string { return append(append([]string{}, key...), k...) }
	b := &Backend{
		Name:    name,
		Retries: intOr(bs.Retries, DefaultRetries),
		Health: balance.Health{
			EjectAfter: intOr(bs.EjectAfter, DefaultEjectAfter),
			EjectTime:  durOr(bs.EjectTime, DefaultEjectTime),
		},
		KeepAlive: keepAlive(bs.keepAliveSection, defaults),
	}
	c.checkKeepAlive(key, "backend "+name+": ", bs.keepAliveSection)
	if bs.SendProxy != nil {
		v, err := proxyproto.ParseVersion(*bs.SendProxy)
		if err != nil {
			c.add(at("send_proxy"), "backend %s: %v", name, err)
		}
		b.SendProxy = v
	}
	if bs.Source != nil {
		src, err := netip.ParseAddr(*bs.Source)
		if err != nil || src.Zone() != "" {
			c.add(at("source"), "backend %s: source %q is not an IP address: give the local address for connections to the servers, such as \"10.0.0.2\" or \"2001:db8::2\"", name, *bs.Source)
		} else {
			b.Source = src.Unmap()
			b.Health.Source = b.Source
		}
	}
	c.checkDuration(at("eject_time"), "backend "+name+": ", bs.EjectTime, CheckDuration)
	if name == "" {
		c.add(key, "backend has an empty name: write [backend.NAME]")
	}
	if strings.Contains(name, "/") {
		c.add(key, "backend %q: a name may not hold \"/\", which separates backend and server in rsp ctl, logs and metrics", name)
	}
	alg, err := balance.ParseAlgorithm(strOr(bs.Balance, "roundrobin"))
	if err != nil {
		c.add(at("balance"), "backend %s: %v", name, err)
	}
	b.Balance = alg
	if b.Retries < 0 {
		c.add(at("retries"), "backend %s: retries %d is negative: give 0 for no retry", name, b.Retries)
	}
	if b.Health.EjectAfter < 0 {
		c.add(at("eject_after"), "backend %s: eject_after %d is negative: give 0 to never eject", name, b.Health.EjectAfter)
	}
	if bs.EjectTime != nil && *bs.EjectTime == 0 {
		c.add(at("eject_time"), "backend %s: eject_time must be more than 0s", name)
	}
	if h := bs.Health; h != nil {
		b.Health.Interval = durOr(h.Interval, DefaultCheckInterval)
		b.Health.Timeout = durOr(h.Timeout, min(DefaultCheckTimeout, b.Health.Interval))
		b.Health.Rise = intOr(h.Rise, DefaultRise)
		b.Health.Fall = intOr(h.Fall, DefaultFall)
		c.checkDuration(at("health", "interval"), "backend "+name+": health ", h.Interval, CheckDuration)
		c.checkDuration(at("health", "timeout"), "backend "+name+": health ", h.Timeout, CheckDuration)
		if b.Health.Interval <= 0 {
			c.add(at("health", "interval"), "backend %s: health interval must be more than 0s; remove [backend.%s.health] to turn checks off", name, name)
		}
		if b.Health.Timeout <= 0 {
			c.add(at("health", "timeout"), "backend %s: health timeout must be more than 0s", name)
		}
		if b.Health.Rise < 1 {
			c.add(at("health", "rise"), "backend %s: rise %d: give at least 1", name, b.Health.Rise)
		}
		if b.Health.Fall < 1 {
			c.add(at("health", "fall"), "backend %s: fall %d: give at least 1", name, b.Health.Fall)
		}
	}
	if len(bs.Server) == 0 {
		c.add(key, "backend %s has no server: add [backend.%s.server.NAME] with address = \"HOST:PORT\"", name, name)
	}
	for _, sname := range sortedKeys(bs.Server) {
		if n := c.server(b, sname, bs.Server[sname]); n != nil {
			b.Names = append(b.Names, n)
		}
	}
	return b
}

// server checks server sname of backend b. A server given by IP address
// or Unix path joins b.static; one given by a host name or an SRV name
// is resolved now and returned.
func (c *checker) server(b *Backend, sname string, ss serverSection) *NameServer {
	name := b.Name
	at := func(k ...string) []string { return append([]string{"backend", name, "server", sname}, k...) }
	sc := balance.ServerConfig{Name: sname, Weight: intOr(ss.Weight, DefaultWeight), MaxConn: intOr(ss.MaxConn, 0), Backup: ss.Backup != nil && *ss.Backup}
	if strings.ContainsAny(sname, "/@") {
		c.add(at(), "server %q of backend %s: a name may not hold \"/\", which separates backend and server in rsp ctl, logs and metrics, nor \"@\", which names the addresses of a host or SRV name", sname, name)
	}
	if sc.Weight < 0 || sc.Weight > MaxWeight {
		c.add(at("weight"), "server %s/%s: weight %d out of range: use 0 (drain) to %d", name, sname, sc.Weight, MaxWeight)
	}
	if sc.MaxConn < 0 {
		c.add(at("maxconn"), "server %s/%s: maxconn %d is negative: give 0 for no limit", name, sname, sc.MaxConn)
	}
	n := &NameServer{Backend: name, Server: sc, All: ss.SRV != nil, Where: c.where(at()...), weightSet: ss.Weight != nil, family: b.Source}
	if ss.Resolve != nil {
		switch *ss.Resolve {
		case "first":
		case "all":
			n.All = true
		default:
			c.add(at("resolve"), "server %s/%s: unknown resolve %q: use \"first\" (one server, at one of the name's addresses) or \"all\" (a server for each address)", name, sname, *ss.Resolve)
		}
	}
	if ss.ResolveEvery != nil {
		n.Every = time.Duration(*ss.ResolveEvery)
		if n.Every < MinResolveEvery {
			c.add(at("resolve_every"), "server %s/%s: resolve_every %s is below %s: give a longer interval, or remove it to follow the records' TTL", name, sname, n.Every, MinResolveEvery)
		}
	}
	switch {
	case ss.Address != nil && ss.SRV != nil:
		c.add(at("srv"), "server %s/%s has both address and srv: keep address = \"HOST:PORT\" for one name, or srv = \"_service._tcp.NAME\" for the servers and ports its SRV records list", name, sname)
		return nil
	case ss.SRV != nil:
		n.SRV = strings.TrimSuffix(*ss.SRV, ".")
		if ss.Resolve != nil && *ss.Resolve == "first" {
			c.add(at("resolve"), "server %s/%s: resolve = \"first\" does not apply to srv, whose every record is a server: remove it", name, sname)
		}
		if err := checkHostName(n.SRV); err != nil {
			c.add(at("srv"), "server %s/%s: srv %q: %v", name, sname, *ss.SRV, err)
			return nil
		}
	case ss.Address == nil:
		c.add(at(), "server %s/%s has no address: add address = \"HOST:PORT\", \"[IPv6]:PORT\" or \"unix:/path\", or srv = \"_service._tcp.NAME\"", name, sname)
		return nil
	default:
		if err := CheckServer("address", *ss.Address); err != nil {
			c.add(at("address"), "server %s/%s: %v", name, sname, err)
			return nil
		}
		host, port, _ := net.SplitHostPort(*ss.Address)
		if _, ipErr := netip.ParseAddr(host); strings.HasPrefix(*ss.Address, "unix:") || ipErr == nil {
			// An IP address or a Unix path: one server, as given.
			if ss.Resolve != nil || ss.ResolveEvery != nil {
				c.add(at("address"), "server %s/%s: resolve and resolve_every apply to host names only: remove them, or give a host name", name, sname)
			}
			addr, err := ResolveServer(context.Background(), "server", *ss.Address)
			if err != nil {
				c.add(at("address"), "server %s/%s: %v", name, sname, err)
				return nil
			}
			if b.Source.IsValid() {
				if ta, ok := addr.(*net.TCPAddr); !ok || (ta.IP.To4() != nil) != b.Source.Is4() {
					c.add(at("address"), "server %s/%s: address %s cannot be reached from the backend's source %s: source and servers must be TCP of one family (IPv4 or IPv6)", name, sname, addr, b.Source)
				}
			}
			sc.Addr = addr
			b.static = append(b.static, sc)
			return nil
		}
		if strings.HasPrefix(*ss.Address, "[") {
			c.add(at("address"), "server %s/%s: address %q: brackets hold an IPv6 address, not a host name: write \"%s\"", name, sname, *ss.Address, net.JoinHostPort(host, port))
			return nil
		}
		if strings.TrimSuffix(host, ".") == "" {
			c.add(at("address"), "server %s/%s: address %q has no host: write \"HOST:PORT\"", name, sname, *ss.Address)
			return nil
		}
		if err := checkHostName(strings.TrimSuffix(host, ".")); err != nil {
			c.add(at("address"), "server %s/%s: address %q: %v", name, sname, *ss.Address, err)
			return nil
		}
		n.Host = host
		n.Port, _ = strconv.Atoi(port)
		if old := c.running.nameServer(n.Key()); old != nil && old.Host == n.Host && old.Port == n.Port && !old.All && !n.All {
			n.Found = old.Found // resolve = "first" keeps its address
		}
	}
	key, hint := at("address"), "check the name and the DNS servers (resolvers), or give an IP address"
	if n.SRV != "" {
		key, hint = at("srv"), "check the name and the DNS servers (resolvers)"
	}
	c.names = append(c.names, pendingName{n: n, key: key, hint: hint})
	return n
}

// maxParallelNames bounds the names asked at once while a file loads.
const maxParallelNames = 16

// pendingName is a name server to resolve once the file is read, and
// where to report its failure.
type pendingName struct {
	n    *NameServer
	key  []string
	hint string
}

// resolveNames resolves every name server of the file at once, so that
// a start or a reload waits for the slowest name, not for their sum, and
// reports those that do not resolve.
func (c *checker) resolveNames() {
	errs := make([]error, len(c.names))
	var wg sync.WaitGroup
	// A bound, so that a file of hundreds of names does not open a socket
	// per query at once (fd limits, a local forwarder's queue).
	sem := make(chan struct{}, maxParallelNames)
	for i, p := range c.names {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			p.n.Found, p.n.TTL, errs[i] = p.n.Resolve(context.Background(), c.dns)
		})
	}
	wg.Wait()
	for i, p := range c.names {
		if errs[i] != nil {
			c.add(p.key, "server %s: %v; %s", p.n.Key(), errs[i], p.hint)
		}
	}
}

// resolvers checks the DNS server addresses of [global] resolvers and
// returns them as "IP:PORT", port 53 where none is given.
func (c *checker) resolvers(list []string) []string {
	var out []string
	for _, r := range list {
		ap, err := netip.ParseAddrPort(r)
		if err != nil {
			ip, ipErr := netip.ParseAddr(r)
			if ipErr != nil {
				c.add([]string{"global", "resolvers"}, "resolvers: %q is not a DNS server address: give an IP address, with a port if not 53 (\"10.0.0.53\", \"127.0.0.1:5353\", \"[2001:db8::53]:53\")", r)
				continue
			}
			ap = netip.AddrPortFrom(ip, 53)
		}
		out = append(out, ap.String())
	}
	return out
}

// checkDuration checks the duration d at key, if the file gives it, with
// check; prefix ("frontend web: ") leads the message.
func (c *checker) checkDuration(key []string, prefix string, d *duration, check func(string, time.Duration) error) {
	if d == nil {
		return
	}
	if err := check(key[len(key)-1], time.Duration(*d)); err != nil {
		c.add(key, "%s%v", prefix, err)
	}
}

// checkTimeouts checks the timeouts a [defaults] or [frontend.NAME] section
// at key gives.
func (c *checker) checkTimeouts(key []string, prefix string, t timeoutSection) {
	at := func(k string) []string { return append(append([]string{}, key...), k) }
	c.checkDuration(at("connect_timeout"), prefix, t.ConnectTimeout, CheckConnectTimeout)
	c.checkDuration(at("idle_timeout"), prefix, t.IdleTimeout, CheckDuration)
	c.checkDuration(at("half_close_timeout"), prefix, t.HalfCloseTimeout, CheckDuration)
}

// checkKeepAlive checks the keepalive settings a section at key gives.
func (c *checker) checkKeepAlive(key []string, prefix string, k keepAliveSection) {
	at := func(k string) []string { return append(append([]string{}, key...), k) }
	c.checkDuration(at("tcp_keepalive"), prefix, k.TCPKeepAlive, CheckKeepAlive)
	c.checkDuration(at("tcp_user_timeout"), prefix, k.TCPUserTimeout, CheckUserTimeout)
	if k.TCPKeepAliveCount != nil {
		if err := CheckKeepAliveCount("tcp_keepalive_count", *k.TCPKeepAliveCount); err != nil {
			c.add(at("tcp_keepalive_count"), "%s%v", prefix, err)
		}
	}
}

// keepAlive is the keepalive of a frontend's or backend's sockets: its
// own settings, else those of [defaults], else the built-in defaults.
func keepAlive(own, defaults keepAliveSection) splice.KeepAlive {
	idle := durOr(own.TCPKeepAlive, durOr(defaults.TCPKeepAlive, DefaultTCPKeepAlive))
	return splice.KeepAlive{
		Idle:        idle,
		Interval:    idle,
		Count:       intOr(own.TCPKeepAliveCount, intOr(defaults.TCPKeepAliveCount, 0)),
		UserTimeout: durOr(own.TCPUserTimeout, durOr(defaults.TCPUserTimeout, 0)),
	}
}
