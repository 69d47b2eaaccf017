package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize parses sizes such as 4096, 512K, 64M, 10G, 1T (binary units;
// an optional trailing "B" or "iB" is accepted).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(t), "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return v * mult, nil
}

// sizeFlag is a flag.Value holding a size.
type sizeFlag struct{ v int64 }

func (f *sizeFlag) String() string {
	if f == nil || f.v == 0 {
		return ""
	}
	return strconv.FormatInt(f.v, 10)
}

func (f *sizeFlag) Set(s string) error {
	v, err := parseSize(s)
	if err != nil {
		return err
	}
	f.v = v
	return nil
}
