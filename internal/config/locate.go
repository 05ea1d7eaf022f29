package config

import (
	"strings"
)

// lineIndex maps dotted key paths ("frontend.web.listen") to the line
// that defines them, for error messages about values the TOML decoder
// accepted but rsp does not. It reads the file the way a person does:
// table headers and "key = value" lines; a value spanning several lines
// (an array, a multi-line string) is skipped over.
type lineIndex map[string]int

func indexLines(src string) lineIndex {
	idx := lineIndex{}
	var table []string
	depth := 0    // open brackets of a multi-line array
	inMulti := "" // the closing quotes of a multi-line string we are in
	for i, line := range strings.Split(src, "\n") {
		n := i + 1
		if inMulti != "" {
			if strings.Contains(line, inMulti) {
				inMulti = ""
			}
			continue
		}
		line = strings.TrimSpace(stripComment(line))
		if depth > 0 {
			depth += strings.Count(line, "[") - strings.Count(line, "]")
			continue
		}
		switch {
		case line == "":
		case strings.HasPrefix(line, "[[") || strings.HasPrefix(line, "["):
			inner := strings.Trim(line, "[] \t")
			table = splitKey(inner)
			idx.set(table, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			path := append(append([]string{}, table...), splitKey(k)...)
			idx.set(path, n)
			v = strings.TrimSpace(v)
			for _, q := range []string{`"""`, `'''`} {
				if strings.HasPrefix(v, q) && !strings.Contains(v[3:], q) {
					inMulti = q
				}
			}
			if strings.HasPrefix(v, "[") {
				depth = strings.Count(v, "[") - strings.Count(v, "]")
			}
		}
	}
	return idx
}

// set records line for path and for each of its prefixes not seen yet:
// "[a.b.c]" is where a and a.b first appear, too.
func (idx lineIndex) set(path []string, line int) {
	for i := 1; i <= len(path); i++ {
		k := strings.Join(path[:i], ".")
		if _, ok := idx[k]; !ok {
			idx[k] = line
		}
	}
}

// line returns the line of path, or of its nearest enclosing table; 0 if
// none is known.
func (idx lineIndex) line(path ...string) int {
	for i := len(path); i > 0; i-- {
		if n, ok := idx[strings.Join(path[:i], ".")]; ok {
			return n
		}
	}
	return 0
}

// splitKey splits a dotted TOML key, dropping quotes and spaces.
func splitKey(k string) []string {
	var parts []string
	var b strings.Builder
	quote := byte(0)
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			b.WriteByte(c)
		case c == '"' || c == '\'':
			quote = c
		case c == '.':
			parts = append(parts, strings.TrimSpace(b.String()))
			b.Reset()
		case c == ' ' || c == '\t':
		default:
			b.WriteByte(c)
		}
	}
	return append(parts, strings.TrimSpace(b.String()))
}

// stripComment cuts a # comment that is not inside a string.
func stripComment(line string) string {
	quote := byte(0)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == '\\' && quote == '"':
			i++
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote = c
		case quote == 0 && c == '#':
			return line[:i]
		}
	}
	return line
}
