package splice

import (
	"errors"
	"fmt"
	"net/netip"
)

// HeaderRule is how a route reads the header that a proxy in front sends
// before a client's bytes (the PROXY protocol). The relay peeks at the
// client's first bytes and consumes exactly the header.
type HeaderRule struct {
	// Trusted reports whether a client from addr may, and must, send a
	// header; any other client is refused.
	Trusted func(addr netip.Addr) bool
	// Parse reads a header at the start of b: the client it names
	// (invalid: the connection's own address stands) and its length;
	// ErrHeaderIncomplete if b is a proper beginning of one.
	Parse func(b []byte) (client netip.AddrPort, n int, err error)
	// MaxLen is the most bytes a header may take.
	MaxLen int
}

// ErrHeaderIncomplete is returned by HeaderRule.Parse when more bytes are
// needed.
var ErrHeaderIncomplete = errors.New("header incomplete")

// errBadHeader is wrapped by every refusal of a client's header.
var errBadHeader = errors.New("PROXY header refused")

// parseHeader looks at the bytes a client sent so far (eof: and no more
// will come): done, with the client named and the header's length; more
// needed (done false, err nil); or refused (err).
func parseHeader(h *HeaderRule, b []byte, eof bool) (client netip.AddrPort, n int, done bool, err error) {
	client, n, err = h.Parse(b)
	switch {
	case errors.Is(err, ErrHeaderIncomplete) && (eof || len(b) >= h.MaxLen):
		return client, 0, false, wrapHeader("truncated: the client sent no whole header")
	case errors.Is(err, ErrHeaderIncomplete):
		return client, 0, false, nil
	case err != nil:
		return client, 0, false, fmt.Errorf("%w: %w", errBadHeader, err)
	}
	return client, n, true, nil
}

func wrapHeader(msg string) error { return fmt.Errorf("%w: %s", errBadHeader, msg) }

// errUntrusted refuses a header-expecting frontend's client that is not
// a trusted proxy: it could send a header naming any client.
var errUntrusted = wrapHeader("client is not a trusted proxy (accept_proxy_from): this frontend serves proxies only")
