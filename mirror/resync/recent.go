package resync

// RecentExtents remembers the extents of the last applied records, so a
// resync chunk tagged T can be checked against records > T applied since.
type RecentExtents struct {
	buf  [8192]appliedExtent
	n    int // entries written in total
	base uint64
}

type appliedExtent struct {
	seq      uint64
	off, end uint64
}

// Add records that the record seq, touching [off, off+n), was applied.
func (r *RecentExtents) Add(seq, off uint64, n uint32) {
	r.buf[r.n%len(r.buf)] = appliedExtent{seq: seq, off: off, end: off + uint64(n)}
	r.n++
}

// Reset forgets every extent (the journal restarted).
func (r *RecentExtents) Reset() { r.n = 0 }

// Overlaps reports whether a record with seq in (after, through] that
// touches [off, end) may have been applied; true when the ring no longer
// reaches back to after+1.
func (r *RecentExtents) Overlaps(after, through, off, end uint64) bool {
	if after >= through {
		return false
	}
	kept := min(r.n, len(r.buf))
	if kept == 0 {
		return true
	}
	oldest := r.buf[(r.n-kept)%len(r.buf)].seq
	if oldest > after+1 {
		return true
	}
	for i := r.n - 1; i >= r.n-kept; i-- {
		e := r.buf[i%len(r.buf)]
		if e.seq <= after {
			break
		}
		if e.seq <= through && e.off < end && off < e.end {
			return true
		}
	}
	return false
}
