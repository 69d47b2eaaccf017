package mirror

// Journal pressure: the journal's size bound (NodeOptions.JournalMax)
// holds when a segment starts only if the store's checkpoint releases the
// oldest records (journal.Options.OnPressure). The journal asks from its
// flush goroutine, which must not block, so the node passes the request
// on as a kick to whoever checkpoints its store: the primary's volume or
// the mirror's applier.

// journalPressure is the journal's OnPressure: a non-droppable consumer
// holds records past the bound. Only the store is one.
func (n *Node) journalPressure(consumer string, through uint64) {
	if consumer != storeConsumer {
		return
	}
	if kick := n.cpKick.Load(); kick != nil {
		n.log.Info("journal over its size bound: checkpointing the store early to release it", "through", through)
		(*kick)(through)
	}
}

// setCheckpointKick sets what journalPressure calls with the seq the
// journal needs released (nil: nothing). kick must not block.
func (n *Node) setCheckpointKick(kick func(through uint64)) {
	if kick == nil {
		n.cpKick.Store(nil)
		return
	}
	n.cpKick.Store(&kick)
}

// kickChannel returns a non-blocking kick of ch (capacity 1).
func kickChannel(ch chan struct{}) func(uint64) {
	return func(uint64) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
