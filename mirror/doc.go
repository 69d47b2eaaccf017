// Package mirror replicates a volume's journal from a primary to its
// mirrors.
//
// The package has three layers:
//
//   - wire.go: the replication protocol's messages, their encoders
//     (append to a caller's buffer) and decoders (bounded, checksummed).
//   - primary_core.go and replica_core.go: I/O-free state machines in the
//     style of etcd raft's RawNode. The driver feeds them events (method
//     calls) and acts on the outputs it collects with Ready. They never block,
//     read clocks, start goroutines or do I/O; time is a Tick counter.
//   - the drivers (primary.go, replica.go, volume.go) run the cores over the
//     real journal, store and QUIC transport.
//
// # Concurrency
//
// PrimaryCore and ReplicaCore are not safe for concurrent use; a driver
// calls them under its own mutex. Encoders and decoders are pure functions
// and safe for concurrent use on distinct buffers.
//
// # Buffer ownership
//
// Append* encoders append to the slice they are given and return it; they
// do not allocate when its capacity suffices. DecodeRecords makes the Data of
// each OpWrite record alias the payload it decodes (no copy): the records are
// valid only as long as the frame buffer is, and a caller that keeps them
// (e.g. until the journal append completes) must keep the buffer alive or
// copy. Other decoders copy what they return (strings, histories).
// PrimaryReady's slices belong to the core and are valid until the next Ready.
//
// # Wire format
//
// Each message is one transport frame: a 1-byte type (MsgType) and a 4-byte
// length, provided by the transport; this package defines the payloads.
// Integers are big endian. Strings are a u16 length + bytes (≤ MaxString).
// A history is a u32 count (≤ MaxHistory) + count × (u64 epoch, u64 first
// seq, u64 epoch id). Every payload except Records ends with a CRC32C (Castagnoli) of all
// its preceding bytes; in Records every record carries its own CRC32C
// (covering its header and data) so that no byte of a frame is unchecked
// without hashing large data twice. All constants named in these layouts
// (MsgType, Mode, AckLevel, PeerRole, ErrCode, Flag*, Max*, ProtoVersion)
// are part of the wire format.
//
//	Hello (1), primary → mirror:
//	| version u16 | role u8 | mode u8 | ack level u8 | flags u8 (0) | volume 16 B | size u64 |
//	| epoch u64 | lastSeq u64 | node str | volume name str | history | crc32c u32 |
//
//	StreamVolume (16), primary → mirror, first frame of every resync or
//	verify stream (a log stream starts with Hello instead), naming the
//	volume the stream belongs to on a connection shared by several volumes:
//	| name str | crc32c u32 |
//
//	HelloReply (2), mirror → primary (code 0 = accepted):
//	| version u16 | code u16 | flags u32 | role u8 | volume 16 B | size u64 | epoch u64 |
//	| lastSeq u64 | durableSeq u64 | appliedSeq u64 | node str | reason str | history | crc32c u32 |
//
//	Records (3), primary → mirror:
//	+-----------+----------------------------------------------------------------------+
//	| count u32 | count × record                                                       |
//	+-----------+----------------------------------------------------------------------+
//	record:
//	| epoch u64 | seq u64 | op u8 | offset u64 | length u32 | data (length B, OpWrite only) | crc32c u32 |
//
//	Ack (4):            | received u64 | written u64 | durable u64 | applied u64 | crc32c u32 |
//	Flush (5):          | through u64 | crc32c u32 |
//	Heartbeat (6) and
//	HeartbeatEcho (7):  | time ns u64 | lastSeq u64 | crc32c u32 |
//	Error (8):          | code u16 | message str | crc32c u32 |
//
// Decoders check every length against its maximum before allocating
// (record data ≤ MaxRecordData, records ≤ MaxRecordsPerFrame and ≤ what the
// payload can hold, history ≤ MaxHistory, strings ≤ MaxString) and fail with
// an error wrapping ErrMalformed (and ErrChecksum for CRC mismatches) on
// truncated, trailing, oversized or corrupt input; they never panic.
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
// it as soon as it dies). On the mirror side a MirrorHost owns the one
// listener: it accepts every stream of every connection, reads its first
// frame and hands it to the volume it names — Hello.VolumeName for a log
// stream, StreamVolume (16) for a resync or verify stream, which attaches to
// the volume's active session on the same connection. A new session of a
// volume replaces the old one by cancelling the old session's streams.
// NewMirror/Run keep serving one volume on a listener of its own (any
// volume name is accepted there).
//
//	primary process                       mirror host h1 (one listener)
//	  vol a ─┐                              ┌─▶ volume a
//	  vol b ─┼── ConnPool ══ one QUIC conn ══┤    (streams routed by name)
//	         │   streams: a-log, b-log,      └─▶ volume b
//	         │            a-resync ...
//	  vol c ─┴── ConnPool ══ one QUIC conn ══▶ mirror host h2: volume c
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
package mirror
