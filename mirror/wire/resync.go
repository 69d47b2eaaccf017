package wire

import "fmt"

// Resync messages. The type values are part of the wire format. ResyncBegin
// travels on the log stream (ordered with records); the others on a
// resync stream of their own, so bulk data never delays live records.
const (
	MsgResyncBegin     MsgType = 9  // primary → mirror (log stream)
	MsgSyncHashReq     MsgType = 10 // primary → mirror
	MsgSyncHashes      MsgType = 11 // mirror → primary
	MsgSyncChunk       MsgType = 12 // primary → mirror
	MsgSyncChunkAck    MsgType = 13 // mirror → primary
	MsgSyncComplete    MsgType = 14 // primary → mirror
	MsgSyncCompleteAck MsgType = 15 // mirror → primary
)

// Resync limits (part of the wire format).
const (
	// MaxSyncChunk bounds the resync chunk size.
	MaxSyncChunk = 4 << 20
	// MaxSyncHashes bounds the hashes in one SyncHashes message.
	MaxSyncHashes = 1 << 16
	// MaxSyncAcks bounds the entries of one SyncChunkAck.
	MaxSyncAcks = 1 << 16
	// HashLen is the size of one chunk hash (xxh3-128).
	HashLen = 16
)

// ResyncBegin tells a mirror that a resync starts: its store is
// inconsistent until the primary completes the resync, and the records
// that follow on the log stream start at From. With Reset the mirror
// discards its journal (after applying what it holds) and continues at
// From; without it, From is its own next seq (a resumed resync).
//
//	| from u64 | reset u8 | chunk u32 | crc32c u32 |
type ResyncBegin struct {
	From  uint64
	Reset bool
	Chunk uint32
}

// SyncHashReq asks for the hashes of [Off, Off+Len): one summary hash of
// the range (Leaves false) or one hash per chunk (Leaves true).
//
//	| off u64 | len u64 | leaves u8 | crc32c u32 |
type SyncHashReq struct {
	Off, Len uint64
	Leaves   bool
}

// SyncHashes answers a SyncHashReq.
//
//	| off u64 | len u64 | leaves u8 | count u32 | count × 16 B | crc32c u32 |
type SyncHashes struct {
	Off, Len uint64
	Leaves   bool
	Hashes   [][HashLen]byte
}

// SyncChunk carries one chunk of the primary's store as it was after
// every record ≤ Tag that touches it (and before any later one). Zero
// chunks carry no data.
//
//	| off u64 | len u32 | tag u64 | zero u8 | data (len B unless zero) | crc32c u32 |
type SyncChunk struct {
	Off  uint64
	Len  uint32
	Tag  uint64
	Zero bool
	Data []byte // aliases the frame buffer after decoding
}

// SyncChunkResult is the mirror's verdict on one chunk: OK once it is in
// the mirror's store; not OK when a later record already applied there
// makes it stale (the primary sends it again).
type SyncChunkResult struct {
	Off uint64
	Len uint32
	OK  bool
}

// SyncChunkAck carries chunk results. A non-durable ack frees the
// primary's window (the chunks are written, or stale); a durable one,
// sent after the mirror synced its store, confirms OK chunks so the
// primary may clear them from the dirty bitmap.
//
//	| durable u8 | count u32 | count × (off u64 | len u32 | ok u8) | crc32c u32 |
type SyncChunkAck struct {
	Durable bool
	Results []SyncChunkResult
}

// SyncComplete ends a resync: once the mirror applied every record ≤ Tag
// its store is consistent again.
//
//	| tag u64 | crc32c u32 |
type SyncComplete struct{ Tag uint64 }

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func (r *reader) boolean(what string) bool {
	v := r.u8(what)
	if v > 1 {
		r.fail("%s is %d, want 0 or 1", what, v)
	}
	return v == 1
}

// AppendResyncBegin appends the encoding of m.
func AppendResyncBegin(b []byte, m ResyncBegin) []byte {
	s := len(b)
	b = appendU64(b, m.From)
	b = appendBool(b, m.Reset)
	b = appendU32(b, m.Chunk)
	return appendCRC(b, s)
}

// DecodeResyncBegin decodes a ResyncBegin.
func DecodeResyncBegin(p []byte) (ResyncBegin, error) {
	r := checkCRC(p, "resync begin")
	m := ResyncBegin{From: r.u64("from"), Reset: r.boolean("reset"), Chunk: r.u32("chunk")}
	if r.err == nil && (m.From == 0 || m.Chunk == 0 || m.Chunk > MaxSyncChunk || m.Chunk%512 != 0) {
		r.fail("from %d chunk %d out of range", m.From, m.Chunk)
	}
	return m, r.done()
}

// AppendSyncHashReq appends the encoding of m.
func AppendSyncHashReq(b []byte, m SyncHashReq) []byte {
	s := len(b)
	b = appendU64(b, m.Off)
	b = appendU64(b, m.Len)
	b = appendBool(b, m.Leaves)
	return appendCRC(b, s)
}

// DecodeSyncHashReq decodes a SyncHashReq.
func DecodeSyncHashReq(p []byte) (SyncHashReq, error) {
	r := checkCRC(p, "sync hash request")
	m := SyncHashReq{Off: r.u64("off"), Len: r.u64("len"), Leaves: r.boolean("leaves")}
	if r.err == nil && (m.Len == 0 || m.Off+m.Len < m.Off) {
		r.fail("range [%d, +%d) is empty or overflows", m.Off, m.Len)
	}
	return m, r.done()
}

// AppendSyncHashes appends the encoding of m.
func AppendSyncHashes(b []byte, m *SyncHashes) ([]byte, error) {
	if len(m.Hashes) > MaxSyncHashes {
		return b, fmt.Errorf("mirror: encode: %d hashes, more than %d", len(m.Hashes), MaxSyncHashes)
	}
	s := len(b)
	b = appendU64(b, m.Off)
	b = appendU64(b, m.Len)
	b = appendBool(b, m.Leaves)
	b = appendU32(b, uint32(len(m.Hashes)))
	for i := range m.Hashes {
		b = append(b, m.Hashes[i][:]...)
	}
	return appendCRC(b, s), nil
}

// DecodeSyncHashes decodes a SyncHashes.
func DecodeSyncHashes(p []byte) (SyncHashes, error) {
	r := checkCRC(p, "sync hashes")
	m := SyncHashes{Off: r.u64("off"), Len: r.u64("len"), Leaves: r.boolean("leaves")}
	n := r.u32("count")
	if r.err == nil && n > MaxSyncHashes {
		r.fail("%d hashes, more than %d", n, MaxSyncHashes)
	}
	if r.need(int(n)*HashLen, "hashes") && n > 0 {
		m.Hashes = make([][HashLen]byte, n)
		for i := range m.Hashes {
			copy(m.Hashes[i][:], r.bytes(HashLen, "hash"))
		}
	}
	return m, r.done()
}

// AppendSyncChunk appends the encoding of m.
func AppendSyncChunk(b []byte, m *SyncChunk) ([]byte, error) {
	if m.Len == 0 || m.Len > MaxSyncChunk || (!m.Zero && len(m.Data) != int(m.Len)) || (m.Zero && len(m.Data) != 0) {
		return b, fmt.Errorf("mirror: encode: sync chunk of %d bytes with %d data bytes (zero %v)", m.Len, len(m.Data), m.Zero)
	}
	s := len(b)
	b = appendU64(b, m.Off)
	b = appendU32(b, m.Len)
	b = appendU64(b, m.Tag)
	b = appendBool(b, m.Zero)
	b = append(b, m.Data...)
	return appendCRC(b, s), nil
}

// DecodeSyncChunk decodes a SyncChunk; Data aliases p.
func DecodeSyncChunk(p []byte) (SyncChunk, error) {
	r := checkCRC(p, "sync chunk")
	m := SyncChunk{Off: r.u64("off"), Len: r.u32("len"), Tag: r.u64("tag"), Zero: r.boolean("zero")}
	if r.err == nil && (m.Len == 0 || m.Len > MaxSyncChunk) {
		r.fail("chunk length %d out of range", m.Len)
	}
	if r.err == nil && !m.Zero {
		m.Data = r.bytes(int(m.Len), "chunk data")
	}
	return m, r.done()
}

// AppendSyncChunkAck appends the encoding of m.
func AppendSyncChunkAck(b []byte, m *SyncChunkAck) ([]byte, error) {
	if len(m.Results) > MaxSyncAcks {
		return b, fmt.Errorf("mirror: encode: %d chunk results, more than %d", len(m.Results), MaxSyncAcks)
	}
	s := len(b)
	b = appendBool(b, m.Durable)
	b = appendU32(b, uint32(len(m.Results)))
	for _, x := range m.Results {
		b = appendU64(b, x.Off)
		b = appendU32(b, x.Len)
		b = appendBool(b, x.OK)
	}
	return appendCRC(b, s), nil
}

// DecodeSyncChunkAck decodes a SyncChunkAck.
func DecodeSyncChunkAck(p []byte) (SyncChunkAck, error) {
	r := checkCRC(p, "sync chunk ack")
	var m SyncChunkAck
	m.Durable = r.boolean("durable")
	n := r.u32("count")
	if r.err == nil && n > MaxSyncAcks {
		r.fail("%d results, more than %d", n, MaxSyncAcks)
	}
	if r.need(int(n)*13, "results") && n > 0 {
		m.Results = make([]SyncChunkResult, n)
		for i := range m.Results {
			m.Results[i] = SyncChunkResult{Off: r.u64("off"), Len: r.u32("len"), OK: r.boolean("ok")}
		}
	}
	return m, r.done()
}

// AppendSyncComplete appends the encoding of m.
func AppendSyncComplete(b []byte, m SyncComplete) []byte {
	s := len(b)
	b = appendU64(b, m.Tag)
	return appendCRC(b, s)
}

// DecodeSyncComplete decodes a SyncComplete (also used, empty tag, for
// SyncCompleteAck).
func DecodeSyncComplete(p []byte) (SyncComplete, error) {
	r := checkCRC(p, "sync complete")
	m := SyncComplete{Tag: r.u64("tag")}
	return m, r.done()
}
