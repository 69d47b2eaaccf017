package core_test

import (
	"math"
	"slices"
	"testing"

	"github.com/blockmirror/blockmirror/mirror/core"
)

func TestQuorumSeq(t *testing.T) {
	for _, c := range []struct {
		acked []uint64
		k     int
		want  uint64
	}{
		{nil, 0, math.MaxUint64},
		{[]uint64{5}, 0, math.MaxUint64},
		{nil, 1, 0},
		{[]uint64{7}, 1, 7},
		{[]uint64{3, 9, 5}, 1, 9},
		{[]uint64{3, 9, 5}, 2, 5},
		{[]uint64{3, 9, 5}, 3, 3},
		{[]uint64{3, 9, 5}, 4, 0},
		{[]uint64{4, 4, 1}, 2, 4},
		{[]uint64{10, 2, 8, 6, 4, 12, 0, 14, 16, 1}, 3, 12},
	} {
		in := slices.Clone(c.acked)
		if got := core.QuorumSeq(c.acked, c.k); got != c.want {
			t.Errorf("QuorumSeq(%v, %d) = %d, want %d", c.acked, c.k, got, c.want)
		}
		if !slices.Equal(in, c.acked) {
			t.Errorf("QuorumSeq reordered its input %v to %v", in, c.acked)
		}
	}
}
