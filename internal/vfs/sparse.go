package vfs

// sparse is the contents of a MemFS file: a size and fixed-size chunks,
// absent chunks reading as zeroes. Clones share chunks copy-on-write, so a
// snapshot at every Sync costs a map copy, not a copy of the data.
type sparse struct {
	size   int64
	chunks map[int64]*chunk
	// owner marks the chunks this sparse may write in place; a clone
	// gives both sides a fresh owner, so either copies before writing.
	owner *byte
}

const chunkSize = 4 << 10

type chunk struct {
	owner *byte
	b     [chunkSize]byte
}

func newSparse() *sparse { return &sparse{chunks: map[int64]*chunk{}, owner: new(byte)} }

func (s *sparse) clone() *sparse {
	c := &sparse{size: s.size, chunks: make(map[int64]*chunk, len(s.chunks)), owner: new(byte)}
	for i, ch := range s.chunks {
		c.chunks[i] = ch
	}
	s.owner = new(byte)
	return c
}

// writable returns chunk i for writing, copying a shared one.
func (s *sparse) writable(i int64) *chunk {
	ch := s.chunks[i]
	switch {
	case ch == nil:
		ch = &chunk{owner: s.owner}
		s.chunks[i] = ch
	case ch.owner != s.owner:
		c := &chunk{owner: s.owner, b: ch.b}
		s.chunks[i] = c
		ch = c
	}
	return ch
}

// readAt copies [off, off+len(p)) into p, zeroes where nothing was written,
// and returns how many bytes lie below the size.
func (s *sparse) readAt(p []byte, off int64) int {
	if off >= s.size {
		return 0
	}
	n := int(min(int64(len(p)), s.size-off))
	for done := 0; done < n; {
		at := off + int64(done)
		i, o := at/chunkSize, int(at%chunkSize)
		m := min(chunkSize-o, n-done)
		if ch := s.chunks[i]; ch != nil {
			copy(p[done:done+m], ch.b[o:o+m])
		} else {
			clear(p[done : done+m])
		}
		done += m
	}
	return n
}

// writeAt stores p at off, growing the size to cover it.
func (s *sparse) writeAt(p []byte, off int64) {
	for done := 0; done < len(p); {
		at := off + int64(done)
		i, o := at/chunkSize, int(at%chunkSize)
		m := min(chunkSize-o, len(p)-done)
		copy(s.writable(i).b[o:o+m], p[done:done+m])
		done += m
	}
	s.size = max(s.size, off+int64(len(p)))
}

// zero makes [off, off+n) read as zeroes without changing the size
// (beyond the size there is nothing to clear).
func (s *sparse) zero(off, n int64) {
	end := min(off+n, s.size)
	for at := off; at < end; {
		i, o := at/chunkSize, at%chunkSize
		m := min(chunkSize-o, end-at)
		switch {
		case s.chunks[i] == nil:
		case o == 0 && m == chunkSize:
			delete(s.chunks, i)
		default:
			clear(s.writable(i).b[o : o+m])
		}
		at += m
	}
}

// truncate sets the size; bytes beyond a shrunken size are forgotten, so
// growing again reads zeroes there.
func (s *sparse) truncate(size int64) {
	if size < s.size {
		s.zero(size, s.size-size)
		for i := range s.chunks {
			if i*chunkSize >= size {
				delete(s.chunks, i)
			}
		}
	}
	s.size = size
}
