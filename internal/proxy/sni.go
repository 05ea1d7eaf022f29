package proxy

import (
	"errors"
	"strings"

	"rsp/internal/balance"
	"rsp/internal/config"
	"rsp/internal/splice"
	"rsp/internal/tlshello"
)

// helloRule routes frontend f's connections by their TLS server name:
// exact names first, then a "*." wildcard of the name's first label;
// what matches none (or has no name, is not TLS, or comes too late) keeps
// the frontend's route def, or is closed with sni_fallback "close". Each
// backend named gets a route of its own, def's with that backend's
// picker, retries, source address, PROXY header and keepalive.
func helloRule(f *config.Frontend, def *splice.Route, cfg *config.Config, pools map[string]*balance.Pool) *splice.HelloRule {
	routes := map[string]*splice.Route{}
	exact := map[string]*splice.Route{}
	wild := map[string]*splice.Route{} // "example.com" for "*.example.com"
	for _, r := range f.SNI {
		rt := routes[r.Backend]
		if rt == nil {
			rt = route(f, cfg.Backend(r.Backend), pools[r.Backend], def.Limit)
			rt.ACL, rt.Header, rt.Sources = def.ACL, def.Header, def.Sources
			routes[r.Backend] = rt
		}
		if d, ok := strings.CutPrefix(r.Pattern, "*."); ok {
			wild[d] = rt
		} else {
			exact[r.Pattern] = rt
		}
	}
	fallback := f.SNIFallback != "close"
	h := &splice.HelloRule{
		Parse:   parseHello,
		MaxLen:  tlshello.MaxLen,
		Timeout: f.SNITimeout,
		Route: func(name, why string) (*splice.Route, bool) {
			if name != "" {
				rt, ok := exact[name]
				if !ok {
					if _, rest, cut := strings.Cut(name, "."); cut {
						rt, ok = wild[rest]
					}
				}
				if ok {
					return rt, true
				}
			}
			return def, fallback
		},
	}
	for _, rt := range routes {
		rt.Hello = h
	}
	return h
}

// parseHello reads a ClientHello's server name for the relay.
func parseHello(b []byte) (string, error) {
	h, err := tlshello.Parse(b)
	if errors.Is(err, tlshello.ErrIncomplete) {
		return "", splice.ErrHelloIncomplete
	}
	return h.ServerName, err
}
