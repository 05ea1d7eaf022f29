// Package discovery keeps the servers given by host names and SRV names
// current: it asks DNS again when each answer's TTL (or resolve_every)
// runs out, off the relay's event loops, and reports each name whose
// servers changed, for rsp to apply as a reload does. A failed lookup
// keeps the last servers found; each failure is logged once, not once
// per retry.
//
// Typical usage:
//
//	w := discovery.New(logger)
//	w.Watch(cfg)
//	for u := range w.Updates() {
//		u.Done(u.Gen == w.Gen() && apply(cfg.WithFound(u.Key, u.Found, u.TTL)) == nil)
//	}
package discovery

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"rsp/internal/balance"
	"rsp/internal/config"
)

// Retry bounds: a name that fails is asked again after 1 s, then twice
// as long each time, up to maxRetry.
const (
	firstRetry = time.Second
	maxRetry   = 30 * time.Second
)

// Update says that the name server Key ("backend/server") of the
// configuration watched as generation Gen now gives Found, for TTL. Its
// receiver must call Done, saying whether Found now serves.
type Update struct {
	Key   string
	Name  string // the DNS name asked
	Gen   uint64
	Was   []balance.ServerConfig
	Found []balance.ServerConfig
	TTL   time.Duration

	done chan bool
}

// Done tells the watcher whether the update applied: if not, the
// servers of Was still serve, and the watcher offers the change again
// at the next lookup that finds it.
func (u Update) Done(applied bool) {
	if u.done != nil {
		u.done <- applied
	}
}

// Watcher re-resolves the name servers of one configuration at a time.
type Watcher struct {
	log     *slog.Logger
	updates chan Update

	mu     sync.Mutex
	gen    uint64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a Watcher that watches nothing yet.
func New(log *slog.Logger) *Watcher {
	return &Watcher{log: log, updates: make(chan Update)}
}

// Updates delivers the changes found; read it until Stop.
func (w *Watcher) Updates() <-chan Update { return w.updates }

// Gen is the generation of the configuration watched now; updates of
// another generation are stale.
func (w *Watcher) Gen() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen
}

// Watch starts watching cfg's name servers in place of those watched
// before, from what cfg found when it loaded. Each is asked again when
// its answer runs out.
func (w *Watcher) Watch(cfg *config.Config) {
	w.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gen++
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	names := cfg.Names()
	if len(names) == 0 {
		return
	}
	lookup := config.NewLookup(cfg.Resolvers)
	for _, n := range names {
		w.wg.Add(1)
		go w.watchName(ctx, w.gen, n, lookup)
	}
}

// Stop ends the watching; it returns once no lookup runs.
func (w *Watcher) Stop() {
	w.mu.Lock()
	cancel := w.cancel
	w.cancel = nil
	w.mu.Unlock()
	if cancel != nil {
		cancel()
		w.wg.Wait()
	}
}

// watchName asks DNS for n whenever its last answer runs out and sends
// an Update when the servers it gives change.
func (w *Watcher) watchName(ctx context.Context, gen uint64, n *config.NameServer, lookup config.Lookup) {
	defer w.wg.Done()
	cur := *n // cur.Found: the servers serving now
	retry, failed := firstRetry, ""
	timer := time.NewTimer(n.Refresh(n.TTL))
	defer timer.Stop()
	done := make(chan bool, 1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		found, ttl, err := cur.Resolve(ctx, lookup)
		last := cur.Found
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			wait := retry
			retry = min(2*retry, maxRetry)
			if msg := err.Error(); msg != failed {
				failed = msg
				w.log.Warn("server name does not resolve; its last servers found keep serving",
					"server", n.Key(), "name", n.Name(), "servers", len(last), "err", msg, "where", n.Where)
			}
			timer.Reset(wait)
			continue
		}
		if failed != "" {
			failed = ""
			w.log.Info("server name resolves again", "server", n.Key(), "name", n.Name())
		}
		retry = firstRetry
		timer.Reset(n.Refresh(ttl))
		if config.SameServers(found, last) {
			continue
		}
		select {
		case w.updates <- Update{Key: n.Key(), Name: n.Name(), Gen: gen, Was: last, Found: found, TTL: ttl, done: done}:
		case <-ctx.Done():
			return
		}
		select {
		case applied := <-done:
			if applied {
				cur.Found, cur.TTL = found, ttl
			}
		case <-ctx.Done():
			return
		}
	}
}

// Changes lists the servers of now that were not in was (added) and
// those of was no longer in now (removed), as "name@address".
func Changes(was, now []balance.ServerConfig) (added, removed string) {
	return missing(now, was), missing(was, now)
}

// missing lists the servers of a that b has not, by name and address.
func missing(a, b []balance.ServerConfig) string {
	var out []string
	for _, s := range a {
		found := false
		for _, o := range b {
			if o.Name == s.Name && o.Addr.String() == s.Addr.String() {
				found = true
				break
			}
		}
		switch {
		case found:
		case strings.Contains(s.Name, "@"): // named by its address already
			out = append(out, s.Name)
		default:
			out = append(out, s.Name+"@"+s.Addr.String())
		}
	}
	return strings.Join(out, ",")
}
