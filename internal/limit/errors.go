package limit

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors wrapped by Take's refusals; test them with errors.Is.
var (
	ErrPerAddr        = errors.New("per-address connection limit")
	ErrPerPrefix      = errors.New("per-prefix connection limit")
	ErrRate           = errors.New("per-address connection rate limit")
	ErrTooManySources = errors.New("too many client sources tracked")
)

// refusal is Take's error. Refusals are the hot path under abuse, so it
// is one small allocation and the text is formatted only when asked for.
type refusal struct {
	err   error // one of the sentinels
	addr  netip.Addr
	bits  int // prefix length, for ErrPerPrefix
	count int // connections open, for ErrPerAddr and ErrPerPrefix
	limit int // the limit; the burst for ErrRate; MaxSources for ErrTooManySources
	rate  float64
}

func (r *refusal) Unwrap() error { return r.err }

func (r *refusal) Error() string {
	switch r.err {
	case ErrPerAddr:
		return fmt.Sprintf("%v: %v has %d connections open, limit %d", r.err, r.addr, r.count, r.limit)
	case ErrPerPrefix:
		p, _ := r.addr.WithZone("").Prefix(r.bits)
		return fmt.Sprintf("%v: %v (client %v) has %d connections open, limit %d", r.err, p, r.addr, r.count, r.limit)
	case ErrRate:
		return fmt.Sprintf("%v: %v opens more than %g connections/s, burst %d", r.err, r.addr, r.rate, r.limit)
	case ErrTooManySources:
		return fmt.Sprintf("%v: %v is new and no tracked source is idle (max %d)", r.err, r.addr, r.limit)
	}
	return r.err.Error()
}
