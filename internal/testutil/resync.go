package testutil

// Helpers for resync tests: slog field extraction, and extent bookkeeping
// (how many bytes and 64 KiB chunks a set of writes touched).

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// LogField returns key's value in a log/slog text line (quoted or bare),
// or "" when the line has no such key.
func LogField(line, key string) string {
	var v string
	switch {
	case strings.HasPrefix(line, key+"="):
		v = line[len(key)+1:]
	default:
		i := strings.Index(line, " "+key+"=")
		if i < 0 {
			return ""
		}
		v = line[i+len(key)+2:]
	}
	if strings.HasPrefix(v, `"`) {
		if q, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(q)
			return u
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// LogInt is [LogField] parsed as an integer.
func LogInt(line, key string) (int64, error) {
	s := LogField(line, key)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("log field %s=%q in %q: %w", key, s, line, err)
	}
	return n, nil
}

// Extent is a byte range [Off, Off+Len).
type Extent struct{ Off, Len int64 }

// Extents accumulates written byte ranges.
type Extents struct{ list []Extent }

// Add records a write of n bytes at off.
func (e *Extents) Add(off, n int64) { e.list = append(e.list, Extent{off, n}) }

// Merged returns the union of the recorded ranges, sorted and coalesced
// (touching ranges merge).
func (e *Extents) Merged() []Extent {
	l := slices.Clone(e.list)
	slices.SortFunc(l, func(a, b Extent) int { return cmpInt64(a.Off, b.Off) })
	var out []Extent
	for _, x := range l {
		if x.Len <= 0 {
			continue
		}
		if n := len(out); n > 0 && x.Off <= out[n-1].Off+out[n-1].Len {
			out[n-1].Len = max(out[n-1].Len, x.Off+x.Len-out[n-1].Off)
			continue
		}
		out = append(out, x)
	}
	return out
}

// Bytes is the size of the union of the recorded ranges.
func (e *Extents) Bytes() int64 {
	var n int64
	for _, x := range e.Merged() {
		n += x.Len
	}
	return n
}

// Chunks returns the indexes of the chunk-sized, chunk-aligned blocks
// that the recorded ranges touch, ascending.
func (e *Extents) Chunks(chunk int64) []int64 {
	var out []int64
	for _, x := range e.Merged() {
		first := x.Off / chunk
		last := (x.Off + x.Len - 1) / chunk
		if n := len(out); n > 0 && out[n-1] >= first {
			first = out[n-1] + 1
		}
		for c := first; c <= last; c++ {
			out = append(out, c)
		}
	}
	return out
}

// ChunkBytes is the size of the chunks the recorded ranges touch, on a
// disk of size bytes (the last chunk may be short).
func (e *Extents) ChunkBytes(chunk, size int64) int64 {
	var n int64
	for _, c := range e.Chunks(chunk) {
		n += min(chunk, size-c*chunk)
	}
	return n
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
