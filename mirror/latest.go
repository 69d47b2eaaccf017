package mirror

// offer puts v into ch, a channel of capacity 1 that holds only the newest
// request for its reader: a value still waiting there is taken out and
// merged with v first. It never blocks as long as offer is the only
// sender (callers serialise it under their mutex).
func offer[T any](ch chan T, v T, merge func(old, v T) T) {
	for {
		select {
		case ch <- v:
			return
		case old := <-ch:
			v = merge(old, v)
		}
	}
}

func maxSeq(old, v uint64) uint64 { return max(old, v) }
