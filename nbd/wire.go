package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic numbers (format: fixed by the NBD protocol).
const (
	magicNBD        uint64 = 0x4e42444d41474943 // "NBDMAGIC", first server word
	magicIHaveOpt   uint64 = 0x49484156454F5054 // "IHAVEOPT", server greeting and option header
	magicOptReply   uint64 = 0x0003e889045565a9 // option reply header
	magicRequest    uint32 = 0x25609513         // transmission request
	magicSimple     uint32 = 0x67446698         // simple reply
	magicStructured uint32 = 0x668e33ef         // structured reply chunk
)

// Handshake flags sent by the server (format).
const (
	hflagFixedNewstyle uint16 = 1 << 0
	hflagNoZeroes      uint16 = 1 << 1
)

// Client flags (format).
const (
	cflagFixedNewstyle uint32 = 1 << 0
	cflagNoZeroes      uint32 = 1 << 1
	cflagKnown                = cflagFixedNewstyle | cflagNoZeroes
)

// Option codes (format).
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optPeekExport      uint32 = 4
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types (format). Errors have bit 31 set.
const (
	repAck         uint32 = 1
	repServer      uint32 = 2
	repInfo        uint32 = 3
	repErrUnsup    uint32 = 1<<31 | 1
	repErrPolicy   uint32 = 1<<31 | 2
	repErrInvalid  uint32 = 1<<31 | 3
	repErrPlatform uint32 = 1<<31 | 4
	repErrTLSReqd  uint32 = 1<<31 | 5
	repErrUnknown  uint32 = 1<<31 | 6
	repErrShutdown uint32 = 1<<31 | 7
	repErrBlkReqd  uint32 = 1<<31 | 8
	repErrTooBig   uint32 = 1<<31 | 9
)

// NBD_INFO_* types carried in NBD_REP_INFO (format).
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Transmission flags (format).
const (
	tflagHasFlags       uint16 = 1 << 0
	tflagReadOnly       uint16 = 1 << 1
	tflagSendFlush      uint16 = 1 << 2
	tflagSendFUA        uint16 = 1 << 3
	tflagRotational     uint16 = 1 << 4
	tflagSendTrim       uint16 = 1 << 5
	tflagSendWriteZeros uint16 = 1 << 6
	tflagSendDF         uint16 = 1 << 7
	tflagCanMultiConn   uint16 = 1 << 8
	tflagSendResize     uint16 = 1 << 9
	tflagSendCache      uint16 = 1 << 10
	tflagSendFastZero   uint16 = 1 << 11
)

// Commands (format).
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags (format).
const (
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Structured reply chunk types and flags (format).
const (
	replyFlagDone    uint16 = 1 << 0
	replyNone        uint16 = 0
	replyOffsetData  uint16 = 1
	replyOffsetHole  uint16 = 2
	replyError       uint16 = 1<<15 | 1
	replyErrorOffset uint16 = 1<<15 | 2
)

// NBD error values (format: the protocol fixes these numbers independently
// of the host's errno values).
const (
	errnoPerm     uint32 = 1
	errnoIO       uint32 = 5
	errnoNoMem    uint32 = 12
	errnoInval    uint32 = 22
	errnoNoSpc    uint32 = 28
	errnoOverflow uint32 = 75
	errnoNotSup   uint32 = 95
	errnoShutdown uint32 = 108
)

// Sizes (format).
const (
	greetingLen      = 8 + 8 + 2     // NBDMAGIC, IHAVEOPT, handshake flags
	optHeaderLen     = 8 + 4 + 4     // IHAVEOPT, option, length
	optReplyHdrLen   = 8 + 4 + 4 + 4 // magic, option, type, length
	requestLen       = 4 + 2 + 2 + 8 + 8 + 4
	simpleReplyLen   = 4 + 4 + 8
	chunkHeaderLen   = 4 + 2 + 2 + 8 + 4
	exportNameZeroes = 124
)

// Limits (policy, documented in doc.go).
const (
	// MaxRequestLen is the largest request length the server accepts and
	// the largest MaxBlockSize an export may advertise (32 MiB).
	MaxRequestLen = 32 << 20
	// maxOptionLen caps option data the server reads into memory.
	maxOptionLen = 64 << 10
	// maxOptionDrain: larger options are dropped by closing the connection
	// instead of being read and discarded.
	maxOptionDrain = 16 << 20
	// maxWriteDrain: an oversized NBD_CMD_WRITE payload up to this size is
	// read and discarded (reply EINVAL); a bigger one closes the connection.
	maxWriteDrain = 128 << 20
	// maxStringLen is the protocol's limit on names and messages.
	maxStringLen = 4096
	// maxErrMsgLen bounds the human-readable text in error chunks.
	maxErrMsgLen = 256
)

// errMalformed reports wire data that does not parse.
var errMalformed = errors.New("nbd: malformed message")

// optHeader is a parsed client option header.
type optHeader struct {
	opt    uint32
	length uint32
}

// parseOptionHeader decodes the 16-byte option header in b.
func parseOptionHeader(b []byte) (optHeader, error) {
	if len(b) < optHeaderLen {
		return optHeader{}, fmt.Errorf("%w: option header: %d bytes", errMalformed, len(b))
	}
	if m := binary.BigEndian.Uint64(b); m != magicIHaveOpt {
		return optHeader{}, fmt.Errorf("%w: option magic %#x", errMalformed, m)
	}
	return optHeader{
		opt:    binary.BigEndian.Uint32(b[8:]),
		length: binary.BigEndian.Uint32(b[12:]),
	}, nil
}

// appendOptionHeader encodes an option header (used by tests and fuzz seeds).
func appendOptionHeader(dst []byte, h optHeader) []byte {
	dst = binary.BigEndian.AppendUint64(dst, magicIHaveOpt)
	dst = binary.BigEndian.AppendUint32(dst, h.opt)
	return binary.BigEndian.AppendUint32(dst, h.length)
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes NBD_OPT_INFO / NBD_OPT_GO data:
//
//	u32 name length | name | u16 count | count × u16 info type
//
// The whole of data must be consumed exactly.
func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 4 {
		return infoRequest{}, fmt.Errorf("%w: info request too short", errMalformed)
	}
	nl := binary.BigEndian.Uint32(data)
	rest := data[4:]
	if nl > maxStringLen || uint64(nl)+2 > uint64(len(rest)) {
		return infoRequest{}, fmt.Errorf("%w: info request name length %d", errMalformed, nl)
	}
	name := string(rest[:nl])
	rest = rest[nl:]
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return infoRequest{}, fmt.Errorf("%w: info request has %d bytes for %d types", errMalformed, len(rest), n)
	}
	var infos []uint16
	if n > 0 {
		infos = make([]uint16, n)
		for i := range infos {
			infos[i] = binary.BigEndian.Uint16(rest[2*i:])
		}
	}
	return infoRequest{name: name, infos: infos}, nil
}

// appendInfoRequest encodes r as NBD_OPT_INFO / NBD_OPT_GO data.
func appendInfoRequest(dst []byte, r infoRequest) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(r.name)))
	dst = append(dst, r.name...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(r.infos)))
	for _, t := range r.infos {
		dst = binary.BigEndian.AppendUint16(dst, t)
	}
	return dst
}

// request is a parsed transmission request header.
type reqHeader struct {
	flags  uint16
	cmd    uint16
	cookie uint64
	off    uint64
	length uint32
}

// parseRequestHeader decodes the 28-byte request header in b.
func parseRequestHeader(b []byte) (reqHeader, error) {
	if len(b) < requestLen {
		return reqHeader{}, fmt.Errorf("%w: request header: %d bytes", errMalformed, len(b))
	}
	if m := binary.BigEndian.Uint32(b); m != magicRequest {
		return reqHeader{}, fmt.Errorf("%w: request magic %#x", errMalformed, m)
	}
	return reqHeader{
		flags:  binary.BigEndian.Uint16(b[4:]),
		cmd:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// appendRequestHeader encodes a request header (used by tests and fuzz seeds).
func appendRequestHeader(dst []byte, h reqHeader) []byte {
	dst = binary.BigEndian.AppendUint32(dst, magicRequest)
	dst = binary.BigEndian.AppendUint16(dst, h.flags)
	dst = binary.BigEndian.AppendUint16(dst, h.cmd)
	dst = binary.BigEndian.AppendUint64(dst, h.cookie)
	dst = binary.BigEndian.AppendUint64(dst, h.off)
	return binary.BigEndian.AppendUint32(dst, h.length)
}

// putSimpleReply encodes a simple reply header into b[:16].
func putSimpleReply(b []byte, errno uint32, cookie uint64) {
	binary.BigEndian.PutUint32(b, magicSimple)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], cookie)
}

// putChunkHeader encodes a structured reply chunk header into b[:20].
func putChunkHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) {
	binary.BigEndian.PutUint32(b, magicStructured)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint32(b[16:], length)
}

// appendErrorChunk encodes a complete NBD_REPLY_TYPE_ERROR chunk (with
// NBD_REPLY_FLAG_DONE) carrying errno and msg (truncated to maxErrMsgLen).
func appendErrorChunk(dst []byte, cookie uint64, errno uint32, msg string) []byte {
	if len(msg) > maxErrMsgLen {
		msg = msg[:maxErrMsgLen]
	}
	var h [chunkHeaderLen]byte
	putChunkHeader(h[:], replyFlagDone, replyError, cookie, uint32(6+len(msg)))
	dst = append(dst, h[:]...)
	dst = binary.BigEndian.AppendUint32(dst, errno)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(msg)))
	return append(dst, msg...)
}

// appendErrorOffsetChunk encodes a complete NBD_REPLY_TYPE_ERROR_OFFSET
// chunk (with NBD_REPLY_FLAG_DONE).
func appendErrorOffsetChunk(dst []byte, cookie uint64, errno uint32, msg string, off uint64) []byte {
	if len(msg) > maxErrMsgLen {
		msg = msg[:maxErrMsgLen]
	}
	var h [chunkHeaderLen]byte
	putChunkHeader(h[:], replyFlagDone, replyErrorOffset, cookie, uint32(6+len(msg)+8))
	dst = append(dst, h[:]...)
	dst = binary.BigEndian.AppendUint32(dst, errno)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(msg)))
	dst = append(dst, msg...)
	return binary.BigEndian.AppendUint64(dst, off)
}

// appendBlockSizeInfo encodes the NBD_INFO_BLOCK_SIZE payload.
func appendBlockSizeInfo(dst []byte, min, pref, max uint32) []byte {
	dst = binary.BigEndian.AppendUint16(dst, infoBlockSize)
	dst = binary.BigEndian.AppendUint32(dst, min)
	dst = binary.BigEndian.AppendUint32(dst, pref)
	return binary.BigEndian.AppendUint32(dst, max)
}

// appendExportInfo encodes the NBD_INFO_EXPORT payload.
func appendExportInfo(dst []byte, size uint64, tflags uint16) []byte {
	dst = binary.BigEndian.AppendUint16(dst, infoExport)
	dst = binary.BigEndian.AppendUint64(dst, size)
	return binary.BigEndian.AppendUint16(dst, tflags)
}
