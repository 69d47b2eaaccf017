package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// decoder turns the TOML library's generic tree into a Config, collecting
// every problem (unknown keys, wrong types, bad sizes and durations) rather
// than stopping at the first. decode fails only on TOML syntax errors; the
// other problems are in d.problems, and the Config holds what could be
// decoded.
type decoder struct {
	data     []byte
	src      *source
	problems []Problem
}

func newDecoder(data []byte, name string) *decoder {
	return &decoder{data: data, src: &source{file: name}}
}

var (
	sizeType     = reflect.TypeFor[Size]()
	durationType = reflect.TypeFor[Duration]()
)

func (d *decoder) problem(key, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		File: d.src.file, Line: d.src.line(key), Key: key, Msg: fmt.Sprintf(format, args...),
	})
}

func (d *decoder) err() error {
	if len(d.problems) == 0 {
		return nil
	}
	sortProblems(d.problems)
	return &Error{Problems: d.problems}
}

func sortProblems(ps []Problem) {
	order := func(p Problem) int {
		if p.Line == 0 {
			return math.MaxInt
		}
		return p.Line
	}
	sort.SliceStable(ps, func(i, j int) bool { return order(ps[i]) < order(ps[j]) })
}

func (d *decoder) decode() (*Config, error) {
	var tree map[string]any
	if _, err := toml.Decode(string(d.data), &tree); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			d.problems = append(d.problems, Problem{File: d.src.file, Line: pe.Position.Line, Msg: "TOML syntax: " + pe.Message})
		} else {
			d.problems = append(d.problems, Problem{File: d.src.file, Msg: "TOML: " + err.Error()})
		}
		return nil, d.err()
	}
	d.src.lines = scanLines(d.data)
	c := &Config{src: d.src}
	d.table(tree, reflect.ValueOf(c).Elem(), "")
	if _, ok := tree["node"]; !ok {
		c.Node.applyDefaults(func(string) bool { return false })
	}
	return c, nil
}

// fieldsOf maps the toml tag of each exported field of struct type t to
// the field's index.
func fieldsOf(t reflect.Type) (map[string]int, []string) {
	m := map[string]int{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		m[tag] = i
		names = append(names, tag)
	}
	return m, names
}

// table fills struct rv from tbl; path is the table's key path.
func (d *decoder) table(tbl map[string]any, rv reflect.Value, path string) {
	fields, names := fieldsOf(rv.Type())
	keys := make([]string, 0, len(tbl))
	for k := range tbl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		key := join(path, k)
		i, ok := fields[k]
		if !ok {
			if s := suggest(k, names); s != "" {
				d.problem(key, "unknown key %s — did you mean %s?", key, s)
			} else {
				d.problem(key, "unknown key %s (known keys here: %s)", key, strings.Join(names, ", "))
			}
			continue
		}
		d.value(tbl[k], rv.Field(i), key)
	}
	has := func(k string) bool { _, ok := tbl[k]; return ok }
	switch p := rv.Addr().Interface().(type) {
	case *NodeConfig:
		p.applyDefaults(has)
	case *VolumeConfig:
		p.applyDefaults(has)
	}
}

// value stores v, found at key, in rv.
func (d *decoder) value(v any, rv reflect.Value, key string) {
	switch t := rv.Type(); {
	case t == sizeType:
		switch x := v.(type) {
		case string:
			n, err := ParseSize(x)
			if err != nil {
				d.problem(key, "%s: %v", key, err)
				return
			}
			rv.SetInt(n)
		case int64:
			if x < 0 {
				d.problem(key, "%s: size %d is negative", key, x)
				return
			}
			rv.SetInt(x)
		default:
			d.problem(key, "%s: want a size such as \"10G\", got %s", key, describe(v))
		}
	case t == durationType:
		x, ok := v.(string)
		if !ok {
			d.problem(key, "%s: want a duration such as \"5s\", got %s", key, describe(v))
			return
		}
		dur, err := time.ParseDuration(strings.TrimSpace(x))
		if err != nil {
			d.problem(key, "%s: bad duration %q: want a number with a unit, such as \"5s\" or \"250ms\"", key, x)
			return
		}
		if dur < 0 {
			d.problem(key, "%s: duration %s is negative", key, x)
			return
		}
		rv.SetInt(int64(dur))
	case t.Kind() == reflect.String:
		x, ok := v.(string)
		if !ok {
			d.problem(key, "%s: want a string, got %s", key, describe(v))
			return
		}
		rv.SetString(x)
	case t.Kind() == reflect.Bool:
		x, ok := v.(bool)
		if !ok {
			d.problem(key, "%s: want true or false, got %s", key, describe(v))
			return
		}
		rv.SetBool(x)
	case t.Kind() == reflect.Int:
		x, ok := v.(int64)
		if !ok {
			d.problem(key, "%s: want an integer, got %s", key, describe(v))
			return
		}
		if x < math.MinInt32 || x > math.MaxInt32 {
			d.problem(key, "%s: %d is out of range", key, x)
			return
		}
		rv.SetInt(x)
	case t.Kind() == reflect.Struct:
		tbl, ok := v.(map[string]any)
		if !ok {
			d.problem(key, "%s: want a table, got %s", key, describe(v))
			return
		}
		d.table(tbl, rv, key)
	case t.Kind() == reflect.Slice:
		var elems []any
		switch x := v.(type) {
		case []any:
			elems = x
		case []map[string]any:
			for _, m := range x {
				elems = append(elems, m)
			}
		default:
			d.problem(key, "%s: want an array, got %s", key, describe(v))
			return
		}
		s := reflect.MakeSlice(t, len(elems), len(elems))
		for i, e := range elems {
			d.value(e, s.Index(i), key+"["+strconv.Itoa(i)+"]")
		}
		rv.Set(s)
	default:
		panic("config: no decoding for field type " + t.String())
	}
}

// describe names a TOML value's type for messages, with the value when short.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 40 {
			return "a string"
		}
		return "string " + strconv.Quote(x)
	case int64:
		return "integer " + strconv.FormatInt(x, 10)
	case float64:
		return "float " + strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(x)
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	default:
		return "a date/time"
	}
}

// suggest returns the known name closest to k when it is close enough to be
// a likely typo.
func suggest(k string, names []string) string {
	best, bestD := "", 0
	for _, n := range names {
		dist := editDistance(strings.ToLower(k), n)
		if best == "" || dist < bestD {
			best, bestD = n, dist
		}
	}
	limit := 2
	if len(k) <= 4 {
		limit = 1
	}
	if best == "" || bestD > limit {
		// "sync-acks" or "SyncAcks" for "sync_acks"
		norm := strings.ToLower(strings.ReplaceAll(strings.ReplaceAll(k, "-", ""), "_", ""))
		for _, n := range names {
			if strings.ReplaceAll(n, "_", "") == norm {
				return n
			}
		}
		return ""
	}
	return best
}

// editDistance is the Damerau-Levenshtein (optimal string alignment)
// distance between a and b.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
