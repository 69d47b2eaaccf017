package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Size is a byte count written in the file as a string with an optional
// binary-unit suffix ("512", "64K", "10G", "1T"; a trailing "B" or "iB" is
// accepted, case does not matter) or as a plain TOML integer of bytes.
type Size int64

// Bytes returns s as a plain byte count.
func (s Size) Bytes() int64 { return int64(s) }

// String formats s with the largest binary unit that divides it exactly
// ("10G", "1536K", "1000").
func (s Size) String() string {
	v := int64(s)
	if v == 0 {
		return "0"
	}
	for _, u := range sizeUnits {
		if v%u.mult == 0 {
			return strconv.FormatInt(v/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(v, 10)
}

// MarshalText implements encoding.TextMarshaler (used when a Config is
// written back out as TOML).
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseSize.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"E", 1 << 60}, {"P", 1 << 50}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10},
}

// ErrSize is wrapped by every error ParseSize returns.
var ErrSize = errors.New("bad size")

// ParseSize parses a size such as "4096", "512K", "64M", "10G" or "1T"
// (binary units, so "1K" is 1024; K, M, G, T, P and E are known; an optional
// trailing "B" or "iB" is accepted, case-insensitively; spaces between the
// number and the unit are allowed). Negative numbers, fractions and values
// beyond math.MaxInt64 are errors wrapping ErrSize.
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	switch {
	case strings.HasSuffix(t, "IB"):
		t = t[:len(t)-2]
	case strings.HasSuffix(t, "B"):
		t = t[:len(t)-1]
	}
	mult := int64(1)
	if n := len(t); n > 0 {
		for _, u := range sizeUnits {
			if t[n-1] == u.suffix[0] {
				mult = u.mult
				t = strings.TrimSpace(t[:n-1])
				break
			}
		}
	}
	if t == "" || t[0] == '+' || t[0] == '-' {
		return 0, fmt.Errorf("%w %q: want a whole number of bytes with an optional K, M, G or T suffix, such as \"10G\"", ErrSize, s)
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("%w %q: too large", ErrSize, s)
		}
		return 0, fmt.Errorf("%w %q: want a whole number of bytes with an optional K, M, G or T suffix, such as \"10G\"", ErrSize, s)
	}
	if v > uint64(math.MaxInt64)/uint64(mult) {
		return 0, fmt.Errorf("%w %q: too large", ErrSize, s)
	}
	return int64(v) * mult, nil
}

// Duration is a time.Duration written in the file as a Go duration string
// ("5s", "250ms", "1m30s").
type Duration time.Duration

// Duration returns d as a time.Duration.
func (d Duration) Duration() time.Duration { return time.Duration(d) }

// String formats d like time.Duration does ("5s").
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with time.ParseDuration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("bad duration %q: want a number with a unit, such as \"5s\" or \"250ms\"", string(b))
	}
	*d = Duration(v)
	return nil
}
