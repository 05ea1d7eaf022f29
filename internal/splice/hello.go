package splice

import (
	"errors"
	"fmt"
	"time"
)

// HelloRule routes a frontend's connections by the server name in the
// TLS ClientHello each starts with. The relay peeks at the client's first
// bytes without consuming them, so they reach the server byte for byte.
type HelloRule struct {
	// Parse reads the ClientHello at the start of b and returns its
	// server name ("" for none); ErrHelloIncomplete if b is a proper
	// beginning of one; any other error if b is not TLS or not a valid
	// ClientHello.
	Parse func(b []byte) (name string, err error)
	// Route returns the route of a connection whose hello named name:
	// its backend's picker, retries, source, preamble and server
	// keepalive, and the frontend's own settings. why says what went
	// wrong instead ("" when a hello named it; "no server name", "not
	// TLS: ...", "no ClientHello within 5s"), and name is "" then. ok
	// false closes the connection.
	Route func(name, why string) (rt *Route, ok bool)
	// MaxLen is the most bytes a ClientHello may take.
	MaxLen int
	// Timeout bounds the wait for a whole ClientHello; zero means
	// DefaultHelloTimeout.
	Timeout time.Duration
}

// DefaultHelloTimeout bounds the wait for a client's ClientHello.
const DefaultHelloTimeout = 5 * time.Second

func (h *HelloRule) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return DefaultHelloTimeout
}

// ErrHelloIncomplete is returned by HelloRule.Parse when more bytes are
// needed.
var ErrHelloIncomplete = errors.New("ClientHello incomplete")

// errNoRoute is wrapped when a connection's TLS server name leads
// nowhere.
var errNoRoute = errors.New("no route for the TLS server name")

// parseHello looks at the bytes a client sent so far (eof: and no more
// will come): done with the server name (or the reason there is none),
// or more needed (done false).
func parseHello(h *HelloRule, b []byte, eof bool) (name, why string, done bool) {
	name, err := h.Parse(b)
	switch {
	case err == nil && name == "":
		return "", "no server name in the ClientHello", true
	case err == nil:
		return name, "", true
	case errors.Is(err, ErrHelloIncomplete) && len(b) >= h.MaxLen:
		return "", fmt.Sprintf("ClientHello longer than %d bytes", h.MaxLen), true
	case errors.Is(err, ErrHelloIncomplete) && eof:
		return "", "the client closed before a whole ClientHello", true
	case errors.Is(err, ErrHelloIncomplete):
		return "", "", false
	}
	return "", err.Error(), true
}

// routeHello applies the rule's routing to d; an error says why the
// connection is to be closed instead. A connection sent to a default for
// want of a server name is logged (rate limited) with the reason.
func routeHello(r *Relay, h *HelloRule, d *dialing, name, why string) error {
	rt, ok := h.Route(name, why)
	if !ok {
		if why == "" {
			why = fmt.Sprintf("server name %q matches no route", name)
		}
		return fmt.Errorf("%w: %s (sni_fallback = \"close\")", errNoRoute, why)
	}
	if why != "" {
		r.logs.info(r.logger(), "sni default", "TLS server name missing; connection sent to the frontend's backend",
			"frontend", d.rt.Name, "client", d.peer.String(), "backend", rt.Backend, "reason", why)
	}
	d.rt = rt
	return nil
}
