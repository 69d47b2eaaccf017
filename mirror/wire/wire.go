package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Replication protocol constants. Everything in this block is part of the
// wire format (see doc.go for the layouts) and must not change without
// bumping ProtoVersion.
const (
	// ProtoVersion is the version of the replication protocol spoken by
	// this build; it is carried in Hello and HelloReply.
	ProtoVersion uint16 = 1

	// MaxRecordData bounds the data of one OpWrite record (32 MiB).
	MaxRecordData = 32 << 20
	// MaxRecordsPerFrame bounds the number of records in one Records message.
	MaxRecordsPerFrame = 65536
	// MaxHistory bounds the number of entries of an epoch history.
	MaxHistory = 1024
	// MaxString bounds node names, reasons and error messages (bytes).
	MaxString = 4096

	// recordHeaderLen is epoch(8) seq(8) op(1) offset(8) length(4).
	recordHeaderLen = 29
	// recordOverhead is a record's header plus its trailing CRC32C.
	recordOverhead = recordHeaderLen + 4
	crcLen         = 4
)

// MsgType is the frame type byte of a replication message. The values are
// part of the wire format.
type MsgType uint8

const (
	MsgHello         MsgType = 1 // primary → mirror, first message of a session
	MsgHelloReply    MsgType = 2 // mirror → primary, answer to Hello
	MsgRecords       MsgType = 3 // primary → mirror, consecutive journal records
	MsgAck           MsgType = 4 // mirror → primary, cumulative watermarks
	MsgFlush         MsgType = 5 // primary → mirror, "be durable through seq"
	MsgHeartbeat     MsgType = 6 // either way, liveness + RTT probe
	MsgHeartbeatEcho MsgType = 7 // answer to a Heartbeat, echoing its Time
	MsgError         MsgType = 8 // either way, last message before closing
)

func (t MsgType) String() string {
	switch t {
	case MsgHello:
		return "hello"
	case MsgHelloReply:
		return "hello-reply"
	case MsgRecords:
		return "records"
	case MsgAck:
		return "ack"
	case MsgFlush:
		return "flush"
	case MsgHeartbeat:
		return "heartbeat"
	case MsgHeartbeatEcho:
		return "heartbeat-echo"
	case MsgError:
		return "error"
	case MsgStreamVolume:
		return "stream-volume"
	case MsgLanes:
		return "lanes"
	case MsgLaneJoin:
		return "lane-join"
	}
	return fmt.Sprintf("msg(%d)", uint8(t))
}

// Mode is the replication mode of a volume. Values are part of the wire format.
type Mode uint8

const (
	// ModeSync: a write completes once SyncAcks mirrors acknowledged it.
	ModeSync Mode = 1
	// ModeAsync: a write completes once local; mirrors trail within MaxLag.
	ModeAsync Mode = 2
)

func (m Mode) String() string {
	switch m {
	case ModeSync:
		return "sync"
	case ModeAsync:
		return "async"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// AckLevel is how far a record must have got on a mirror to count as
// acknowledged. Values are part of the wire format and ordered: a record at
// a level is also at every lower level.
type AckLevel uint8

const (
	// AckReceived: in the mirror's memory (lost by a mirror process crash).
	AckReceived AckLevel = 1
	// AckWritten: written to the mirror's journal (survives a process crash).
	AckWritten AckLevel = 2
	// AckDurable: fdatasync'd in the mirror's journal (survives power loss).
	AckDurable AckLevel = 3
)

func (l AckLevel) String() string {
	switch l {
	case AckReceived:
		return "received"
	case AckWritten:
		return "written"
	case AckDurable:
		return "durable"
	}
	return fmt.Sprintf("acklevel(%d)", uint8(l))
}

// PeerRole is the role a node announces in a handshake. Values are part of
// the wire format.
type PeerRole uint8

const (
	PeerRolePrimary PeerRole = 1
	PeerRoleMirror  PeerRole = 2
)

// ErrCode classifies a refusal (HelloReply.Code) or an Error message.
// Values are part of the wire format.
type ErrCode uint16

const (
	// CodeOK: accepted (HelloReply only).
	CodeOK ErrCode = 0
	// CodeRefused: the handshake was refused (identity mismatch, bad
	// version, diverged history, ...); the reason says what differs.
	CodeRefused ErrCode = 1
	// CodeFenced: the receiver has a higher epoch than the sender; the
	// sender must stop acting as primary.
	CodeFenced ErrCode = 2
	// CodeProtocol: a malformed or out-of-order message was received.
	CodeProtocol ErrCode = 3
	// CodeInternal: the sender failed locally (I/O error, shutdown).
	CodeInternal ErrCode = 4
	// CodeSplitBrain: both sides act in the same epoch with different
	// histories (two promotions while partitioned). Neither side discards
	// anything; an operator resolves it (see the README).
	CodeSplitBrain ErrCode = 5
	// CodeNotMirror: the receiver is a primary (a promoted node answering
	// an old primary with the same or a higher epoch).
	CodeNotMirror ErrCode = 6
)

func (c ErrCode) String() string {
	switch c {
	case CodeOK:
		return "ok"
	case CodeRefused:
		return "refused"
	case CodeFenced:
		return "fenced"
	case CodeProtocol:
		return "protocol"
	case CodeInternal:
		return "internal"
	case CodeSplitBrain:
		return "split-brain"
	case CodeNotMirror:
		return "not-a-mirror"
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// Reply flags (HelloReply.Flags). Values are part of the wire format.
const (
	// FlagNeedsResync: the mirror cannot continue from its journal (its
	// history diverged, or a resync was interrupted).
	FlagNeedsResync uint32 = 1 << 0
	// FlagInconsistent: the mirror's store is not a write-order prefix of
	// the primary's history (a resync is in progress).
	FlagInconsistent uint32 = 1 << 1
)

// Hello opens a session: the primary tells the mirror who it is.
type Hello struct {
	Version  uint16
	Role     PeerRole
	Mode     Mode
	AckLevel AckLevel
	Volume   UUID
	Size     uint64
	Epoch    uint64
	// LastSeq is the primary's last assigned seq.
	LastSeq uint64
	Node    string
	// VolumeName is the volume's configured name; a mirror host serving
	// several volumes routes the session by it. Empty: unnamed.
	VolumeName string
	// History is the primary's epoch history, oldest first.
	History []EpochStart
}

// HelloReply answers a Hello. Code is CodeOK when the mirror accepts the
// session; otherwise Reason says why it refused.
type HelloReply struct {
	Version uint16
	Code    ErrCode
	Flags   uint32
	Role    PeerRole
	Volume  UUID
	Size    uint64
	Epoch   uint64
	// LastSeq is the last seq in the mirror's journal (written level).
	LastSeq uint64
	// DurableSeq is the highest seq fdatasync'd in the mirror's journal.
	DurableSeq uint64
	// AppliedSeq is the highest seq applied to the mirror's store.
	AppliedSeq uint64
	Node       string
	Reason     string
	History    []EpochStart
}

// Ack carries a mirror's cumulative watermarks: every seq ≤ Received is in
// its memory, ≤ Written in its journal, ≤ Durable fdatasync'd there, and
// ≤ Applied in its store. Received ≥ Written ≥ Durable.
type Ack struct {
	Received uint64
	Written  uint64
	Durable  uint64
	Applied  uint64
}

// Level returns the watermark at level l.
func (a Ack) Level(l AckLevel) uint64 {
	switch l {
	case AckReceived:
		return a.Received
	case AckWritten:
		return a.Written
	}
	return a.Durable
}

// Flush asks a mirror to make its journal durable through Through.
type Flush struct {
	Through uint64
}

// Heartbeat is a liveness probe. Time is the sender's monotonic clock in
// nanoseconds, echoed unchanged by the receiver (MsgHeartbeatEcho) so the
// sender can measure the round trip; LastSeq is the sender's last seq (the
// primary's last assigned seq, or in an echo the mirror's received seq).
type Heartbeat struct {
	Time    uint64
	LastSeq uint64
}

// ErrorMsg is the payload of an MsgError message.
type ErrorMsg struct {
	Code    ErrCode
	Message string
}

func (e ErrorMsg) Error() string {
	return fmt.Sprintf("mirror: peer reported %v error: %s", e.Code, e.Message)
}

// Decode errors. Every decoding failure wraps ErrMalformed; checksum
// mismatches additionally wrap ErrChecksum.
var (
	ErrMalformed = errors.New("malformed message")
	ErrChecksum  = errors.New("checksum mismatch")
)

// castagnoli is the CRC32C table; it is read-only after initialisation.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var be = binary.BigEndian

// ---- encoding helpers ----

func appendU16(b []byte, v uint16) []byte { return be.AppendUint16(b, v) }
func appendU32(b []byte, v uint32) []byte { return be.AppendUint32(b, v) }
func appendU64(b []byte, v uint64) []byte { return be.AppendUint64(b, v) }

func appendString(b []byte, s string, what string) ([]byte, error) {
	if len(s) > MaxString {
		return b, fmt.Errorf("mirror: encode: %s is %d bytes, more than %d", what, len(s), MaxString)
	}
	b = appendU16(b, uint16(len(s)))
	return append(b, s...), nil
}

func appendHistory(b []byte, h []EpochStart) ([]byte, error) {
	if len(h) > MaxHistory {
		return b, fmt.Errorf("mirror: encode: epoch history has %d entries, more than %d", len(h), MaxHistory)
	}
	b = appendU32(b, uint32(len(h)))
	for _, e := range h {
		b = appendU64(b, e.Epoch)
		b = appendU64(b, e.FirstSeq)
		b = appendU64(b, e.ID)
	}
	return b, nil
}

// appendCRC appends the CRC32C of b[start:].
func appendCRC(b []byte, start int) []byte {
	return appendU32(b, crc32.Checksum(b[start:], castagnoli))
}

// ---- decoding helpers ----

// reader is a bounds-checked cursor over a payload. The first failure
// sticks; later reads return zero values.
type reader struct {
	p   []byte
	off int
	err error
	msg string
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("mirror: decode %s: %w: %s", r.msg, ErrMalformed, fmt.Sprintf(format, args...))
	}
}

func (r *reader) need(n int, what string) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || len(r.p)-r.off < n {
		r.fail("truncated at offset %d reading %s (%d bytes needed, %d left)", r.off, what, n, len(r.p)-r.off)
		return false
	}
	return true
}

func (r *reader) u8(what string) uint8 {
	if !r.need(1, what) {
		return 0
	}
	v := r.p[r.off]
	r.off++
	return v
}

func (r *reader) u16(what string) uint16 {
	if !r.need(2, what) {
		return 0
	}
	v := be.Uint16(r.p[r.off:])
	r.off += 2
	return v
}

func (r *reader) u32(what string) uint32 {
	if !r.need(4, what) {
		return 0
	}
	v := be.Uint32(r.p[r.off:])
	r.off += 4
	return v
}

func (r *reader) u64(what string) uint64 {
	if !r.need(8, what) {
		return 0
	}
	v := be.Uint64(r.p[r.off:])
	r.off += 8
	return v
}

func (r *reader) bytes(n int, what string) []byte {
	if !r.need(n, what) {
		return nil
	}
	v := r.p[r.off : r.off+n : r.off+n]
	r.off += n
	return v
}

func (r *reader) str(what string) string {
	n := int(r.u16(what + " length"))
	if r.err != nil {
		return ""
	}
	if n > MaxString {
		r.fail("%s is %d bytes, more than %d", what, n, MaxString)
		return ""
	}
	return string(r.bytes(n, what))
}

func (r *reader) history() []EpochStart {
	n := r.u32("history count")
	if r.err != nil {
		return nil
	}
	if n > MaxHistory {
		r.fail("epoch history has %d entries, more than %d", n, MaxHistory)
		return nil
	}
	if !r.need(int(n)*24, "history") {
		return nil
	}
	if n == 0 {
		return nil
	}
	h := make([]EpochStart, n)
	for i := range h {
		h[i].Epoch = r.u64("history epoch")
		h[i].FirstSeq = r.u64("history first seq")
		h[i].ID = r.u64("history epoch id")
	}
	return h
}

// checkCRC verifies the trailing CRC32C of the whole payload and returns
// a reader over the payload without it.
func checkCRC(p []byte, msg string) reader {
	r := reader{p: p, msg: msg}
	if len(p) < crcLen {
		r.fail("payload of %d bytes is shorter than its checksum", len(p))
		return r
	}
	body := p[:len(p)-crcLen]
	want := be.Uint32(p[len(p)-crcLen:])
	if got := crc32.Checksum(body, castagnoli); got != want {
		r.err = fmt.Errorf("mirror: decode %s: %w: %w: computed %08x, message says %08x", msg, ErrMalformed, ErrChecksum, got, want)
		return r
	}
	r.p = body
	return r
}

// done reports the reader's error, or an error if bytes are left over.
func (r *reader) done() error {
	if r.err == nil && r.off != len(r.p) {
		r.fail("%d trailing bytes", len(r.p)-r.off)
	}
	return r.err
}

// ---- Hello ----

// AppendHello appends the encoding of h to b.
func AppendHello(b []byte, h *Hello) ([]byte, error) {
	start := len(b)
	b = appendU16(b, h.Version)
	b = append(b, byte(h.Role), byte(h.Mode), byte(h.AckLevel), 0)
	b = append(b, h.Volume[:]...)
	b = appendU64(b, h.Size)
	b = appendU64(b, h.Epoch)
	b = appendU64(b, h.LastSeq)
	var err error
	if b, err = appendString(b, h.Node, "node name"); err != nil {
		return b[:start], err
	}
	if b, err = appendString(b, h.VolumeName, "volume name"); err != nil {
		return b[:start], err
	}
	if b, err = appendHistory(b, h.History); err != nil {
		return b[:start], err
	}
	return appendCRC(b, start), nil
}

// DecodeHello decodes a Hello payload. It validates syntax only; see
// CheckHello for the semantic checks.
func DecodeHello(p []byte) (Hello, error) {
	var h Hello
	r := checkCRC(p, "hello")
	h.Version = r.u16("version")
	h.Role = PeerRole(r.u8("role"))
	h.Mode = Mode(r.u8("mode"))
	h.AckLevel = AckLevel(r.u8("ack level"))
	if f := r.u8("flags"); f != 0 && r.err == nil {
		r.fail("reserved flags %#x set", f)
	}
	copy(h.Volume[:], r.bytes(16, "volume"))
	h.Size = r.u64("size")
	h.Epoch = r.u64("epoch")
	h.LastSeq = r.u64("last seq")
	h.Node = r.str("node name")
	h.VolumeName = r.str("volume name")
	h.History = r.history()
	if err := r.done(); err != nil {
		return Hello{}, err
	}
	return h, nil
}

// ---- HelloReply ----

// AppendHelloReply appends the encoding of h to b.
func AppendHelloReply(b []byte, h *HelloReply) ([]byte, error) {
	start := len(b)
	b = appendU16(b, h.Version)
	b = appendU16(b, uint16(h.Code))
	b = appendU32(b, h.Flags)
	b = append(b, byte(h.Role))
	b = append(b, h.Volume[:]...)
	b = appendU64(b, h.Size)
	b = appendU64(b, h.Epoch)
	b = appendU64(b, h.LastSeq)
	b = appendU64(b, h.DurableSeq)
	b = appendU64(b, h.AppliedSeq)
	var err error
	if b, err = appendString(b, h.Node, "node name"); err != nil {
		return b[:start], err
	}
	if b, err = appendString(b, h.Reason, "reason"); err != nil {
		return b[:start], err
	}
	if b, err = appendHistory(b, h.History); err != nil {
		return b[:start], err
	}
	return appendCRC(b, start), nil
}

// DecodeHelloReply decodes a HelloReply payload.
func DecodeHelloReply(p []byte) (HelloReply, error) {
	var h HelloReply
	r := checkCRC(p, "hello reply")
	h.Version = r.u16("version")
	h.Code = ErrCode(r.u16("code"))
	h.Flags = r.u32("flags")
	h.Role = PeerRole(r.u8("role"))
	copy(h.Volume[:], r.bytes(16, "volume"))
	h.Size = r.u64("size")
	h.Epoch = r.u64("epoch")
	h.LastSeq = r.u64("last seq")
	h.DurableSeq = r.u64("durable seq")
	h.AppliedSeq = r.u64("applied seq")
	h.Node = r.str("node name")
	h.Reason = r.str("reason")
	h.History = r.history()
	if err := r.done(); err != nil {
		return HelloReply{}, err
	}
	return h, nil
}

// ---- Records ----

// RecordSize returns the number of bytes rec takes in a Records message.
func RecordSize(rec *Record) int {
	if rec.Op == OpWrite {
		return recordOverhead + len(rec.Data)
	}
	return recordOverhead
}

// RecordsHeaderLen is the size of the Records message header (the count).
const RecordsHeaderLen = 4

func checkRecord(rec *Record) error {
	if !rec.Op.Valid() {
		return fmt.Errorf("record %d has unknown op %d", rec.Seq, uint8(rec.Op))
	}
	switch rec.Op {
	case OpWrite:
		if len(rec.Data) != int(rec.Length) {
			return fmt.Errorf("write record %d has length %d but %d data bytes", rec.Seq, rec.Length, len(rec.Data))
		}
		if rec.Length > MaxRecordData {
			return fmt.Errorf("write record %d has %d data bytes, more than %d", rec.Seq, rec.Length, MaxRecordData)
		}
	case OpEpoch:
		if rec.Length != 0 || len(rec.Data) != 0 {
			return fmt.Errorf("epoch record %d has length %d and %d data bytes, want none", rec.Seq, rec.Length, len(rec.Data))
		}
	default:
		if len(rec.Data) != 0 {
			return fmt.Errorf("%v record %d carries %d data bytes, want none", rec.Op, rec.Seq, len(rec.Data))
		}
	}
	return nil
}

// AppendRecords appends a Records message holding recs to b. recs must be
// non-empty, at most MaxRecordsPerFrame long and each record well formed
// (OpWrite: len(Data) == Length ≤ MaxRecordData; others: no data; OpEpoch:
// Length 0). It does not check that seqs are consecutive.
func AppendRecords(b []byte, recs []Record) ([]byte, error) {
	if len(recs) == 0 || len(recs) > MaxRecordsPerFrame {
		return b, fmt.Errorf("mirror: encode records: %d records, want 1..%d", len(recs), MaxRecordsPerFrame)
	}
	for i := range recs {
		if err := checkRecord(&recs[i]); err != nil {
			return b, fmt.Errorf("mirror: encode records: %w", err)
		}
	}
	b = appendU32(b, uint32(len(recs)))
	for i := range recs {
		b = appendRecord(b, &recs[i])
	}
	return b, nil
}

func appendRecord(b []byte, rec *Record) []byte {
	start := len(b)
	b = appendU64(b, rec.Epoch)
	b = appendU64(b, rec.Seq)
	b = append(b, byte(rec.Op))
	b = appendU64(b, rec.Offset)
	b = appendU32(b, rec.Length)
	if rec.Op == OpWrite {
		b = append(b, rec.Data...)
	}
	return appendCRC(b, start)
}

// DecodeRecords decodes a Records payload, appending the records to dst
// (which may be nil, or a slice reused from an earlier call) and returning
// the extended slice. The Data of each OpWrite record aliases p: it is valid
// only as long as p is and must be copied by a caller that keeps it beyond
// that. Non-write records have nil Data. The only allocation is growing dst
// (bounded by the count, which is checked against the payload length first).
func DecodeRecords(dst []Record, p []byte) ([]Record, error) {
	r := reader{p: p, msg: "records"}
	n := r.u32("record count")
	if r.err != nil {
		return dst, r.err
	}
	if n == 0 || n > MaxRecordsPerFrame {
		r.fail("%d records, want 1..%d", n, MaxRecordsPerFrame)
		return dst, r.err
	}
	if uint64(n)*recordOverhead > uint64(len(p)-RecordsHeaderLen) {
		r.fail("%d records cannot fit in %d bytes", n, len(p))
		return dst, r.err
	}
	base := len(dst)
	dst = growRecords(dst, int(n))
	for i := 0; i < int(n); i++ {
		start := r.off
		var rec Record
		rec.Epoch = r.u64("epoch")
		rec.Seq = r.u64("seq")
		rec.Op = Op(r.u8("op"))
		rec.Offset = r.u64("offset")
		rec.Length = r.u32("length")
		if r.err != nil {
			return dst[:base], r.err
		}
		if !rec.Op.Valid() {
			r.fail("record %d (seq %d) has unknown op %d", i, rec.Seq, uint8(rec.Op))
			return dst[:base], r.err
		}
		switch rec.Op {
		case OpWrite:
			if rec.Length > MaxRecordData {
				r.fail("record %d (seq %d) has %d data bytes, more than %d", i, rec.Seq, rec.Length, MaxRecordData)
				return dst[:base], r.err
			}
			rec.Data = r.bytes(int(rec.Length), "record data")
		case OpEpoch:
			if rec.Length != 0 {
				r.fail("epoch record %d (seq %d) has length %d", i, rec.Seq, rec.Length)
				return dst[:base], r.err
			}
		}
		end := r.off
		want := r.u32("record checksum")
		if r.err != nil {
			return dst[:base], r.err
		}
		if got := crc32.Checksum(p[start:end], castagnoli); got != want {
			return dst[:base], fmt.Errorf("mirror: decode records: %w: %w: record %d (seq %d): computed %08x, message says %08x",
				ErrMalformed, ErrChecksum, i, rec.Seq, got, want)
		}
		dst = append(dst, rec)
	}
	if err := r.done(); err != nil {
		return dst[:base], err
	}
	return dst, nil
}

func growRecords(s []Record, n int) []Record {
	if cap(s)-len(s) >= n {
		return s
	}
	ns := make([]Record, len(s), len(s)+n)
	copy(ns, s)
	return ns
}

// ---- small messages ----

// AppendAck appends the encoding of a to b.
func AppendAck(b []byte, a Ack) []byte {
	start := len(b)
	b = appendU64(b, a.Received)
	b = appendU64(b, a.Written)
	b = appendU64(b, a.Durable)
	b = appendU64(b, a.Applied)
	return appendCRC(b, start)
}

// DecodeAck decodes an Ack payload. It also checks Received ≥ Written ≥
// Durable.
func DecodeAck(p []byte) (Ack, error) {
	r := checkCRC(p, "ack")
	a := Ack{Received: r.u64("received"), Written: r.u64("written"), Durable: r.u64("durable"), Applied: r.u64("applied")}
	if err := r.done(); err != nil {
		return Ack{}, err
	}
	if a.Written > a.Received || a.Durable > a.Written {
		r.fail("watermarks out of order: received %d written %d durable %d", a.Received, a.Written, a.Durable)
		return Ack{}, r.err
	}
	return a, nil
}

// AppendFlush appends the encoding of f to b.
func AppendFlush(b []byte, f Flush) []byte {
	start := len(b)
	b = appendU64(b, f.Through)
	return appendCRC(b, start)
}

// DecodeFlush decodes a Flush payload.
func DecodeFlush(p []byte) (Flush, error) {
	r := checkCRC(p, "flush")
	f := Flush{Through: r.u64("through")}
	if err := r.done(); err != nil {
		return Flush{}, err
	}
	return f, nil
}

// AppendHeartbeat appends the encoding of h (for MsgHeartbeat and
// MsgHeartbeatEcho alike) to b.
func AppendHeartbeat(b []byte, h Heartbeat) []byte {
	start := len(b)
	b = appendU64(b, h.Time)
	b = appendU64(b, h.LastSeq)
	return appendCRC(b, start)
}

// DecodeHeartbeat decodes a Heartbeat or HeartbeatEcho payload.
func DecodeHeartbeat(p []byte) (Heartbeat, error) {
	r := checkCRC(p, "heartbeat")
	h := Heartbeat{Time: r.u64("time"), LastSeq: r.u64("last seq")}
	if err := r.done(); err != nil {
		return Heartbeat{}, err
	}
	return h, nil
}

// AppendError appends the encoding of e to b. A message longer than
// MaxString is truncated.
func AppendError(b []byte, e ErrorMsg) []byte {
	start := len(b)
	b = appendU16(b, uint16(e.Code))
	msg := e.Message
	if len(msg) > MaxString {
		msg = msg[:MaxString]
	}
	b, _ = appendString(b, msg, "error message")
	return appendCRC(b, start)
}

// DecodeError decodes an Error payload.
func DecodeError(p []byte) (ErrorMsg, error) {
	r := checkCRC(p, "error")
	e := ErrorMsg{Code: ErrCode(r.u16("code"))}
	e.Message = r.str("error message")
	if err := r.done(); err != nil {
		return ErrorMsg{}, err
	}
	return e, nil
}
