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
// what matches none (or has no name, is not TLS, or comes too late) goes
// to the frontend's own backend def, or is closed with sni_fallback
// "close".
func helloRule(f *config.Frontend, def *balance.Pool, pools map[string]*balance.Pool) *splice.HelloRule {
	exact := map[string]string{}
	wild := map[string]string{} // "example.com" for "*.example.com"
	for _, r := range f.SNI {
		if d, ok := strings.CutPrefix(r.Pattern, "*."); ok {
			wild[d] = r.Backend
		} else {
			exact[r.Pattern] = r.Backend
		}
	}
	fallback := f.SNIFallback != "close"
	return &splice.HelloRule{
		Parse:   parseHello,
		MaxLen:  tlshello.MaxLen,
		Timeout: f.SNITimeout,
		Route: func(name, why string) (splice.Picker, string, bool) {
			if name != "" {
				b, ok := exact[name]
				if !ok {
					if _, rest, cut := strings.Cut(name, "."); cut {
						b, ok = wild[rest]
					}
				}
				if ok {
					return picker{pools[b]}, b, true
				}
			}
			if !fallback {
				return nil, "", false
			}
			return picker{def}, def.Name(), true
		},
	}
}

// parseHello reads a ClientHello's server name for the relay.
func parseHello(b []byte) (string, error) {
	h, err := tlshello.Parse(b)
	if errors.Is(err, tlshello.ErrIncomplete) {
		return "", splice.ErrHelloIncomplete
	}
	return h.ServerName, err
}
