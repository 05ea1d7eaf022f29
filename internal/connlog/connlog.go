// Package connlog writes one log line per finished connection, as
// HAProxy's tcplog does: who connected, where it went, how many bytes
// each way, how long the connect and the connection took, and why it
// ended.
//
// Typical usage:
//
//	cl := connlog.New(logger, connlog.Errors, 1)
//	relay := &splice.Relay{OnEnd: cl.Log}
//	...
//	cl.Set(connlog.All, 0.01) // on reload: every error, 1% of the rest
//	cl.Close()                // at exit: flushes, reports what was suppressed
//
// Lines go through log/slog, so they take the logger's format (logfmt or
// JSON). Lines of connections that did not end cleanly are rate limited
// per cause; the next line of a cause says how many were suppressed.
// Lines are written in batches by a goroutine of their own (at most
// flushEvery late), so that a busy proxy makes one write for many
// connections and an event loop never waits on the output: if the output
// blocks, lines queue up to a bound and are then dropped and counted.
package connlog

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"rsp/internal/splice"
)

// Mode says which connections get a line.
type Mode int32

const (
	// Errors logs connections that did not end cleanly (the default).
	Errors Mode = iota
	// All logs every connection (clean ones sampled).
	All
	// Off logs none.
	Off
)

// ParseMode reads "all", "errors" or "off".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "all":
		return All, nil
	case "errors", "":
		return Errors, nil
	case "off":
		return Off, nil
	}
	return 0, fmt.Errorf("unknown conn_log %q: use all, errors or off", s)
}

// Rate limit of error lines: burst lines per cause per window.
const (
	burst  = 10
	window = time.Second
)

// Logger writes the connection log. It is safe for concurrent use; Log
// is meant for splice.Relay.OnEnd.
type Logger struct {
	log    *slog.Logger
	out    *batch // nil when log writes directly
	mode   atomic.Int32
	sample atomic.Uint32 // share of clean connections logged, of 1<<32-1

	mu         sync.Mutex
	buckets    [splice.NumCauses]bucket
	suppressed [splice.NumCauses]atomic.Int64 // ever, for metrics
}

type bucket struct {
	start   time.Time
	n       int
	pending int // suppressed since the last line of the cause
}

// New returns a Logger writing through log.
func New(log *slog.Logger, mode Mode, sample float64) *Logger {
	l := &Logger{log: log}
	l.Set(mode, sample)
	return l
}

// NewBatched returns a Logger whose lines are formatted by handler h,
// built on the writer it is given, and written in batches to w.
func NewBatched(w Writer, h func(Writer) slog.Handler, mode Mode, sample float64) *Logger {
	b := newBatch(w)
	l := &Logger{log: slog.New(h(b)), out: b}
	l.Set(mode, sample)
	return l
}

// Set changes the mode and the sampling of clean connections (a share
// in (0, 1]; other values mean 1).
func (l *Logger) Set(mode Mode, sample float64) {
	if !(sample > 0 && sample < 1) {
		sample = 1
	}
	l.mode.Store(int32(mode))
	l.sample.Store(uint32(sample * float64(^uint32(0))))
}

// Log writes ci's line if the mode, sampling and rate limit allow.
func (l *Logger) Log(ci *splice.ConnInfo) {
	mode := Mode(l.mode.Load())
	if mode == Off {
		return
	}
	level := slog.LevelInfo
	var suppressed int
	if ci.Cause.Clean() {
		if mode != All || !l.sampled(ci.ID) {
			return
		}
	} else {
		var ok bool
		ok, suppressed = l.allow(ci.Cause, time.Now())
		if !ok {
			return
		}
		level = slog.LevelWarn
	}
	backend, server := split(ci.Server)
	if ci.Backend != "" {
		backend = ci.Backend
	}
	client, serverAddr := "", ""
	if ci.Client.IsValid() {
		client = ci.Client.String()
	}
	if ci.ServerAddr != nil {
		serverAddr = ci.ServerAddr.String()
	}
	var buf [15]slog.Attr // on the stack: no allocation per line
	attrs := append(buf[:0],
		slog.Uint64("id", ci.ID),
		slog.String("client", client),
		slog.String("frontend", ci.Frontend),
		slog.String("backend", backend),
		slog.String("server", server),
		slog.String("server_addr", serverAddr),
		slog.Int64("bytes_in", ci.BytesIn),
		slog.Int64("bytes_out", ci.BytesOut),
		slog.Float64("connect_ms", ms(ci.Connect)),
		slog.Float64("duration_ms", ms(ci.Duration)),
		slog.Int("tries", ci.Tries),
		slog.String("cause", ci.Cause.String()),
		slog.String("relay", ci.Relay.String()),
	)
	if ci.Err != nil {
		attrs = append(attrs, slog.String("err", oneLine(ci.Err.Error())))
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed", suppressed))
	}
	// The handler directly, with no caller's PC: Logger.LogAttrs would
	// walk the stack for a source position the line does not show.
	h := l.log.Handler()
	ctx := context.Background()
	if !h.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(time.Now(), level, "conn", 0)
	r.AddAttrs(attrs...)
	h.Handle(ctx, r)
}

// sampled decides whether a clean connection is logged: a hash of its ID
// below the sampling share, so no state is shared between event loops.
func (l *Logger) sampled(id uint64) bool {
	s := l.sample.Load()
	if s == ^uint32(0) {
		return true
	}
	h := uint32((id * 0x9E3779B97F4A7C15) >> 32)
	return h < s
}

// allow reports whether an error line of cause may be written now, and
// how many of that cause were suppressed since the last one written.
func (l *Logger) allow(cause splice.Cause, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &l.buckets[cause]
	if now.Sub(b.start) >= window {
		b.start, b.n = now, 0
	}
	if b.n >= burst {
		b.pending++
		l.suppressed[cause].Add(1)
		return false, 0
	}
	b.n++
	n := b.pending
	b.pending = 0
	return true, n
}

// Suppressed returns how many error lines the rate limit dropped since
// the start, by cause.
func (l *Logger) Suppressed() map[splice.Cause]int64 {
	out := map[splice.Cause]int64{}
	for c := range splice.NumCauses {
		if n := l.suppressed[c].Load(); n > 0 {
			out[c] = n
		}
	}
	return out
}

// Dropped returns how many lines were dropped because the output did not
// keep up (a blocked journal): rsp never waits for it.
func (l *Logger) Dropped() int64 {
	if l.out == nil {
		return 0
	}
	return l.out.dropped.Load()
}

// Close logs, for each cause, the lines suppressed and not yet reported,
// and writes out what is buffered.
func (l *Logger) Close() {
	l.mu.Lock()
	for c := range l.buckets {
		if b := &l.buckets[c]; b.pending > 0 {
			l.log.Warn("connection log lines suppressed by the rate limit", "cause", splice.Cause(c).String(), "suppressed", b.pending)
			b.pending = 0
		}
	}
	l.mu.Unlock()
	if l.out != nil {
		l.out.close()
	}
}

// split splits "backend/server".
func split(name string) (backend, server string) {
	if i := strings.IndexByte(name, '/'); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "", name
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// oneLine keeps an error text on one line.
func oneLine(s string) string {
	return strings.ReplaceAll(s, "\n", "; ")
}
