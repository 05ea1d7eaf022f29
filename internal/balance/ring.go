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

// ring is a consistent-hash ring of a tier's servers (a pool's
// primaries, or its backups) and the weights it was built for. A ring is
// never changed once built: a weight change builds a new one and swaps
// it in (tier.ring), so a pick reads a whole ring without a lock.
type ring struct {
	points []ringPoint
	// weights holds, for each of the tier's servers in order, the
	// weight its points stand for: max(effective weight, 1).
	weights []int
}

// ringWeight is how many weights' worth of points s puts on the ring. A
// drained server (weight 0) keeps one weight's worth: its clients fall
// through to the next server while it drains and return to it
// afterwards.
func ringWeight(s *Server) int { return max(s.Weight(), 1) }

// buildRing places pointsPerWeight × weight points per server on the
// ring, hashed from the server's name so that every process, and every
// reload, builds the same ring for the same weights.
func buildRing(servers []*Server) *ring {
	r := &ring{weights: make([]int, len(servers))}
	for i, s := range servers {
		w := ringWeight(s)
		r.weights[i] = w
		for k := range w * pointsPerWeight {
			r.points = append(r.points, ringPoint{hash: hashString(s.name + "#" + strconv.Itoa(k)), s: s})
		}
	}
	slices.SortFunc(r.points, func(a, b ringPoint) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	return r
}

// fits reports whether r was built for the servers' weights now.
func (r *ring) fits(servers []*Server) bool {
	for i, s := range servers {
		if r.weights[i] != ringWeight(s) {
			return false
		}
	}
	return true
}

// currentRing returns t's ring for its servers' weights now, building
// it first if a weight changed (at run time, or by a reload's Inherit)
// since the last one was built.
func (t *tier) currentRing() *ring {
	if r := t.ring.Load(); r != nil && r.fits(t.servers) {
		return r
	}
	t.ringMu.Lock()
	defer t.ringMu.Unlock()
	if r := t.ring.Load(); r != nil && r.fits(t.servers) {
		return r // built while this pick waited
	}
	r := buildRing(t.servers)
	t.ring.Store(r)
	return r
}

// pickSource walks t's ring clockwise from the client's hash to the
// first eligible server.
func (t *tier) pickSource(client netip.Addr, skip []*Server) *Server {
	ring := t.currentRing().points
	b := client.Unmap().As16()
	h := hashBytes(b[:])
	i, _ := slices.BinarySearchFunc(ring, h, func(pt ringPoint, h uint64) int {
		switch {
		case pt.hash < h:
			return -1
		case pt.hash > h:
			return 1
		}
		return 0
	})
	n := len(ring)
	for k := range n {
		if s := ring[(i+k)%n].s; s.eligible(skip) {
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
