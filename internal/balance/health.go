package balance

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// checkLoop runs s's active health checks until the pool closes: a TCP
// (or unix) connect every Interval, Rise passes to come up, Fall
// failures to go down.
func (s *Server) checkLoop(wg *sync.WaitGroup) {
	defer wg.Done()
	h := s.pool.health
	t := time.NewTicker(h.Interval)
	defer t.Stop()
	for {
		select {
		case <-s.pool.stop:
			return
		case <-t.C:
		}
		s.checkResult(s.check(h.timeout()))
	}
}

// check connects to s once, from the pool's source if it has one, and
// closes the connection.
func (s *Server) check(timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	if src := s.pool.health.Source; src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	c, err := d.Dial(s.addr.Network(), s.addr.String())
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// checkResult counts one active check (cumulative, for metrics, and
// consecutive) and changes s's state when Rise or Fall is reached. It
// runs whatever the server's Admin: a server in maintenance is still
// checked, so its health is known when it is made ready.
func (s *Server) checkResult(err error) {
	h := s.pool.health
	if err == nil {
		s.st.checksPassed.Add(1)
	} else {
		s.st.checksFailed.Add(1)
	}
	s.st.mu.Lock()
	if err == nil {
		s.st.passed++
		s.st.failed = 0
	} else {
		s.st.failed++
		s.st.passed = 0
	}
	passed, failed := s.st.passed, s.st.failed
	s.st.mu.Unlock()
	switch {
	case err == nil && passed >= h.rise() && !s.Up():
		s.setUp(fmt.Sprintf("%d consecutive checks passed", passed))
	case err != nil && failed >= h.fall() && s.Up():
		s.setDown(byCheck, fmt.Sprintf("%d consecutive checks failed, last: %v", failed, err))
	}
}
