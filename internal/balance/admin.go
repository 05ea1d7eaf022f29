package balance

import (
	"fmt"
	"sync/atomic"
)

// MaxWeight bounds a server's weight, in the configuration and at run
// time, as in HAProxy.
const MaxWeight = 256

// Admin is an operator's runtime setting of a server (rsp ctl drain,
// maint, ready). It lives in the server's shared state, so it survives a
// reload that keeps the server's name and address: the runtime setting
// wins over the configuration file, which has no such setting.
type Admin int32

const (
	// Ready puts the server in rotation whenever it is up (the default).
	Ready Admin = iota
	// Drain takes no new connections; live ones carry on to their end.
	Drain
	// Maint (maintenance) is out of rotation like Drain; health checks go
	// on, so the server's health is known when it is made Ready again.
	Maint
)

var adminNames = [...]string{Ready: "ready", Drain: "drain", Maint: "maint"}

// String returns the rsp ctl spelling of a ("ready", "drain", "maint").
func (a Admin) String() string {
	if a >= 0 && int(a) < len(adminNames) {
		return adminNames[a]
	}
	return fmt.Sprintf("Admin(%d)", int(a))
}

// weightOverride is a weight set at run time. file is the configured
// weight of the server when it was set: a reload whose file gives the
// server another weight ends the override (see Server.Weight).
type weightOverride struct {
	weight int
	file   int
}

// The states Server.State reports, as rsp_server_state spells them.
const (
	StateUp          = "up"
	StateDown        = "down"
	StateDraining    = "draining"
	StateMaintenance = "maintenance"
)

// States returns every state Server.State may return, in order of
// precedence, lowest first (for rsp_server_state's label values).
func States() []string {
	return []string{StateUp, StateDown, StateDraining, StateMaintenance}
}

// State returns the server's state for metrics and rsp ctl, the first
// that holds of: "maintenance" (Maint), "draining" (Drain, or an
// effective weight of 0), "down" (by health checks or passive ejection),
// "up". Maintenance and draining hide the health underneath; Up reports
// it alone.
func (s *Server) State() string {
	switch {
	case s.Admin() == Maint:
		return StateMaintenance
	case s.Admin() == Drain || s.Weight() == 0:
		return StateDraining
	case !s.Up():
		return StateDown
	}
	return StateUp
}

// Admin returns the server's runtime setting.
func (s *Server) Admin() Admin { return Admin(s.st.admin.Load()) }

// SetAdmin sets the server's runtime setting and returns the one it
// replaces. A change is logged at Info, with logAttrs (slog key-value
// pairs: who asked, and how) added to the line. Connections already
// relayed to the server are not touched.
func (s *Server) SetAdmin(a Admin, logAttrs ...any) (was Admin) {
	was = Admin(s.st.admin.Swap(int32(a)))
	if was != a {
		s.logChange("admin", was.String(), a.String(), logAttrs)
	}
	return was
}

// Weight returns the server's effective weight: the one set at run time
// by SetWeight, as long as the configuration has not given the server a
// new weight since; else the configured one.
func (s *Server) Weight() int {
	if o := s.st.weight.Load(); o != nil && o.file == s.weight {
		return o.weight
	}
	return s.weight
}

// ConfigWeight returns the server's weight in the configuration.
func (s *Server) ConfigWeight() int { return s.weight }

// SetWeight sets the server's weight at run time, 0 to MaxWeight (0
// takes no new connections, as in the configuration), and returns the
// effective weight it replaces. The new weight applies at once to every
// algorithm. It survives a reload unless the reloaded file changes the
// server's configured weight: then the file's new weight applies (and
// Start logs it). A change is logged at Info with logAttrs added.
func (s *Server) SetWeight(n int, logAttrs ...any) (was int, err error) {
	if n < 0 || n > MaxWeight {
		return s.Weight(), fmt.Errorf("server %s: weight %d out of range: use 0 (drain) to %d", s.name, n, MaxWeight)
	}
	var o *weightOverride
	if n != s.weight {
		o = &weightOverride{weight: n, file: s.weight}
	}
	// The swap is of the whole override, so Weight never sees half of
	// one; was is read from what it replaced.
	prev := s.st.weight.Swap(o)
	was = s.weight
	if prev != nil && prev.file == s.weight {
		was = prev.weight
	}
	if was != n {
		s.logChange("weight", was, n, logAttrs)
	}
	if s.pool.alg == Source {
		s.pool.tierOf(s).currentRing() // now, rather than on the next pick
	}
	return was, nil
}

// settleWeight ends a runtime weight that the configuration overrode:
// the server's configured weight changed since the weight was set.
func (s *Server) settleWeight() {
	o := s.st.weight.Load()
	if o == nil || o.file == s.weight {
		return
	}
	if s.st.weight.CompareAndSwap(o, nil) {
		s.pool.log.Info("runtime weight dropped: the reloaded configuration changed the server's weight",
			"server", s.name, "runtime_weight", o.weight, "old_file_weight", o.file, "weight", s.weight)
	}
}

// logChange logs a runtime change of s.
func (s *Server) logChange(what string, from, to any, logAttrs []any) {
	args := append([]any{"server", s.name, "setting", what, "from", from, "to", to}, logAttrs...)
	s.pool.log.Info("server state changed by rsp ctl", args...)
}

// Checks returns how many active health checks of the server passed and
// failed, since the server first appeared with its name and address
// (reloads keep the counts).
func (s *Server) Checks() (passed, failed uint64) {
	return s.st.checksPassed.Load(), s.st.checksFailed.Load()
}

// adminState is the part of a server's shared state that rsp ctl sets,
// and the check counters metrics read.
type adminState struct {
	admin        atomic.Int32                   // an Admin
	weight       atomic.Pointer[weightOverride] // nil: the configured weight
	checksPassed atomic.Uint64
	checksFailed atomic.Uint64
}
