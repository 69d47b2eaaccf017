package core

import "math"

// QuorumSeq returns the highest seq that at least k of the acked seqs have
// reached: the k-th largest of them (etcd raft's quorum rule, in
// quorum/majority.go, with K instead of a majority). k ≤ 0 needs nobody:
// MaxUint64. k > len(acked) cannot be met: 0. acked is not modified.
func QuorumSeq(acked []uint64, k int) uint64 {
	var stack [8]uint64
	s := stack[:0]
	if len(acked) > len(stack) {
		s = make([]uint64, 0, len(acked))
	}
	return quorumInPlace(append(s, acked...), k)
}

// quorumInPlace is QuorumSeq that reorders s (insertion sort: there are a
// handful of mirrors).
func quorumInPlace(s []uint64, k int) uint64 {
	if k <= 0 {
		return math.MaxUint64
	}
	if k > len(s) {
		return 0
	}
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j-1] < s[j]; j-- {
			s[j-1], s[j] = s[j], s[j-1]
		}
	}
	return s[k-1]
}
