// Package core holds the replication state machines of blockmirror and
// the rules they decide by. PrimaryCore (a primary: seqs, mirror acks,
// quorum, completions) and ReplicaCore (a mirror: the handshake, the
// record stream, what to persist, sync, apply and acknowledge) are
// I/O-free in the style of etcd raft's RawNode: a driver feeds them
// events as method calls and acts on what Ready returns. They never
// block, read clocks, start goroutines or do I/O; time is a Tick counter.
// The rules outside the two machines (the epoch history and fork point,
// quorum, the handshake answers, fencing, promotion and demotion, the
// start of a resync) are pure functions over their inputs.
//
// Neither machine is safe for concurrent use: a driver calls it under its
// own mutex. PrimaryReady's slices belong to the core and are valid until
// the next Ready.
//
// # Acknowledgement rules (PrimaryCore)
//
// Let K = SyncAcks and the quorum seq at a level be the K-th largest ack at
// that level over all mirrors (etcd raft's quorum rule with K instead of a
// majority).
//
//   - sync mode: a write completes once written locally (LocalDone) and the
//     quorum seq at the ack level reaches its seq. A FUA write or a FLUSH
//     additionally needs the local journal durable through its seq (a
//     flush's seq is the last seq assigned when it arrived) and the quorum
//     seq at the durable level. A request still waiting for mirrors after
//     AckTimeoutTicks fails with ErrNoQuorum (EIO: content undefined; the
//     data may already be local and may still reach mirrors).
//   - sync mode with AllowDegraded: with only n < K mirrors in sync, K is
//     taken as n (n = 0: local alone), i.e. a request completes once every
//     in-sync mirror acked; an in-sync mirror that does not ack within
//     AckTimeoutTicks is demoted to catching-up, so requests never fail for
//     lack of acks. Status reports Degraded.
//   - async mode: a write completes once local. If at least K mirrors are in
//     sync and MaxLagTicks > 0, completions of writes are held while the
//     oldest seq the K-th best mirror has not acked at the ack level was
//     proposed more than MaxLagTicks ago. With fewer than K mirrors in sync
//     there is no throttle (Degraded). FUA and FLUSH need local durability
//     only: the recovery point on losing the primary is the mirrors' lag
//     (bounded by MaxLagTicks while not degraded).
//   - a peer epoch higher than ours fences the primary: every pending and
//     later request fails with ErrFenced (the driver also records the fence
//     in the metadata, so it survives a restart).
//   - a request the driver gives up on (Forget) leaves without a completion.
//
// A mirror is catching-up after a handshake until it acks the seq that was
// last when it connected, then in-sync. Only in-sync mirrors count for the
// degraded rules; acks of every mirror count for quorum seqs.
//
// # Mirror rules (ReplicaCore)
//
// Records are accepted only in a session, with seq = last received + 1, an
// epoch not below the previous record's, not above the session's and equal
// to what the primary's history says for that seq; a violation is
// ErrProtocol and nothing of the batch is accepted. Received: accepted into
// memory; Written: appended to the journal; Durable: fdatasync'd. At ack
// level durable the mirror syncs after every batch (one sync in flight at a
// time: group commit); otherwise on Flush and at least every SyncEveryTicks.
// Only durable records are released to the store (ApplyThrough), so after a
// power loss the store, replayed from its checkpoint through the durable
// journal, is always a write-order prefix of the primary's history.
package core
