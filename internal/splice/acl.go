package splice

import "net/netip"

// ACL is a frontend's access list: the client prefixes allowed and
// denied. A client is refused if a Deny prefix holds it, or if Allow is
// not empty and no Allow prefix holds it.
type ACL struct {
	Allow []netip.Prefix
	Deny  []netip.Prefix
}

// Allows reports whether a client from addr may connect. An invalid
// address (a Unix client) is allowed: the list is about IP addresses.
func (a *ACL) Allows(addr netip.Addr) bool {
	if !addr.IsValid() {
		return true
	}
	addr = addr.Unmap()
	for _, p := range a.Deny {
		if p.Contains(addr) {
			return false
		}
	}
	if len(a.Allow) == 0 {
		return true
	}
	for _, p := range a.Allow {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
