package proxy

import (
	"slices"
	"sync"
	"time"

	"rsp/internal/config"
	"rsp/internal/limit"
	"rsp/internal/splice"
)

// sourceLimiter is a frontend's per-source limiter and the limits it was
// made with.
type sourceLimiter struct {
	cfg config.SourceLimits
	l   *limit.Limiter
}

func newSourceLimiter(s config.SourceLimits) *sourceLimiter {
	return &sourceLimiter{cfg: s, l: limit.New(limit.Config{
		PerAddr: s.PerSource, PerPrefix: s.PerPrefix, PrefixV4: s.PrefixV4, PrefixV6: s.PrefixV6,
		Rate: s.Rate, Burst: s.Burst,
	})}
}

// sweepEvery is how often idle per-source entries are dropped when no
// new connection does it (each Take drops a few).
const sweepEvery = time.Second

// sweeper drops the per-source limiters' idle entries every sweepEvery,
// so that their memory follows the clients even when no new one comes.
type sweeper struct {
	mu      sync.Mutex
	targets []*limit.Limiter
	relay   *splice.Relay
	quit    chan struct{}
	done    chan struct{}
}

// set makes the sweeper sweep the limiters of sources, starting it the
// first time there are any.
func (s *sweeper) set(sources map[string]*sourceLimiter, relay *splice.Relay) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets = s.targets[:0]
	for _, sl := range sources {
		s.targets = append(s.targets, sl.l)
	}
	s.relay = relay
	if len(s.targets) > 0 && s.quit == nil {
		s.quit, s.done = make(chan struct{}), make(chan struct{})
		go s.run(s.quit, s.done)
	}
}

func (s *sweeper) run(quit, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case <-t.C:
		}
		s.mu.Lock()
		targets, now := slices.Clone(s.targets), s.relay.Clock()
		s.mu.Unlock()
		for _, l := range targets {
			l.Sweep(now)
		}
	}
}

// stop ends the sweeping.
func (s *sweeper) stop() {
	s.mu.Lock()
	quit, done := s.quit, s.done
	s.quit = nil
	s.mu.Unlock()
	if quit != nil {
		close(quit)
		<-done
	}
}
