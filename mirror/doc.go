// Package mirror replicates a volume's journal from a primary to its
// mirrors: the drivers that run the replication core over the journal,
// the store and the transport.
//
// The replication is split in four packages:
//
//   - mirror/wire: the protocol's messages, their encoders (append to a
//     caller's buffer) and decoders (bounded, checksummed, fuzzed).
//   - mirror/core: the I/O-free state machines in the style of etcd raft's
//     RawNode (PrimaryCore, ReplicaCore) and every rule they decide by:
//     quorum, epoch history and fork point, the handshake answer, fencing,
//     promotion and demotion, the start of a resync. The drivers feed them
//     events (method calls) and act on the outputs they collect with
//     Ready. They never block, read clocks, start goroutines or do I/O;
//     time is a Tick counter. TestDependencyRules (deps_test.go) holds them to
//     that.
//   - mirror/resync: chunk hashing, the dirty bitmap and the race rule of
//     a resync.
//   - this package: the drivers (primary.go, peerlink.go, replica.go,
//     volume.go, node.go, resync_*.go, failover.go) that move bytes between
//     the cores and the journal, store, files and network.
//
// # Concurrency
//
// The cores are not safe for concurrent use; a driver calls them under its
// own mutex. Every driver method is safe for concurrent use unless its
// documentation says otherwise.
//
// # Session
//
// The primary opens a QUIC stream per mirror and sends Hello (naming the
// volume for a mirror host with several); the mirror
// checks it (CheckHello: version, volume UUID, size, epoch not lower than
// its own, compatible epoch history) and answers HelloReply with its
// journal's LastSeq, DurableSeq and AppliedSeq. A refusal carries CodeRefused
// or, when the primary's epoch is stale, CodeFenced. The primary then
// streams Records from LastSeq+1 (PrimaryReady.StartStreams) or, if that seq
// is no longer in its journal, reports the mirror in NeedResync. The mirror
// answers with cumulative Acks whenever a watermark advances; Flush asks it
// to become durable through a seq; Heartbeats are echoed unchanged so the
// sender can measure RTT.
//
// # Several volumes per process
//
// A primary process serving several volumes gives their Replications one
// ConnPool: one QUIC connection per mirror host, each volume with its own
// log stream (and resync/verify streams) on it. A stream has its own
// flow-control window, so a slow or resyncing volume fills only its own
// window; ending a session cancels the session's streams, never the shared
// connection (the pool closes it when its last user releases it, and drops
// it as soon as it dies). On the mirror side a ReplicaHost owns the one
// listener: it accepts every stream of every connection, reads its first
// frame and hands it to the volume it names — Hello.VolumeName for a log
// stream, StreamVolume (16) for a resync or verify stream, which attaches to
// the volume's active session on the same connection. A new session of a
// volume replaces the old one by cancelling the old session's streams.
//
// A session's records may travel on lanes (ReplicationOptions.Lanes,
// default DefaultLanes): lane 0 a second stream on the pooled connection,
// lane i > 0 a stream on the pool's lane-i connection to the same host
// (shared by the volumes too), each connection with its own congestion
// control, so a long or lossy path is not bounded by one congestion window
// or stalled by one connection's losses. A lane stream starts with
// LaneJoin (18) naming the volume, the token the session announced on its
// log stream (Lanes, 17) and its index; the mirror admits it only to that
// session of the same node and releases the lanes' frames in seq order
// (lanes.go), so acks and the core's invariants are those of one stream.
// NewReplica/Run keep serving one volume on a listener of its own (any
// volume name is accepted there).
//
//	primary process                       mirror host h1 (one listener)
//	  vol a ─┐                              ┌─▶ volume a
//	  vol b ─┼── ConnPool ══ one QUIC conn ══┤    (streams routed by name)
//	         │   streams: a-log, b-log,      └─▶ volume b
//	         │            a-resync ...
//	  vol c ─┴── ConnPool ══ one QUIC conn ══▶ mirror host h2: volume c
package mirror
