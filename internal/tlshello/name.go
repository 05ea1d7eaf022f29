package tlshello

import "strings"

// checkHost reads the n bytes of a host_name and checks that they are a
// DNS host name (RFC 1123 §2.1, RFC 6066 §3): labels of 1-63 letters,
// digits and hyphens, neither first nor last a hyphen, joined by dots;
// 253 bytes at most, one trailing dot allowed (and dropped by result);
// and not an IP literal, which RFC 6066 forbids: a name whose last label
// is all digits is one (1.2.3.4), or would resolve as one. IPv6 literals
// fail on their colons. The bytes are checked as they are read, across
// record boundaries, with nothing copied.
func checkHost(s *stream, n int) error {
	switch {
	case n == 0:
		return errNameEmpty
	case n > 254:
		return errNameLong
	}
	label := 0           // bytes of the current label so far
	numeric := true      // the current label is digits only
	lastNumeric := false // the last complete label was
	prev := 0            // the byte before c
	for range n {
		c, err := s.u8()
		if err != nil {
			return err
		}
		switch {
		case c == '.':
			if label == 0 {
				return errNameLabel
			}
			if prev == '-' {
				return errNameHyphen
			}
			lastNumeric = numeric
			label, numeric, prev = 0, true, c
			continue
		case c == '-':
			if label == 0 {
				return errNameHyphen
			}
			numeric = false
		case '0' <= c && c <= '9':
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
			numeric = false
		default:
			return errNameChar
		}
		label++
		if label > 63 {
			return errNameLabel
		}
		prev = c
	}
	if label > 0 { // no trailing dot: the last label ends here
		if n > 253 {
			return errNameLong
		}
		if prev == '-' {
			return errNameHyphen
		}
		lastNumeric = numeric
	}
	if lastNumeric {
		return errNameIPLiteral
	}
	return nil
}

// Match reports whether name, a server name as Parse returns it, matches
// pattern: either a name, compared without regard to case, or
// "*.example.com", which matches a name with exactly one more label
// ("a.example.com", not "example.com" nor "a.b.example.com"), as a
// certificate's wildcard does (RFC 6125 §6.4.3). A '*' anywhere else is
// an ordinary byte, and an empty name (no SNI) matches nothing: that
// client goes to the default backend.
func Match(pattern, name string) bool {
	if name == "" {
		return false
	}
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		i := strings.IndexByte(name, '.')
		return i > 0 && suffix != "" && strings.EqualFold(name[i+1:], suffix)
	}
	return strings.EqualFold(pattern, name)
}
