// Package wire holds blockmirror's replication protocol: the messages a
// primary and its mirrors exchange, their encoders and their decoders. It
// does no I/O; a transport frame carries each message.
//
// # Buffer ownership
//
// Append* encoders append to the slice they are given and return it; they
// do not allocate when its capacity suffices. DecodeRecords makes the Data of
// each OpWrite record alias the payload it decodes (no copy): the records are
// valid only as long as the frame buffer is, and a caller that keeps them
// (e.g. until the journal append completes) must keep the buffer alive or
// copy. Other decoders copy what they return (strings, histories).
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
//	Lanes (17), primary → mirror on the log stream, only to a mirror whose
//	HelloReply set FlagLanes: from now on records travel only on the
//	session's count lane streams, the first of them holding seq from:
//	| token u64 | from u64 | count u8 | crc32c u32 |
//
//	LaneJoin (18), primary → mirror, first frame of a lane stream (only
//	Records follow it), naming the volume, the session's token and the
//	lane (index < count):
//	| name str | token u64 | index u8 | crc32c u32 |
//
// Decoders check every length against its maximum before allocating
// (record data ≤ MaxRecordData, records ≤ MaxRecordsPerFrame and ≤ what the
// payload can hold, history ≤ MaxHistory, strings ≤ MaxString) and fail with
// an error wrapping ErrMalformed (and ErrChecksum for CRC mismatches) on
// truncated, trailing, oversized or corrupt input; they never panic.
package wire
