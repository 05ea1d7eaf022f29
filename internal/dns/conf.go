package dns

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults for what neither the Client nor resolv.conf sets. glibc waits 5 s;
// rsp re-resolves in the background and would rather try the next server.
const (
	defaultResolvConf = "/etc/resolv.conf"
	defaultHostsFile  = "/etc/hosts"
	defaultServer     = "127.0.0.1:53"
	defaultTimeout    = 2 * time.Second
	defaultAttempts   = 2
	defaultNdots      = 1
)

// config is what one lookup uses: the Client's fields, over resolv.conf,
// over the defaults. It is built afresh for each lookup, so an edited
// resolv.conf takes effect without a restart.
type config struct {
	servers  []string // "host:port"
	domains  []string // search list: domain suffixes, without leading or trailing dots
	ndots    int
	timeout  time.Duration
	attempts int
}

func (c *Client) config() (*config, error) {
	cf := &config{ndots: defaultNdots}
	if err := cf.read(cmp.Or(c.ResolvConf, defaultResolvConf)); err != nil {
		return nil, err
	}
	if len(c.Servers) > 0 {
		cf.servers = c.Servers
	}
	if len(cf.servers) == 0 {
		cf.servers = []string{defaultServer}
	}
	cf.timeout = cmp.Or(c.Timeout, cf.timeout, defaultTimeout)
	cf.attempts = cmp.Or(c.Attempts, cf.attempts, defaultAttempts)
	return cf, nil
}

// read applies the resolv.conf at path. A missing file leaves the defaults,
// as with glibc. Limits are glibc's: ndots ≤ 15, timeout 1–30 s, attempts 1–5.
func (cf *config) read(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read resolver config: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if ip, err := netip.ParseAddr(f[1]); err == nil {
				cf.servers = append(cf.servers, net.JoinHostPort(ip.String(), "53"))
			}
		case "domain", "search": // the last of the two wins
			cf.domains = nil
			for _, d := range f[1:] {
				if d = strings.Trim(d, "."); d != "" {
					cf.domains = append(cf.domains, d)
				}
			}
		case "options":
			for _, o := range f[1:] {
				k, v, _ := strings.Cut(o, ":")
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					continue
				}
				switch k {
				case "ndots":
					cf.ndots = min(n, 15)
				case "timeout":
					cf.timeout = time.Duration(min(max(n, 1), 30)) * time.Second
				case "attempts":
					cf.attempts = min(max(n, 1), 5)
				}
			}
		}
	}
	return nil
}

// candidates lists the absolute names that host stands for, in the order
// glibc tries them: an absolute name alone; a name with at least ndots dots
// as it is, then with each search suffix; a shorter one the other way round.
func (cf *config) candidates(host string) []string {
	if strings.HasSuffix(host, ".") {
		return []string{host}
	}
	names := make([]string, 0, len(cf.domains)+1)
	for _, s := range cf.domains {
		names = append(names, host+"."+s+".")
	}
	if strings.Count(host, ".") >= cf.ndots {
		return append([]string{host + "."}, names...)
	}
	return append(names, host+".")
}

// hostsLookup returns host's addresses in the hosts file at path (IPv4 then
// IPv6, each in file order), or none. The file is read on every call: it is
// small, and rsp looks names up every few seconds at most.
func hostsLookup(path, host string) ([]netip.Addr, error) {
	switch path {
	case "-":
		return nil, nil
	case "":
		path = defaultHostsFile
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read hosts file: %w", err)
	}
	var v4, v6 []netip.Addr
	for line := range strings.Lines(string(data)) {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 2 || !slices.ContainsFunc(f[1:], func(n string) bool { return strings.EqualFold(n, host) }) {
			continue
		}
		ip, err := netip.ParseAddr(f[0])
		switch {
		case err != nil:
		case ip.Unmap().Is4():
			v4 = append(v4, ip.Unmap())
		default:
			v6 = append(v6, ip)
		}
	}
	return append(v4, v6...), nil
}
