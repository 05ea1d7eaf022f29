//go:build linux

package splice

import (
	"slices"
	"time"
)

// This file holds how an event loop reports its counters and
// connections to other goroutines: each answers a command on its own
// goroutine, so none of it is shared while the loop runs.

// fill adds the loop's counters, and the bytes its live connections have
// moved so far, to snap.
func (l *loop) fill(snap *Snapshot) {
	l.answers++
	snap.stamp = l.answers
	l.tally.addTo(snap)
	for c := l.live.next; c != &l.live; c = c.next {
		server := ""
		if c.srv != nil && c.target != nil {
			server = c.target.Name()
		}
		snap.addLive(c.rt.Name, server, c.up.sent, c.down.sent)
	}
	snap.LoopBusy = append(snap.LoopBusy, time.Duration(l.busy))
	if g := l.pool.granted; g > 0 && (snap.PipeSize == 0 || g < snap.PipeSize) {
		snap.PipeSize = g
	}
}

// listConns appends a ConnInfo for each live connection to out.
func (l *loop) listConns(out *[]ConnInfo) {
	for c := l.live.next; c != &l.live; c = c.next {
		var ci ConnInfo
		l.describe(c, c.target, &ci)
		*out = append(*out, ci)
	}
}

// kill resets the live connections relayed to the target named server
// and returns how many.
func (l *loop) kill(server string) int {
	n := 0
	for c := l.live.next; c != &l.live; {
		next := c.next
		if c.target != nil && !c.connecting && c.target.Name() == server {
			l.finish(c, errKilled, true)
			n++
		}
		c = next
	}
	return n
}

// ask posts a command built by mk to every loop and waits for each to
// carry it out, at most timeout in all. It reports, per loop, whether
// the command was carried out. A loop that has exited answers nothing:
// exited(i) is called for it instead, safely, since it runs no more.
func (e *spliceEngine) ask(timeout time.Duration, mk func(i int) command, exited func(i int)) []bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	dones := make([]chan struct{}, len(e.loops))
	for i, l := range e.loops {
		cmd := mk(i)
		cmd.done = make(chan struct{})
		dones[i] = cmd.done
		if !l.enqueue(cmd) {
			if exited != nil {
				exited(i)
			}
			close(cmd.done)
		}
	}
	ok := make([]bool, len(e.loops))
	expired := false
	for i, done := range dones {
		if expired {
			select {
			case <-done:
				ok[i] = true
			default:
			}
			continue
		}
		select {
		case <-done:
			ok[i] = true
		case <-t.C:
			expired = true
		}
	}
	return ok
}

func (e *spliceEngine) snapshot(snap *Snapshot, timeout time.Duration) {
	parts := make([]Snapshot, len(e.loops))
	ok := e.ask(timeout, func(i int) command {
		return command{op: cmdSnapshot, snap: &parts[i]}
	}, func(i int) { e.loops[i].fill(&parts[i]) })
	// A loop that did not answer in time counts with what it said last,
	// so that no counter seems to go back (Prometheus reads a counter
	// that shrinks as a restart).
	e.snapMu.Lock()
	if e.lastParts == nil {
		e.lastParts = make([]*Snapshot, len(e.loops))
	}
	for i := range parts {
		// Concurrent scrapes may reach a loop in either order: keep the
		// answer the loop gave last.
		if ok[i] && (e.lastParts[i] == nil || parts[i].stamp > e.lastParts[i].stamp) {
			e.lastParts[i] = &parts[i]
		}
	}
	last := slices.Clone(e.lastParts)
	e.snapMu.Unlock()
	snap.LoopBusy = make([]time.Duration, len(e.loops))
	for i, p := range last {
		if p == nil {
			continue
		}
		for name, f := range p.Frontends {
			snap.frontend(name).add(f)
		}
		for name, s := range p.Servers {
			snap.server(name).add(s)
		}
		snap.Copied += p.Copied
		if len(p.LoopBusy) > 0 {
			snap.LoopBusy[i] = p.LoopBusy[0]
		}
		if p.PipeSize > 0 && (snap.PipeSize == 0 || p.PipeSize < snap.PipeSize) {
			snap.PipeSize = p.PipeSize
		}
	}
	snap.PipeBudget, snap.PipePages, snap.SmallPipes = e.budget.limit, e.budget.held.Load(), e.budget.small.Load()
	e.handoff.snapshot(snap, timeout)
}

func (e *spliceEngine) conns(timeout time.Duration) []ConnInfo {
	parts := make([][]ConnInfo, len(e.loops))
	ok := e.ask(timeout, func(i int) command {
		return command{op: cmdConns, conns: &parts[i]}
	}, nil)
	var out []ConnInfo
	for i := range parts {
		if ok[i] {
			out = append(out, parts[i]...)
		}
	}
	return append(out, e.handoff.conns(timeout)...)
}

func (e *spliceEngine) kill(server string) int {
	counts := make([]int, len(e.loops))
	ok := e.ask(3*time.Second, func(i int) command { // within rsp ctl's 5 s
		return command{op: cmdKill, server: server, killed: &counts[i]}
	}, nil)
	n := 0
	for i := range counts {
		if ok[i] {
			n += counts[i]
		}
	}
	return n + e.handoff.kill(server)
}
