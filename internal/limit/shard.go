package limit

import (
	"encoding/binary"
	"sync"
	"unsafe"
)

// key is an address or a masked prefix in 16-byte form; IPv4 is kept as
// ::ffff:a.b.c.d. A fixed array hashes fast and holds no pointer, so the
// maps cost the garbage collector nothing to scan.
type key [16]byte

// addrEntry is one client address. tat is the theoretical arrival time of
// its next connection (GCRA): the bucket is full when tat <= now, and each
// admitted connection moves tat one interval later. conns counts live
// connections, only when PerAddr is set.
type addrEntry struct {
	tat   int64
	conns int32
}

// idle reports whether e says nothing that a missing entry would not: no
// live connection and a full bucket.
func (e addrEntry) idle(now int64) bool { return e.conns == 0 && e.tat <= now }

type shardState struct {
	mu       sync.Mutex
	addrs    map[key]addrEntry
	prefixes map[key]int32 // live connections; an entry exists only while > 0
	now      int64         // the latest clock seen by this shard
	peak     int           // most entries held since the maps were last rebuilt
	takes    uint32        // Takes that found room, counting to the next sweep
}

// cacheLine pads shards apart, so loops locking neighbouring shards do not
// bounce one cache line between cores.
const cacheLine = 64

type shard struct {
	shardState
	_ [(cacheLine - unsafe.Sizeof(shardState{})%cacheLine) % cacheLine]byte
}

const (
	// Every sweepEvery-th Take in a shard looks at sweepPerTake entries to
	// drop idle ones: two entries per Take on average, enough that idle
	// entries go within a few passes of the shard's traffic, and starting
	// a walk of the map (a random number, an iterator) only every fourth
	// time, so that a known source pays little.
	sweepEvery   = 4
	sweepPerTake = 8
	// evictScan bounds the entries a new source in a full shard looks at
	// for an idle one to evict before it is refused.
	evictScan = 32
	// shrinkMin is the high-water mark below which a shard does not bother
	// rebuilding its maps: a few KiB are not worth the copying.
	shrinkMin = 256
	// emptyMin is the high-water mark above which a shard that empties
	// frees its maps: one group of a Go map holds 8 entries, and a shard
	// that never outgrew it has nothing to give back.
	emptyMin = 8
)

func (s *shard) init() {
	s.addrs = make(map[key]addrEntry)
	s.prefixes = make(map[key]int32)
}

func (l *Limiter) shardOf(k key) *shard { return &l.shards[l.shardIndex(k)] }

func (l *Limiter) shardIndex(k key) uint64 {
	hi := binary.LittleEndian.Uint64(k[:8])
	lo := binary.LittleEndian.Uint64(k[8:])
	// Seeded, so that a client cannot pick addresses that all fall in one
	// shard and fill its share. The top bits of a product depend on every
	// bit of the multiplicand, so the shard index is taken from the top.
	h := ((lo^l.seed1)*0x9e3779b97f4a7c15 ^ hi ^ l.seed0) * 0xbf58476d1ce4e5b9
	return h >> l.shardShift
}

func (s *shard) len() int { return len(s.addrs) + len(s.prefixes) }

// advance moves the shard's clock to now if now is later. Loops read the
// clock separately, so one may pass a now a little behind another's.
func (s *shard) advance(now int64) {
	if now > s.now {
		s.now = now
	}
}

// room reports whether the shard may take one more entry, evicting idle
// address entries to make it if the shard is at its share.
func (s *shard) room(share int) bool {
	if s.len() < share {
		return true
	}
	s.sweep(evictScan)
	return s.len() < share
}

// tick counts a Take and, every sweepEvery of them, drops idle entries.
func (s *shard) tick() {
	s.takes++
	if s.takes%sweepEvery == 0 {
		s.sweep(sweepPerTake)
	}
}

// grew records a new entry in the high-water mark.
func (s *shard) grew() {
	s.peak = max(s.peak, s.len())
}

// put stores e for k, or drops k if e is idle.
func (s *shard) put(k key, e addrEntry) {
	if e.idle(s.now) {
		delete(s.addrs, k)
		s.shrink()
		return
	}
	s.addrs[k] = e
}

// sweep looks at up to n address entries (all of them if n < 0) and drops
// the idle ones. Go starts each range over a map at a random place, so
// successive small sweeps sample the whole map.
func (s *shard) sweep(n int) int {
	dropped := 0
	for k, e := range s.addrs {
		if n == 0 {
			break
		}
		n--
		if e.idle(s.now) {
			delete(s.addrs, k)
			dropped++
		}
	}
	if dropped > 0 {
		s.shrink()
	}
	return dropped
}

// shrink copies the maps into fresh ones when they hold under a quarter of
// their high-water mark, or nothing at all: a Go map keeps its buckets
// after deletes, so without this a burst of clients would hold its memory
// for good. Each rebuild copies at most a third of the entries that were
// deleted to trigger it, so the cost per delete stays constant.
func (s *shard) shrink() {
	n := s.len()
	switch {
	case n == 0 && s.peak > emptyMin:
	case s.peak >= shrinkMin && n < s.peak/4:
	default:
		return
	}
	addrs := make(map[key]addrEntry, len(s.addrs))
	for k, e := range s.addrs {
		addrs[k] = e
	}
	prefixes := make(map[key]int32, len(s.prefixes))
	for k, c := range s.prefixes {
		prefixes[k] = c
	}
	s.addrs, s.prefixes, s.peak = addrs, prefixes, n
}
