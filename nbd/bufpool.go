package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from power-of-two size classes from 4 KiB up to
// MaxRequestLen; each class is a sync.Pool of *[]byte (pointers, so Put does
// not allocate).
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 25 // 32 MiB == MaxRequestLen
	numBufClass = maxBufShift - minBufShift + 1
)

type bufPool struct {
	classes [numBufClass]sync.Pool
}

// class returns the size-class index for a buffer of n bytes (n ≤ MaxRequestLen).
func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of length n. The caller owns it until put.
func (p *bufPool) get(n int) *[]byte {
	c := bufClass(n)
	if v := p.classes[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// put returns b to its class. b must have come from get.
func (p *bufPool) put(b *[]byte) {
	c := bufClass(cap(*b))
	if c < 0 || c >= numBufClass || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}
