// Package limit bounds what each client source may take: concurrent
// connections per address and per prefix (/24 and /64 by default), and new
// connections per second per address (a token bucket).
//
// Typical usage:
//
//	c := limit.Config{PerAddr: 100, PerPrefix: 1000, Rate: 20}
//	var l *limit.Limiter
//	if c.Enabled() {
//		l = limit.New(c) // once, shared by every event loop
//	}
//	...
//	if l != nil {
//		if err := l.Take(client, now); err != nil { // errors.Is(err, limit.ErrRate) ...
//			close the connection, log err
//		}
//		defer l.Release(client) // once per successful Take, when the connection ends
//	}
//
// State lives in 64 shards chosen by a seeded hash of the key, each a plain
// mutex over two Go maps: address → {connections, bucket} and prefix →
// connections. A Take locks the address's shard, then the prefix's shard,
// never both at once, so event loops rarely contend and cannot deadlock; a
// Take refused by the prefix goes back and undoes what it took for the
// address. A known source costs a few map look-ups and no allocation.
//
// The token bucket is kept as one number, the theoretical arrival time of
// the next connection (GCRA): the bucket is full when that time is not after
// now. An address entry with no live connection and a full bucket is idle
// and says nothing a missing entry would not, so it may be dropped at any
// time; a prefix entry exists only while it has live connections. Takes
// look at a couple of entries of their shard each and drop the idle ones,
// Sweep drops them all, and a shard whose maps fall to a quarter of their
// high-water mark copies them into fresh ones (Go maps never shrink), so
// memory follows the live population.
//
// Memory is bounded by MaxSources, split evenly between the shards. A new
// source in a shard at its share first evicts idle entries (a bounded
// scan); if none is idle it is refused with ErrTooManySources rather than
// let the state grow. Each shard checks only its own share, so where the
// addresses happen to hash unevenly the first refusal may come a little
// before MaxSources entries are tracked.
//
// The package knows addresses and clocks; it knows nothing of sockets,
// configuration files or frontends.
package limit

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/netip"
)

// Config says which limits apply. The zero value limits nothing.
type Config struct {
	PerAddr   int     // concurrent connections per client address; 0: no limit
	PerPrefix int     // concurrent connections per client prefix; 0: no limit
	PrefixV4  int     // prefix length grouping IPv4 clients for PerPrefix; 0 means 24
	PrefixV6  int     // prefix length grouping IPv6 clients for PerPrefix; 0 means 64
	Rate      float64 // new connections per second per address; 0: no limit
	Burst     int     // token bucket size; 0 means max(1, ceil(Rate))

	// MaxSources bounds the tracked addresses and prefixes together; 0
	// means DefaultMaxSources. Each tracked source is one slot of a Go map
	// (a 16-byte key and a value of at most 16 bytes), which the map's load
	// factor and power-of-two growth make 40 to 90 bytes: the default
	// bound caps the state between 40 and 90 MiB.
	MaxSources int
}

const (
	// DefaultPrefixV4 groups IPv4 clients by /24, the smallest block
	// routed on the Internet: one customer, one NAT pool, one small host.
	DefaultPrefixV4 = 24
	// DefaultPrefixV6 groups IPv6 clients by /64, the block one LAN (and
	// often one host, with privacy addresses) is given.
	DefaultPrefixV6 = 64
	// DefaultMaxSources is 1<<20: a million sources is far more than one
	// host serves at once, and still only tens of MiB of state.
	DefaultMaxSources = 1 << 20
)

// Enabled reports whether c limits anything. When it does not, callers
// should not create a Limiter at all, so that no limit costs nothing.
func (c Config) Enabled() bool {
	return c.PerAddr > 0 || c.PerPrefix > 0 || c.Rate > 0
}

// Validate reports the first field of c that is out of range: a negative
// count, a prefix length longer than the address, or a rate that is
// negative or not a number.
func (c Config) Validate() error {
	switch {
	case c.PerAddr < 0:
		return fmt.Errorf("per-address limit %d is negative", c.PerAddr)
	case c.PerPrefix < 0:
		return fmt.Errorf("per-prefix limit %d is negative", c.PerPrefix)
	case c.PrefixV4 < 0 || c.PrefixV4 > 32:
		return fmt.Errorf("IPv4 prefix length %d is not in 1..32", c.PrefixV4)
	case c.PrefixV6 < 0 || c.PrefixV6 > 128:
		return fmt.Errorf("IPv6 prefix length %d is not in 1..128", c.PrefixV6)
	case c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0):
		return fmt.Errorf("rate %v is not a finite number ≥ 0", c.Rate)
	case c.Burst < 0:
		return fmt.Errorf("burst %d is negative", c.Burst)
	case c.MaxSources < 0:
		return fmt.Errorf("max sources %d is negative", c.MaxSources)
	}
	return nil
}

func (c Config) prefixV4() int {
	if c.PrefixV4 == 0 {
		return DefaultPrefixV4
	}
	return c.PrefixV4
}

func (c Config) prefixV6() int {
	if c.PrefixV6 == 0 {
		return DefaultPrefixV6
	}
	return c.PrefixV6
}

func (c Config) maxSources() int {
	if c.MaxSources == 0 {
		return DefaultMaxSources
	}
	return c.MaxSources
}

// maxBurst caps a burst derived from a huge Rate; a bucket of a billion
// connections is no limit at all, and the cap keeps burst×interval in range.
const maxBurst = 1 << 30

func (c Config) burst() int {
	switch {
	case c.Burst > 0:
		return min(c.Burst, maxBurst)
	case c.Rate >= maxBurst:
		return maxBurst
	}
	return max(1, int(math.Ceil(c.Rate)))
}

// maxInterval caps the time one token takes to come back (about 13 days),
// so that a tiny Rate cannot overflow the nanosecond arithmetic.
const maxInterval = int64(1) << 50

// interval is the time, in nanoseconds, that one token takes to come back.
func (c Config) interval() int64 {
	if c.Rate <= 0 {
		return 0
	}
	t := 1e9 / c.Rate
	if t >= float64(maxInterval) {
		return maxInterval
	}
	return max(1, int64(t))
}

// Limiter holds the per-source state. It is safe for concurrent use.
type Limiter struct {
	perAddr   int
	perPrefix int
	bitsV4    int
	bitsV6    int
	rate      float64
	burst     int
	maxSrc    int

	interval int64 // ns per token; 0: no rate limit
	span     int64 // burst × interval: how far ahead of now the arrival time may run

	// trackAddr: an address entry exists for each active address; with
	// only Rate set it holds the bucket and no connection count.
	trackAddr  bool
	countConns bool // PerAddr > 0: address entries count connections

	maskV4, maskV6 key // prefix masks over the 16-byte form
	share          int // entries one shard may hold: maxSrc / len(shards)
	seed0, seed1   uint64
	shardShift     uint8 // 64 - log2(len(shards)): the hash's top bits pick the shard
	shards         []shard
}

// maxShards is enough for the event loops of a large host (one per core)
// to rarely meet on the same mutex.
const maxShards = 64

// minShare is the fewest entries a shard is given: a smaller MaxSources
// uses fewer shards, so that one unlucky shard does not refuse sources
// while the others are empty.
const minShare = 64

// New returns a Limiter for c, or nil if c limits nothing (a nil *Limiter
// allows everything). It panics if c.Validate fails: check it first where
// c comes from a user.
func New(c Config) *Limiter {
	if err := c.Validate(); err != nil {
		panic("limit.New: " + err.Error())
	}
	if !c.Enabled() {
		return nil
	}
	l := &Limiter{
		perAddr:    c.PerAddr,
		perPrefix:  c.PerPrefix,
		bitsV4:     c.prefixV4(),
		bitsV6:     c.prefixV6(),
		rate:       c.Rate,
		burst:      c.burst(),
		maxSrc:     c.maxSources(),
		interval:   c.interval(),
		trackAddr:  c.PerAddr > 0 || c.Rate > 0,
		countConns: c.PerAddr > 0,
		seed0:      rand.Uint64(),
		seed1:      rand.Uint64(),
	}
	if l.interval > 0 {
		l.span = l.interval * int64(l.burst)
		if l.span/int64(l.burst) != l.interval || l.span > maxInterval {
			l.span = maxInterval
		}
	}
	l.maskV4 = maskOf(96 + l.bitsV4)
	l.maskV6 = maskOf(l.bitsV6)
	n := maxShards
	for n > 1 && l.maxSrc/n < minShare {
		n /= 2
	}
	l.shardShift = uint8(64 - bits.TrailingZeros(uint(n)))
	l.share = max(1, l.maxSrc/n)
	l.shards = make([]shard, n)
	for i := range l.shards {
		l.shards[i].init()
	}
	return l
}

// Take admits a new connection from a, or says which limit refuses it. now
// is the caller's monotonic clock in nanoseconds; it only has to move
// forward, and callers on different event loops may read it separately.
// The error wraps ErrPerAddr, ErrPerPrefix, ErrRate or ErrTooManySources,
// and its text is one line with the numbers. A nil error must be matched by
// one Release(a) when the connection ends; an error leaves nothing to undo.
// An invalid address (a Unix socket's client) is always admitted.
func (l *Limiter) Take(a netip.Addr, now int64) error {
	if l == nil || !a.IsValid() {
		return nil
	}
	a = a.Unmap()
	k := key(a.As16())
	if l.trackAddr {
		if err := l.takeAddr(k, a, now, false); err != nil {
			return err
		}
	}
	if l.perPrefix > 0 {
		if err := l.takePrefix(l.prefixKey(k, a), a, now, false); err != nil {
			if l.trackAddr {
				l.undoAddr(k)
			}
			return err
		}
	}
	return nil
}

// Hold counts a connection from a that is open already (handed over by
// the rsp process before this one), whatever the limits say and without
// spending a rate token; Release(a) ends it as one taken by Take.
func (l *Limiter) Hold(a netip.Addr, now int64) {
	if l == nil || !a.IsValid() {
		return
	}
	a = a.Unmap()
	k := key(a.As16())
	if l.trackAddr {
		l.takeAddr(k, a, now, true)
	}
	if l.perPrefix > 0 {
		l.takePrefix(l.prefixKey(k, a), a, now, true)
	}
}

// Release gives back what a successful Take(a) took. Releasing an address
// that holds nothing is ignored.
func (l *Limiter) Release(a netip.Addr) {
	if l == nil || !a.IsValid() {
		return
	}
	a = a.Unmap()
	k := key(a.As16())
	if l.countConns {
		l.releaseAddr(k)
	}
	if l.perPrefix > 0 {
		l.releasePrefix(l.prefixKey(k, a))
	}
}

// Len returns the number of tracked entries, addresses and prefixes.
func (l *Limiter) Len() int {
	if l == nil {
		return 0
	}
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += s.len()
		s.mu.Unlock()
	}
	return n
}

// Sweep drops every idle entry as of now and returns how many it dropped.
// Take already drops idle entries a few at a time; a caller that wants
// memory to follow the clients even when no new connection arrives calls
// Sweep from a timer (once a second is plenty). It locks one shard at a
// time.
func (l *Limiter) Sweep(now int64) int {
	if l == nil {
		return 0
	}
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.advance(now)
		n += s.sweep(-1)
		s.mu.Unlock()
	}
	return n
}

func (l *Limiter) takeAddr(k key, a netip.Addr, now int64, hold bool) error {
	s := l.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(now)
	e, ok := s.addrs[k]
	if !ok && !s.room(l.share) && !hold {
		return &refusal{err: ErrTooManySources, addr: a, limit: l.maxSrc}
	}
	if l.countConns && int(e.conns) >= l.perAddr && !hold {
		s.tick()
		return &refusal{err: ErrPerAddr, addr: a, count: int(e.conns), limit: l.perAddr}
	}
	if l.interval > 0 && !hold {
		t := max(e.tat, s.now) + l.interval
		if t-s.now > l.span {
			s.tick()
			return &refusal{err: ErrRate, addr: a, rate: l.rate, limit: l.burst}
		}
		e.tat = t
	}
	if l.countConns {
		e.conns++
	}
	s.addrs[k] = e
	if !ok {
		s.grew()
	}
	s.tick()
	return nil
}

// undoAddr takes back what takeAddr gave k when a later limit refused the
// connection. Other Takes may have run in between; counts and arrival
// times add up, so taking ours back leaves theirs intact.
func (l *Limiter) undoAddr(k key) {
	s := l.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.addrs[k]
	if !ok {
		// Only Rate is set and time moved past the bucket refill in
		// between: the entry was idle and dropped, nothing to give back.
		return
	}
	if l.countConns && e.conns > 0 {
		e.conns--
	}
	e.tat -= l.interval
	s.put(k, e)
}

func (l *Limiter) releaseAddr(k key) {
	s := l.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.addrs[k]
	if !ok || e.conns <= 0 {
		return
	}
	e.conns--
	s.put(k, e)
}

func (l *Limiter) takePrefix(k key, a netip.Addr, now int64, hold bool) error {
	s := l.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(now)
	n, ok := s.prefixes[k]
	if !ok && !s.room(l.share) && !hold {
		return &refusal{err: ErrTooManySources, addr: a, limit: l.maxSrc}
	}
	if int(n) >= l.perPrefix && !hold {
		return &refusal{err: ErrPerPrefix, addr: a, bits: l.prefixBits(a), count: int(n), limit: l.perPrefix}
	}
	s.prefixes[k] = n + 1
	if !ok {
		s.grew()
	}
	return nil
}

func (l *Limiter) releasePrefix(k key) {
	s := l.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.prefixes[k]
	switch {
	case !ok:
	case n <= 1:
		delete(s.prefixes, k)
		s.shrink()
	default:
		s.prefixes[k] = n - 1
	}
}

// prefixKey masks k, the 16-byte form of the unmapped address a, to a's
// prefix. IPv4 addresses sit in the last four bytes behind ::ffff:, so an
// IPv4 prefix can never equal an IPv6 one.
func (l *Limiter) prefixKey(k key, a netip.Addr) key {
	m := &l.maskV6
	if a.Is4() {
		m = &l.maskV4
	}
	for i := range k {
		k[i] &= m[i]
	}
	return k
}

func (l *Limiter) prefixBits(a netip.Addr) int {
	if a.Is4() {
		return l.bitsV4
	}
	return l.bitsV6
}

// maskOf returns the mask of the first bits bits of 16 bytes.
func maskOf(bits int) key {
	var m key
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
		case bits > 0:
			m[i] = ^byte(0xff >> bits)
		}
		bits -= 8
	}
	return m
}
