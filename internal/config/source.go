package config

import (
	"strconv"
	"strings"
)

// source remembers where each key of a parsed file is. Keys are paths in
// the form the messages use: "node.admin", "volumes[1].mirrors[0].address",
// "volumes[0].allow[2]"; a table header line is recorded under the table's
// own path ("volumes[1]").
type source struct {
	file  string
	lines map[string]int
}

// line returns the line of key, or of its closest enclosing key or table
// that has one (a key left to its default points at its table's header),
// or 0.
func (s *source) line(key string) int {
	if s == nil {
		return 0
	}
	for key != "" {
		if l, ok := s.lines[key]; ok {
			return l
		}
		key = parentKey(key)
	}
	return 0
}

// parentKey strips the last component of a key path: "a[1].b" → "a[1]",
// "a[1]" → "a", "a" → "".
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		return key[:i]
	}
	return ""
}

// scanLines records the line of every key, table header and array element
// of data, which the TOML library has already parsed successfully (so the
// scanner can be forgiving: on anything unexpected it skips ahead, and a
// key it misses just gets its table's line in messages).
func scanLines(data []byte) map[string]int {
	s := &scanner{src: data, line: 1, out: map[string]int{}, arrays: map[string]int{}}
	s.document()
	return s.out
}

type scanner struct {
	src    []byte
	pos    int
	line   int
	out    map[string]int
	arrays map[string]int // array-of-tables path → elements seen so far
}

func (s *scanner) record(key string, line int) {
	if _, ok := s.out[key]; !ok {
		s.out[key] = line
	}
}

func (s *scanner) eof() bool { return s.pos >= len(s.src) }

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.pos]
}

func (s *scanner) advance() {
	if s.src[s.pos] == '\n' {
		s.line++
	}
	s.pos++
}

// skipSpace skips blanks, and with newlines also line breaks and comments.
func (s *scanner) skipSpace(newlines bool) {
	for !s.eof() {
		switch c := s.peek(); {
		case c == ' ' || c == '\t' || c == '\r':
			s.advance()
		case c == '\n' && newlines:
			s.advance()
		case c == '#':
			for !s.eof() && s.peek() != '\n' {
				s.advance()
			}
		default:
			return
		}
	}
}

func (s *scanner) skipLine() {
	for !s.eof() && s.peek() != '\n' {
		s.advance()
	}
}

func (s *scanner) document() {
	table := ""
	for {
		s.skipSpace(true)
		if s.eof() {
			return
		}
		start, line := s.pos, s.line
		switch {
		case s.peek() == '[' && s.pos+1 < len(s.src) && s.src[s.pos+1] == '[':
			s.pos += 2
			parts := s.keyParts()
			if !s.expectClose(2) {
				s.skipLine()
				table = ""
				continue
			}
			table = s.resolve(parts, true, line)
		case s.peek() == '[':
			s.pos++
			parts := s.keyParts()
			if !s.expect(']') {
				s.skipLine()
				table = ""
				continue
			}
			table = s.resolve(parts, false, line)
		default:
			s.keyValue(table)
			if s.pos == start { // not a key: give up on this line
				s.skipLine()
			}
		}
	}
}

// resolve turns a header's key parts into a path: every prefix naming an
// array of tables refers to its latest element; an [[array]] header opens a
// new element.
func (s *scanner) resolve(parts []string, array bool, line int) string {
	path := ""
	for i, p := range parts {
		path = join(path, p)
		if i == len(parts)-1 {
			break
		}
		if n := s.arrays[path]; n > 0 {
			path += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	s.record(path, line)
	if array {
		n := s.arrays[path]
		s.arrays[path] = n + 1
		path += "[" + strconv.Itoa(n) + "]"
		s.record(path, line)
	}
	return path
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// expectClose reads n closing brackets ("]]" after an array-of-tables
// header), stopping at the first one missing.
func (s *scanner) expectClose(n int) bool {
	for range n {
		if !s.expect(']') {
			return false
		}
	}
	return true
}

func (s *scanner) expect(c byte) bool {
	s.skipSpace(false)
	if s.peek() != c {
		return false
	}
	s.advance()
	return true
}

// keyParts reads a (possibly dotted, possibly quoted) key.
func (s *scanner) keyParts() []string {
	var parts []string
	for {
		s.skipSpace(false)
		var part string
		switch s.peek() {
		case '"', '\'':
			part = s.str()
		default:
			start := s.pos
			for !s.eof() && isBare(s.peek()) {
				s.pos++
			}
			if s.pos == start {
				return parts
			}
			part = string(s.src[start:s.pos])
		}
		parts = append(parts, part)
		s.skipSpace(false)
		if s.peek() != '.' {
			return parts
		}
		s.pos++
	}
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// keyValue reads KEY = VALUE inside table.
func (s *scanner) keyValue(table string) {
	line := s.line
	parts := s.keyParts()
	if len(parts) == 0 || !s.expect('=') {
		return
	}
	path := table
	for _, p := range parts {
		path = join(path, p)
	}
	s.record(path, line)
	s.skipSpace(false)
	s.value(path)
}

// value skips a value, recording array elements and inline-table keys.
func (s *scanner) value(path string) {
	switch s.peek() {
	case '"', '\'':
		s.str()
	case '[':
		s.advance()
		for i := 0; ; i++ {
			s.skipSpace(true)
			if s.eof() || s.peek() == ']' {
				break
			}
			start := s.pos
			s.record(path+"["+strconv.Itoa(i)+"]", s.line)
			s.value(path + "[" + strconv.Itoa(i) + "]")
			s.skipSpace(true)
			if s.peek() == ',' {
				s.advance()
			} else if s.pos == start {
				break
			}
		}
		if !s.eof() {
			s.advance()
		}
	case '{':
		s.advance()
		for {
			s.skipSpace(true)
			if s.eof() || s.peek() == '}' {
				break
			}
			start := s.pos
			s.keyValue(path)
			s.skipSpace(true)
			if s.peek() == ',' {
				s.advance()
			} else if s.pos == start {
				break
			}
		}
		if !s.eof() {
			s.advance()
		}
	default:
		for !s.eof() {
			switch s.peek() {
			case ',', ']', '}', '\n', '#', ' ', '\t', '\r':
				return
			}
			s.advance()
		}
	}
}

// str reads a basic, literal or multi-line string and returns its text
// (escapes in basic strings are kept as written, which is enough for keys).
func (s *scanner) str() string {
	q := s.peek()
	if s.pos+2 < len(s.src) && s.src[s.pos+1] == q && s.src[s.pos+2] == q {
		s.pos += 3
		start := s.pos
		for !s.eof() {
			if q == '"' && s.peek() == '\\' && s.pos+1 < len(s.src) {
				s.advance()
				s.advance()
				continue
			}
			if s.peek() == q && s.pos+2 < len(s.src) && s.src[s.pos+1] == q && s.src[s.pos+2] == q {
				end := s.pos
				s.pos += 3
				for s.peek() == q { // up to two quotes may close the string
					s.pos++
					end++
				}
				return string(s.src[start:end])
			}
			s.advance()
		}
		return string(s.src[start:])
	}
	s.pos++
	start := s.pos
	for !s.eof() && s.peek() != '\n' {
		c := s.peek()
		if q == '"' && c == '\\' && s.pos+1 < len(s.src) {
			s.pos += 2
			continue
		}
		if c == q {
			v := string(s.src[start:s.pos])
			s.pos++
			return v
		}
		s.pos++
	}
	return string(s.src[start:s.pos])
}
