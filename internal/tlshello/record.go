package tlshello

// The TLS record layer (RFC 8446 §5.1, RFC 5246 §6.2), as far as a
// ClientHello needs it: every record is
//
//	type(1) = 22 handshake | legacy_record_version(2) = 0x0301..0x0304 | length(2) | fragment
//
// and a handshake message may be cut into the fragments of consecutive
// records at any byte.

const (
	recordHeaderLen = 5
	recordHandshake = 22
	// maxRecord bounds a record's length: 2^14 for plaintext, plus the
	// 256 bytes of expansion TLS 1.3 allows a protected record; no client
	// writes a longer one, and a longer one says the stream is garbage.
	maxRecord = 1<<14 + 256
)

// stream reads the handshake bytes carried by the records at the start
// of b, as one sequence: a record header is read, and checked, only when
// the next handshake byte lies past the current record. So every check,
// record or hello, is made in stream order, on bytes already seen; what
// Parse decides on a prefix of the stream it decides on the whole.
//
// Invariant: 0 <= off <= len(b); left > 0 only after a header was read,
// and then the next handshake byte, if present, is b[off].
type stream struct {
	b    []byte // what was peeked, at most MaxLen bytes
	off  int    // next unread byte of b
	left int    // handshake bytes of the current record not yet read
	n    int    // handshake bytes read so far
}

// record reads the header of the next record at b[off]. Each present byte
// is checked before the header is known to be whole, so that a stream
// that is not TLS is told at its first byte, not after five.
func (s *stream) record() error {
	h := s.b[s.off:]
	first := s.off == 0
	bad := errRecord
	if first {
		bad = ErrNotTLS // the client's first byte: a handshake record or not TLS at all
	}
	if len(h) > 0 && h[0] != recordHandshake {
		if first {
			return ErrNotTLS
		}
		return errRecordType // handshake messages must not interleave with other records
	}
	if len(h) > 1 && h[1] != 3 {
		return bad
	}
	if len(h) > 2 && (h[2] < 1 || h[2] > 4) {
		return bad // SSL 3.0 (0x0300) or a version that does not exist
	}
	if len(h) < recordHeaderLen {
		return ErrIncomplete
	}
	n := int(h[3])<<8 | int(h[4])
	switch {
	case n == 0:
		return errRecordEmpty // RFC 8446 §5.1: no zero-length handshake fragments
	case n > maxRecord:
		return errRecordLong
	}
	s.off += recordHeaderLen
	s.left = n
	return nil
}

// more makes b[off] the next handshake byte, crossing into the next
// record if the current one is used up.
func (s *stream) more() error {
	if s.left == 0 {
		if err := s.record(); err != nil {
			return err
		}
	}
	if s.off >= len(s.b) {
		return ErrIncomplete
	}
	return nil
}

// u8 reads one handshake byte.
func (s *stream) u8() (int, error) {
	if err := s.more(); err != nil {
		return 0, err
	}
	v := s.b[s.off]
	s.off++
	s.left--
	s.n++
	return int(v), nil
}

// uint reads a big-endian integer of size bytes (at most 3).
func (s *stream) uint(size int) (int, error) {
	v := 0
	for range size {
		x, err := s.u8()
		if err != nil {
			return 0, err
		}
		v = v<<8 | x
	}
	return v, nil
}

// skip passes over n handshake bytes, a fragment at a time.
func (s *stream) skip(n int) error {
	for n > 0 {
		if err := s.more(); err != nil {
			return err
		}
		k := min(n, s.left, len(s.b)-s.off)
		s.off += k
		s.left -= k
		s.n += k
		n -= k
	}
	return nil
}

// read fills dst with the next len(dst) handshake bytes.
func (s *stream) read(dst []byte) error {
	for len(dst) > 0 {
		if err := s.more(); err != nil {
			return err
		}
		k := copy(dst[:min(len(dst), s.left)], s.b[s.off:])
		s.off += k
		s.left -= k
		s.n += k
		dst = dst[k:]
	}
	return nil
}
