package balance

import (
	"net/netip"
	"slices"
	"strconv"
)

// pointsPerWeight is how many points a server of weight 1 puts on the
// source-hash ring. With 160 points a server's share of the ring is
// within a few percent of its weight's share.
const pointsPerWeight = 160

// ringPoint is one point of the consistent-hash ring.
type ringPoint struct {
	hash uint64
	s    *Server
}

// buildRing places pointsPerWeight × weight points per server on the
// ring, hashed from the server's name so that every process, and every
// reload, builds the same ring. A drained server (weight 0) keeps one
// weight's worth of points: its clients fall through to the next server
// while it drains and return to it afterwards.
func buildRing(servers []*Server) []ringPoint {
	var ring []ringPoint
	for _, s := range servers {
		w := max(s.weight, 1)
		for i := range w * pointsPerWeight {
			ring = append(ring, ringPoint{hash: hashString(s.name + "#" + strconv.Itoa(i)), s: s})
		}
	}
	slices.SortFunc(ring, func(a, b ringPoint) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	return ring
}

// pickSource walks the ring clockwise from the client's hash to the first
// eligible server.
func (p *Pool) pickSource(client netip.Addr, skip []*Server) *Server {
	b := client.Unmap().As16()
	h := hashBytes(b[:])
	i, _ := slices.BinarySearchFunc(p.ring, h, func(pt ringPoint, h uint64) int {
		switch {
		case pt.hash < h:
			return -1
		case pt.hash > h:
			return 1
		}
		return 0
	})
	n := len(p.ring)
	for k := range n {
		if s := p.ring[(i+k)%n].s; s.eligible(skip) {
			return s
		}
	}
	return nil
}

// hashBytes is 64-bit FNV-1a followed by a splitmix64 finalizer, which
// spreads the nearly equal inputs (adjacent addresses) over the ring.
func hashBytes(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return mix(h)
}

func hashString(s string) uint64 { return hashBytes([]byte(s)) }

func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
