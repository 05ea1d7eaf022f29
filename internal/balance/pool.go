// Package balance chooses a backend server for each new connection: the
// balancing algorithms, server weights and connection limits, and the
// health state that active checks and passive ejection keep. Backup
// servers (ServerConfig.Backup) take new connections only while no other
// server of the pool can.
//
// Typical usage:
//
//	p, err := balance.NewPool("app", balance.RoundRobin, servers, health, logger)
//	p.Start()              // active health checks, if configured
//	s, err := p.Pick(client, nil)
//	... connect to s.Addr() ...
//	s.Connected(err)       // feeds passive ejection
//	s.Release()            // when the connection ends
//	p.Server("a").SetAdmin(balance.Drain) // at run time (rsp ctl); also SetWeight
//	p.Close()
//
// A server's live state (health, active connections, check counts and
// the runtime settings of rsp ctl) is shared by the pools of successive
// reloads while the server keeps its name and address (Pool.Inherit).
//
// The package knows addresses, weights and health; it knows nothing about
// sockets being relayed.
package balance

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Algorithm is a balancing algorithm.
type Algorithm int

const (
	// RoundRobin takes servers in turn, in proportion to their weights,
	// interleaved smoothly (weights 5,1,1 give a a b a c a a, not a a a a a b c).
	RoundRobin Algorithm = iota
	// LeastConn takes the server with the fewest active connections per
	// unit of weight.
	LeastConn
	// Random picks two servers at random (by weight) and takes the one
	// with fewer active connections per unit of weight.
	Random
	// Source hashes the client's address onto a consistent-hash ring: a
	// client keeps its server, and adding or removing a server moves only
	// that server's share of clients.
	Source
)

var algorithmNames = [...]string{RoundRobin: "roundrobin", LeastConn: "leastconn", Random: "random", Source: "source"}

// String returns the configuration spelling of a.
func (a Algorithm) String() string {
	if int(a) < len(algorithmNames) {
		return algorithmNames[a]
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// ParseAlgorithm turns a configuration spelling into an Algorithm.
func ParseAlgorithm(s string) (Algorithm, error) {
	for i, n := range algorithmNames {
		if n == s {
			return Algorithm(i), nil
		}
	}
	return 0, fmt.Errorf("unknown balance %q: use %s", s, strings.Join(algorithmNames[:], ", "))
}

// ServerConfig describes one server of a pool.
type ServerConfig struct {
	Name    string   // unique within the pool; used in logs and for hashing
	Addr    net.Addr // *net.TCPAddr or *net.UnixAddr
	Weight  int      // share of new connections; 0 drains the server
	MaxConn int      // most concurrent connections; 0 means no limit
	// Backup servers take new connections only while no other server of
	// the pool can (all down, drained, in maintenance, of weight 0, full,
	// or already tried by the connection); among the backups the pool's
	// algorithm applies.
	Backup bool
}

// Defaults of Health's fields left zero.
const (
	DefaultRise      = 2
	DefaultFall      = 3
	DefaultEjectTime = 10 * time.Second
)

// Health configures how a pool decides whether its servers are up.
type Health struct {
	// Interval between active TCP connect checks of each server; zero
	// disables active checks.
	Interval time.Duration
	// Timeout of one check's connect; zero means Interval.
	Timeout time.Duration
	// Rise is how many consecutive passed checks bring a down server up;
	// zero means DefaultRise.
	Rise int
	// Fall is how many consecutive failed checks take an up server down;
	// zero means DefaultFall.
	Fall int
	// EjectAfter takes a server down after this many consecutive failed
	// connects by clients (passive ejection); zero disables it.
	EjectAfter int
	// EjectTime is how long a passively ejected server rests before it is
	// tried again, when active checks are off; zero means
	// DefaultEjectTime. With active checks it comes back after Rise
	// passed checks instead.
	EjectTime time.Duration
	// Source is the local address the checks connect from (the
	// backend's source); zero lets the kernel choose.
	Source netip.Addr
}

func (h Health) rise() int {
	if h.Rise > 0 {
		return h.Rise
	}
	return DefaultRise
}

func (h Health) fall() int {
	if h.Fall > 0 {
		return h.Fall
	}
	return DefaultFall
}

func (h Health) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return h.Interval
}

func (h Health) ejectTime() time.Duration {
	if h.EjectTime > 0 {
		return h.EjectTime
	}
	return DefaultEjectTime
}

// Pool is a named set of servers and the algorithm that chooses among
// them. It is safe for concurrent use.
type Pool struct {
	name    string
	alg     Algorithm
	servers []*Server
	health  Health
	log     *slog.Logger

	// primary holds the servers that are not backups, backup the
	// others, each in configuration order; servers holds both.
	primary, backup tier
	// onBackups is set while the pool sends new connections to its
	// backups because no primary is in rotation; it only decides what is
	// logged (see Pick).
	onBackups atomic.Bool

	mu sync.Mutex // guards the round-robin state

	stop    chan struct{}
	wg      sync.WaitGroup
	started bool
}

// tier is servers of a pool that are picked from together: the
// primaries, or the backups while no primary can take a connection.
type tier struct {
	servers []*Server
	ringMu  sync.Mutex           // serializes ring rebuilds
	ring    atomic.Pointer[ring] // Source only; rebuilt when a weight changes
	// next is LeastConn's tie-break rotation. It is the tier's own: a
	// count shared by both tiers would step twice for each pick that
	// falls through to the backups, and with two of them always land on
	// the same one.
	next atomic.Uint32
}

// Server is one backend server of a pool.
type Server struct {
	pool    *Pool
	name    string // "pool/server"
	short   string // "server"
	addr    net.Addr
	weight  int // configured; Weight() is the effective one
	maxConn int64
	backup  bool
	current int // smooth round-robin credit, guarded by pool.mu
	st      *state
}

// state is a server's live state. It outlives the Pool across a reload
// when the server keeps its name and address, so health, connection
// counts and what rsp ctl set carry over.
type state struct {
	adminState
	active atomic.Int64 // connections picked and not yet released
	down   atomic.Int32 // why the server is down: up (0), byCheck or byEjection
	fails  atomic.Int32 // consecutive failed client connects
	// health is the policy of the newest pool started with this state. A
	// connection picked from an older pool reports its connect outcome
	// to the state after a reload: the current policy must judge it.
	health atomic.Pointer[Health]

	mu       sync.Mutex
	passed   int         // consecutive passed active checks
	failed   int         // consecutive failed active checks
	readmit  *time.Timer // brings a passively ejected server back; nil when none is pending
	readmits int         // readmit timers started, so a stale one does nothing
}

// Why a server is down: state.down.
const (
	up         int32 = iota
	byCheck          // Fall failed active checks
	byEjection       // EjectAfter failed client connects (passive)
)

// NewPool makes a pool of servers. Servers start up; active checks begin
// with Start.
func NewPool(name string, alg Algorithm, servers []ServerConfig, h Health, log *slog.Logger) (*Pool, error) {
	if len(servers) == 0 {
		return nil, fmt.Errorf("backend %s: no servers", name)
	}
	if log == nil {
		log = slog.Default()
	}
	p := &Pool{name: name, alg: alg, health: h, log: log, stop: make(chan struct{})}
	seen := make(map[string]bool)
	for _, sc := range servers {
		if seen[sc.Name] {
			return nil, fmt.Errorf("backend %s: two servers named %q", name, sc.Name)
		}
		seen[sc.Name] = true
		if sc.Addr == nil {
			return nil, fmt.Errorf("backend %s: server %s has no address", name, sc.Name)
		}
		if sc.Weight < 0 || sc.Weight > MaxWeight {
			return nil, fmt.Errorf("backend %s: server %s: weight %d out of range: use 0 (drain) to %d", name, sc.Name, sc.Weight, MaxWeight)
		}
		s := &Server{
			pool: p, name: name + "/" + sc.Name, short: sc.Name, addr: sc.Addr,
			weight: sc.Weight, maxConn: int64(sc.MaxConn), backup: sc.Backup, st: &state{},
		}
		p.servers = append(p.servers, s)
		t := p.tierOf(s)
		t.servers = append(t.servers, s)
	}
	if alg == Source {
		p.primary.currentRing()
		p.backup.currentRing()
	}
	return p, nil
}

// tierOf returns the tier s belongs to.
func (p *Pool) tierOf(s *Server) *tier {
	if s.backup {
		return &p.backup
	}
	return &p.primary
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

// Algorithm returns the pool's balancing algorithm.
func (p *Pool) Algorithm() Algorithm { return p.alg }

// Servers returns the pool's servers in configuration order.
func (p *Pool) Servers() []*Server { return p.servers }

// Server returns the server named short ("a" of "app/a"), or nil.
func (p *Pool) Server(short string) *Server {
	for _, s := range p.servers {
		if s.short == short {
			return s
		}
	}
	return nil
}

// Inherit takes over the live state (up or down, active connections,
// health-check counts, and what rsp ctl set: drain, maint, weight) of
// old's servers that have the same name and address in p, so a reload
// neither revives a dead server nor forgets connections in flight nor
// undoes an operator's runtime change. A runtime weight gives way to the
// file's only where the file changed the server's weight since (see
// Server.SetWeight); a server whose address changed starts afresh.
// Whether the pool is on its backups carries over too, so a reload logs
// no switch of its own. It changes nothing in the shared state, so old
// may keep serving if p is never started; Start settles what p cannot
// keep (see Start). Call it before Start.
func (p *Pool) Inherit(old *Pool) {
	if old == nil {
		return
	}
	for _, s := range p.servers {
		for _, o := range old.servers {
			if o.name == s.name && o.addr.Network() == s.addr.Network() && o.addr.String() == s.addr.String() {
				s.st = o.st
			}
		}
	}
	p.onBackups.Store(old.onBackups.Load())
	if p.alg == Source {
		p.primary.currentRing() // for the inherited runtime weights
		p.backup.currentRing()
	}
}

// Start begins active health checks, one goroutine per server, if the
// pool has a check interval. It ends (and logs) each runtime weight that
// the configuration overrode. Without checks it first settles the state
// inherited from a pool that had them: a server down by health checks
// is up again (nothing would ever check it again), and one ejected by
// failed client connects while checks were on rests EjectTime from now,
// then is tried again. Call it once the previous pool is closed.
func (p *Pool) Start() {
	if p.started {
		return
	}
	p.started = true
	for _, s := range p.servers {
		s.st.health.Store(&p.health)
		s.settleWeight()
	}
	if p.health.Interval <= 0 {
		for _, s := range p.servers {
			s.settleWithoutChecks()
		}
		return
	}
	for _, s := range p.servers {
		p.wg.Add(1)
		go s.checkLoop(&p.wg)
	}
}

// settleWithoutChecks makes s's inherited state one that a pool without
// active checks can end: no server stays down for good.
func (s *Server) settleWithoutChecks() {
	switch s.st.down.Load() {
	case byCheck:
		s.setUp("active health checks were removed by a reload; trying it again")
	case byEjection:
		s.st.mu.Lock()
		pending := s.st.readmit != nil
		s.st.mu.Unlock()
		if !pending {
			s.scheduleReadmit()
		}
	}
}

// Close stops the pool's health checks. Servers picked earlier stay
// usable until released.
func (p *Pool) Close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

// ErrNoServer is wrapped by Pick's error when no server can take a new
// connection.
var ErrNoServer = errors.New("no server available")

// Pick chooses a server for a new connection from client, skipping the
// servers in tried (which already failed this connection), those down,
// drained (weight 0 or rsp ctl drain), in maintenance and full. It picks
// among the primary servers, and among the backups only when no primary
// can take the connection. The server is counted as active until its
// Release.
//
// The pool logs, once each way, when it turns to its backups because no
// primary is in rotation (up, ready, of weight above 0), and when a
// primary takes a connection again. Backups that take the overflow of
// full primaries, or the retry of a connection that tried every
// primary, are no such switch and log nothing.
func (p *Pool) Pick(client netip.AddrPort, tried []*Server) (*Server, error) {
	if s := p.pickFrom(&p.primary, client, tried); s != nil {
		if p.onBackups.Load() && p.onBackups.CompareAndSwap(true, false) {
			p.log.Info("primary servers available again", "backend", p.name, "server", s.name)
		}
		return s, nil
	}
	if s := p.pickFrom(&p.backup, client, tried); s != nil {
		if !p.onBackups.Load() && !p.primary.anyInRotation() && p.onBackups.CompareAndSwap(false, true) {
			p.log.Info("all primary servers unavailable; using backup servers",
				"backend", p.name, "primaries", p.primary.why(nil), "server", s.name)
		}
		return s, nil
	}
	return nil, p.noServer(tried)
}

// pickFrom chooses a server of t by the pool's algorithm and counts the
// connection on it; nil when none of t can take it.
func (p *Pool) pickFrom(t *tier, client netip.AddrPort, tried []*Server) *Server {
	if len(t.servers) == 0 {
		return nil
	}
	// A server found full while acquiring is skipped on the next round;
	// the rounds are bounded by the number of servers.
	skip := tried
	for range len(t.servers) + 1 {
		var s *Server
		switch p.alg {
		case LeastConn:
			s = pickLeast(t, skip)
		case Random:
			s = pickRandom(t, skip)
		case Source:
			s = t.pickSource(client.Addr(), skip)
		default:
			s = p.pickRoundRobin(t, skip)
		}
		if s == nil {
			return nil
		}
		if s.acquire() {
			return s
		}
		skip = append(skip[:len(skip):len(skip)], s)
	}
	return nil
}

// noServer explains why no server could be picked: why no primary
// could, then, if the pool has backups, why no backup could.
func (p *Pool) noServer(tried []*Server) error {
	var why string
	switch {
	case len(p.backup.servers) == 0:
		why = p.primary.why(tried)
	case len(p.primary.servers) == 0:
		why = "backup servers: " + p.backup.why(tried)
	default:
		why = p.primary.why(tried) + "; backup servers: " + p.backup.why(tried)
	}
	return fmt.Errorf("backend %s: %w: %s", p.name, ErrNoServer, why)
}

// why counts t's servers by the first reason each cannot take a new
// connection: "2 down, 1 in maintenance".
func (t *tier) why(tried []*Server) string {
	if len(t.servers) == 0 {
		return "none configured"
	}
	var down, full, drained, ctlDrained, maint, failed int
	for _, s := range t.servers {
		switch {
		case contains(tried, s):
			failed++
		case s.Admin() == Maint:
			maint++
		case s.Admin() == Drain:
			ctlDrained++
		case s.Weight() == 0:
			drained++
		case s.st.down.Load() != up:
			down++
		default:
			full++
		}
	}
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{
		{down, "down"}, {full, "full (maxconn)"}, {drained, "drained (weight 0)"},
		{ctlDrained, "drained (rsp ctl)"}, {maint, "in maintenance"}, {failed, "failed to connect"},
	} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	return strings.Join(parts, ", ")
}

// anyInRotation reports whether a server of t is up, ready and of
// weight above 0, full or not.
func (t *tier) anyInRotation() bool {
	for _, s := range t.servers {
		if s.inRotation() {
			return true
		}
	}
	return false
}

func contains(list []*Server, s *Server) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// inRotation reports whether s is up, ready and of weight above 0.
func (s *Server) inRotation() bool {
	return s.st.down.Load() == up && s.st.admin.Load() == int32(Ready) && s.Weight() > 0
}

// eligible reports whether s may take a new connection now: in rotation,
// not full, not skipped.
func (s *Server) eligible(skip []*Server) bool {
	if !s.inRotation() {
		return false
	}
	if s.maxConn > 0 && s.st.active.Load() >= s.maxConn {
		return false
	}
	return !contains(skip, s)
}

// acquire counts a new connection on s, unless that would pass maxconn.
func (s *Server) acquire() bool {
	for {
		n := s.st.active.Load()
		if s.maxConn > 0 && n >= s.maxConn {
			return false
		}
		if s.st.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// pickRoundRobin is smooth weighted round robin over t: every eligible
// server gains its weight in credit, the richest wins and pays the total.
func (p *Pool) pickRoundRobin(t *tier, skip []*Server) *Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	var best *Server
	total := 0
	for _, s := range t.servers {
		if !s.eligible(skip) {
			continue
		}
		w := s.Weight()
		s.current += w
		total += w
		if best == nil || s.current > best.current {
			best = s
		}
	}
	if best != nil {
		best.current -= total
	}
	return best
}

// lighter reports whether a carries fewer active connections per unit of
// weight than b.
func lighter(a, b *Server) bool {
	return a.st.active.Load()*int64(b.Weight()) < b.st.active.Load()*int64(a.Weight())
}

// pickLeast takes the eligible server of t with the fewest connections
// per weight; ties go round the tier in turn. t has servers.
func pickLeast(t *tier, skip []*Server) *Server {
	n := len(t.servers)
	start := int(t.next.Add(1) % uint32(n))
	var best *Server
	for i := range n {
		s := t.servers[(start+i)%n]
		if s.eligible(skip) && (best == nil || lighter(s, best)) {
			best = s
		}
	}
	return best
}

// pickRandom is "power of two choices": two servers of t drawn at random
// in proportion to their weights; the lighter one wins.
func pickRandom(t *tier, skip []*Server) *Server {
	a := t.drawWeighted(skip)
	if a == nil {
		return nil
	}
	b := t.drawWeighted(skip)
	if b != nil && lighter(b, a) {
		return b
	}
	return a
}

// drawWeighted draws one eligible server of t with probability
// proportional to its weight.
func (t *tier) drawWeighted(skip []*Server) *Server {
	total := 0
	for _, s := range t.servers {
		if s.eligible(skip) {
			total += s.Weight()
		}
	}
	if total == 0 {
		return nil
	}
	r := rand.IntN(total)
	// A server or weight may change between the two passes; the draw
	// then falls to the last eligible server rather than to none.
	var last *Server
	for _, s := range t.servers {
		if !s.eligible(skip) {
			continue
		}
		last = s
		w := s.Weight()
		if r < w {
			return s
		}
		r -= w
	}
	return last
}

// Name returns the server's "pool/server" name.
func (s *Server) Name() string { return s.name }

// ShortName returns the server's name within its pool ("server").
func (s *Server) ShortName() string { return s.short }

// Pool returns the pool the server belongs to.
func (s *Server) Pool() *Pool { return s.pool }

// Addr returns the server's address.
func (s *Server) Addr() net.Addr { return s.addr }

// Active returns the server's connections picked and not yet released.
func (s *Server) Active() int64 { return s.st.active.Load() }

// Backup reports whether the server is a backup: it takes new
// connections only while no other server of its pool can.
func (s *Server) Backup() bool { return s.backup }

// Up reports whether the server is considered healthy.
func (s *Server) Up() bool { return s.st.down.Load() == up }

// Hold counts on s a connection that another rsp process picked it for
// and handed over, whatever s's maxconn; Release ends it.
func (s *Server) Hold() { s.st.active.Add(1) }

// Release ends one connection counted by Pick.
func (s *Server) Release() { s.st.active.Add(-1) }

// Connected records the outcome of a client's connect to s: nil resets
// the failure count; an error counts towards passive ejection.
func (s *Server) Connected(err error) {
	if err == nil {
		if s.st.fails.Load() != 0 {
			s.st.fails.Store(0)
		}
		return
	}
	h := s.policy()
	n := s.st.fails.Add(1)
	if h.EjectAfter <= 0 || int(n) < h.EjectAfter {
		return
	}
	if !s.setDown(byEjection, fmt.Sprintf("%d consecutive failed connects, last: %v", n, err)) {
		return
	}
	if h.Interval > 0 {
		return // active checks bring it back after Rise passes
	}
	s.scheduleReadmit()
}

// policy is the health policy now in force for s: that of the newest
// pool started with its state, or of its own pool before any started.
func (s *Server) policy() *Health {
	if h := s.st.health.Load(); h != nil {
		return h
	}
	return &s.pool.health
}

// scheduleReadmit brings s back EjectTime from now, unless it is up by
// then.
func (s *Server) scheduleReadmit() {
	d := s.policy().ejectTime()
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if s.st.readmit != nil {
		s.st.readmit.Stop()
	}
	s.st.readmits++
	n := s.st.readmits
	s.st.readmit = time.AfterFunc(d, func() {
		s.st.mu.Lock()
		stale := n != s.st.readmits
		if !stale {
			s.st.readmit = nil
		}
		s.st.mu.Unlock()
		if !stale {
			s.setUp(fmt.Sprintf("ejected %v ago; trying it again", d))
		}
	})
}

// setDown marks s down for the reason why (byCheck or byEjection) and
// logs it, once; it reports whether s was up.
func (s *Server) setDown(why int32, reason string) bool {
	if !s.st.down.CompareAndSwap(up, why) {
		return false
	}
	s.st.mu.Lock()
	s.st.passed = 0
	s.st.mu.Unlock()
	s.pool.log.Warn("server down", "server", s.name, "addr", s.addr.String(), "reason", reason)
	return true
}

// setUp marks s up and logs it, once.
func (s *Server) setUp(reason string) {
	if s.st.down.Swap(up) == up {
		return
	}
	// A readmit still pending would end a later ejection early.
	s.st.mu.Lock()
	if s.st.readmit != nil {
		s.st.readmit.Stop()
		s.st.readmit = nil
		s.st.readmits++
	}
	s.st.mu.Unlock()
	s.st.fails.Store(0)
	s.pool.log.Info("server up", "server", s.name, "addr", s.addr.String(), "reason", reason)
}
