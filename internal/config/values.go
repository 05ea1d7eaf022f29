package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"rsp/internal/splice"
)

// Bounds of settings, shared by the configuration file and the command
// line so that both accept and refuse the same values with the same words.
const (
	// MaxTimeout bounds every duration setting. A month is far beyond any
	// useful connect, idle, half-close, drain or check time (0 turns the
	// optional ones off), and far below where the engine's deadline
	// arithmetic (nanoseconds of a monotonic clock plus the timeout, in
	// an int64) could overflow.
	MaxTimeout = 30 * 24 * time.Hour
	// MinPipeSize and MaxPipeSize bound pipe_size (-pipe-size): a page,
	// and 64 MiB, far above the kernel's default pipe-max-size (1 MiB).
	MinPipeSize = 4096
	MaxPipeSize = 64 << 20
	// MinNotSentLowat and MaxNotSentLowat bound notsent_lowat
	// (-notsent-lowat): a page, and the largest pipe.
	MinNotSentLowat = 4096
	MaxNotSentLowat = MaxPipeSize
	// MaxKeepAlive bounds tcp_keepalive: the kernel counts TCP_KEEPIDLE
	// and TCP_KEEPINTVL in whole seconds, at most 32767.
	MaxKeepAlive = 32767 * time.Second
	// MaxKeepAliveCount bounds tcp_keepalive_count, the kernel's
	// TCP_KEEPCNT limit.
	MaxKeepAliveCount = 127
)

// CheckDuration validates a duration setting that may be zero; what names
// it in the error ("idle_timeout", "-idle-timeout").
func CheckDuration(what string, d time.Duration) error {
	switch {
	case d < 0:
		return fmt.Errorf("%s %v is negative: give a duration such as 5s or 2m", what, d)
	case d > MaxTimeout:
		return fmt.Errorf("%s %v is more than %v (30 days): give a shorter duration", what, d, MaxTimeout)
	}
	return nil
}

// CheckConnectTimeout validates a connect timeout: more than zero (a
// connect with no bound would wait forever) and at most MaxTimeout.
func CheckConnectTimeout(what string, d time.Duration) error {
	if d == 0 {
		return fmt.Errorf("%s 0s would wait forever: give a duration such as 5s", what)
	}
	return CheckDuration(what, d)
}

// CheckKeepAlive validates tcp_keepalive (-tcp-keepalive): 0 turns
// keepalive off; otherwise whole seconds from 1 to 32767, the unit and
// bound of the kernel's TCP_KEEPIDLE and TCP_KEEPINTVL.
func CheckKeepAlive(what string, d time.Duration) error {
	if d != 0 && (d < time.Second || d > MaxKeepAlive || d%time.Second != 0) {
		return fmt.Errorf("%s %v: give whole seconds from 1s to 32767s (the kernel's unit and bound), or 0s to turn keepalive off", what, d)
	}
	return nil
}

// CheckKeepAliveCount validates tcp_keepalive_count: 0 keeps the kernel's
// default (net.ipv4.tcp_keepalive_probes), else 1 to 127.
func CheckKeepAliveCount(what string, n int) error {
	if n < 0 || n > MaxKeepAliveCount {
		return fmt.Errorf("%s %d out of range: give 1 to %d probes, or 0 for the kernel's default", what, n, MaxKeepAliveCount)
	}
	return nil
}

// CheckUserTimeout validates tcp_user_timeout (-tcp-user-timeout): 0
// keeps the kernel's default; otherwise at least a millisecond (the
// kernel's unit) and at most MaxTimeout.
func CheckUserTimeout(what string, d time.Duration) error {
	if d > 0 && d < time.Millisecond {
		return fmt.Errorf("%s %v is less than 1ms, the kernel's unit: give 1ms or more, or 0s for the kernel's default", what, d)
	}
	return CheckDuration(what, d)
}

// CheckPipeSize validates pipe_size (-pipe-size); 0 means the default.
func CheckPipeSize(what string, n int) error {
	if n != 0 && (n < MinPipeSize || n > MaxPipeSize) {
		return fmt.Errorf("%s %d out of range: give bytes from %d to %d, or 0 for the default (1 MiB)", what, n, MinPipeSize, MaxPipeSize)
	}
	return nil
}

// CheckNotSentLowat validates notsent_lowat (-notsent-lowat): bytes,
// 0 for the default, or -1 for the kernel's own setting.
func CheckNotSentLowat(what string, n int) error {
	if n != 0 && n != -1 && (n < MinNotSentLowat || n > MaxNotSentLowat) {
		return fmt.Errorf("%s %d out of range: give bytes from %d to %d, 0 for the default (%d), or -1 to keep the kernel's (net.ipv4.tcp_notsent_lowat)", what, n, MinNotSentLowat, MaxNotSentLowat, splice.DefaultNotSentLowat)
	}
	return nil
}

// OneLine escapes the line breaks that a user's input may bring into an
// error message, so that each error stays one line.
func OneLine(s string) string { return oneLine.Replace(s) }

var oneLine = strings.NewReplacer("\r\n", `\r\n`, "\n", `\n`, "\r", `\r`)

// DefaultConnLog is which connections the connection log records when
// conn_log is left out: those that did not end cleanly.
const DefaultConnLog = "errors"

// checkObservability checks the [global] keys of metrics, the control
// socket and the logs.
func (c *checker) checkObservability(cfg *Config) {
	if cfg.Metrics != "" {
		if err := CheckListen("metrics", cfg.Metrics); err != nil {
			c.add([]string{"global", "metrics"}, "%v", err)
		}
	}
	if cfg.Control != "" && !strings.HasPrefix(cfg.Control, "/") {
		c.add([]string{"global", "control"}, "control %q is not an absolute path: give the socket's path, such as \"/run/rsp/rsp.ctl\"", cfg.Control)
	}
	switch cfg.LogFormat {
	case "text", "json":
	default:
		c.add([]string{"global", "log_format"}, "unknown log_format %q: use \"text\" (logfmt) or \"json\"", cfg.LogFormat)
	}
	switch cfg.ConnLog {
	case "all", "errors", "off":
	default:
		c.add([]string{"global", "conn_log"}, "unknown conn_log %q: use \"all\", \"errors\" or \"off\"", cfg.ConnLog)
	}
	if s := cfg.ConnLogSample; !(s > 0 && s <= 1) {
		c.add([]string{"global", "conn_log_sample"}, "conn_log_sample %v is out of range: give the share of clean connections to log, above 0 and at most 1 (0.01 logs one in a hundred)", s)
	}
}

// MetricsSocket is the FileDescriptorName= of a systemd socket that
// serves /metrics (rsp-metrics.socket); no frontend may take it.
const MetricsSocket = "metrics"

// prefixes reads a list of CIDR prefixes ("10.0.0.0/8", "2001:db8::/32")
// or single addresses (a /32 or /128).
func (c *checker) prefixes(key []string, what string, list *prefixList) []netip.Prefix {
	if list == nil {
		return nil
	}
	var out []netip.Prefix
	for _, s := range *list {
		p, err := ParsePrefix(s)
		if err != nil {
			c.add(key, "%s: %v", what, err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// ParsePrefix reads a CIDR prefix or a single IP address, IPv4 or IPv6,
// masked to its prefix.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix: write it as 10.0.0.0/8 or 2001:db8::/32", s)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR prefix: write it as 192.0.2.1, 10.0.0.0/8 or 2001:db8::/32", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// DefaultSNITimeout bounds the wait for a client's ClientHello.
const DefaultSNITimeout = 5 * time.Second

// sni checks a frontend's routes by TLS server name.
func (c *checker) sni(key []string, name string, fe *Frontend, fs frontendSection, backends map[string]backendSection) {
	fe.SNIFallback = strOr(fs.SNIFallback, "default")
	fe.SNITimeout = durOr(fs.SNITimeout, DefaultSNITimeout)
	if fs.SNI == nil {
		if fs.SNIFallback != nil || fs.SNITimeout != nil {
			c.add(key, "frontend %s: sni_fallback and sni_timeout need a [frontend.%s.sni] table of server names", name, name)
		}
		return
	}
	switch fe.SNIFallback {
	case "default", "close":
	default:
		c.add(append(key, "sni_fallback"), "frontend %s: unknown sni_fallback %q: use \"default\" (the frontend's backend) or \"close\"", name, fe.SNIFallback)
	}
	c.checkDuration(append(key, "sni_timeout"), "frontend "+name+": ", fs.SNITimeout, CheckConnectTimeout)
	if len(fs.SNI) == 0 {
		c.add(append(key, "sni"), "frontend %s: the sni table is empty: map server names to backends, or remove it", name)
	}
	for _, pattern := range sortedKeys(fs.SNI) {
		backend := fs.SNI[pattern]
		if err := CheckSNIPattern(pattern); err != nil {
			c.add(append(key, "sni", pattern), "frontend %s: %v", name, err)
			continue
		}
		if _, ok := backends[backend]; !ok {
			c.add(append(key, "sni", pattern), "frontend %s: server name %q: no backend named %q", name, pattern, backend)
			continue
		}
		fe.SNI = append(fe.SNI, SNIRoute{Pattern: strings.ToLower(pattern), Backend: backend})
	}
}

// CheckSNIPattern accepts a DNS host name or "*." followed by one.
func CheckSNIPattern(p string) error {
	host := strings.TrimPrefix(p, "*.")
	if strings.Contains(host, "*") || !validHostName(host) {
		return fmt.Errorf("server name %q: write a host name (api.example.com) or a wildcard of one label (*.example.com)", p)
	}
	return nil
}

// validHostName reports whether s is a DNS host name of letters, digits
// and hyphens, in labels of 1-63, at most 253 in all, not an IP address.
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// sourceLimits checks a frontend's per-source limits.
func (c *checker) sourceLimits(key []string, name string, fe *Frontend, fs frontendSection) {
	s := SourceLimits{
		PerSource: intOr(fs.PerSourceMaxConn, 0), PerPrefix: intOr(fs.PerPrefixMaxConn, 0),
		PrefixV4: intOr(fs.SourcePrefixV4, 24), PrefixV6: intOr(fs.SourcePrefixV6, 64),
		Burst: intOr(fs.PerSourceBurst, 0),
	}
	if fs.PerSourceRate != nil {
		s.Rate = *fs.PerSourceRate
	}
	for _, v := range []struct {
		k  string
		n  int
		lo int
		hi int
	}{
		{"per_source_maxconn", s.PerSource, 0, 1 << 30}, {"per_prefix_maxconn", s.PerPrefix, 0, 1 << 30},
		{"source_prefix_v4", s.PrefixV4, 1, 32}, {"source_prefix_v6", s.PrefixV6, 1, 128},
		{"per_source_burst", s.Burst, 0, 1 << 30},
	} {
		if v.n < v.lo || v.n > v.hi {
			c.add(append(key, v.k), "frontend %s: %s %d out of range: give %d to %d (0: no limit, where allowed)", name, v.k, v.n, v.lo, v.hi)
		}
	}
	if s.Rate < 0 || s.Rate > 1e9 || s.Rate != s.Rate {
		c.add(append(key, "per_source_rate"), "frontend %s: per_source_rate %v: give new connections per second per client address, or 0 for no limit", name, s.Rate)
	}
	if s.Burst > 0 && s.Rate == 0 {
		c.add(append(key, "per_source_burst"), "frontend %s: per_source_burst needs per_source_rate", name)
	}
	fe.Sources = s
}
