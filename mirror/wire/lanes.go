package wire

import "fmt"

// Record lanes: a session's records may travel on several streams, each on
// its own connection (its own congestion controller), so that one lossy
// connection's stall or one small congestion window does not bound the
// replication. The values are part of the wire format.
const (
	// MsgLanes (primary → mirror, log stream) says that from now on the
	// session's records travel only on its Count lane streams, the first
	// of them holding seq From. It comes after a ResyncBegin (if any) and
	// before any record that travels on a lane; no Records message follows
	// it on the log stream.
	MsgLanes MsgType = 17
	// MsgLaneJoin is the first frame of a lane stream: it names the volume
	// (a mirror host routes by it), the session's Token and the lane's
	// index. Only Records messages follow it.
	MsgLaneJoin MsgType = 18
)

// FlagLanes (HelloReply.Flags): the mirror accepts record lanes (MsgLanes,
// MsgLaneJoin). A primary sends records on lanes only to a mirror that set
// it; others get them on the log stream as before.
const FlagLanes uint32 = 1 << 2

// MaxLanes bounds Lanes.Count.
const MaxLanes = 16

// Lanes announces a session's record lanes.
//
//	| token u64 | from u64 | count u8 | crc32c u32 |
type Lanes struct {
	// Token is a random number of the session's that its lane streams
	// present (MsgLaneJoin), so a lane can only join the session that
	// announced it.
	Token uint64
	// From is the seq of the first record sent on the lanes.
	From  uint64
	Count uint8
}

// LaneJoin opens a lane stream.
//
//	| name str | token u64 | index u8 | crc32c u32 |
type LaneJoin struct {
	Volume string // the volume's configured name (as StreamVolume)
	Token  uint64
	Index  uint8
}

// AppendLanes appends the encoding of m.
func AppendLanes(b []byte, m Lanes) []byte {
	start := len(b)
	b = appendU64(b, m.Token)
	b = appendU64(b, m.From)
	b = append(b, m.Count)
	return appendCRC(b, start)
}

// DecodeLanes decodes a Lanes payload; Count must be 1..MaxLanes and From
// at least 1.
func DecodeLanes(p []byte) (Lanes, error) {
	r := checkCRC(p, "lanes")
	m := Lanes{Token: r.u64("token"), From: r.u64("from"), Count: r.u8("count")}
	if err := r.done(); err != nil {
		return Lanes{}, err
	}
	if m.Count == 0 || m.Count > MaxLanes {
		return Lanes{}, fmt.Errorf("mirror: decode lanes: %d lanes, want 1..%d", m.Count, MaxLanes)
	}
	if m.From == 0 {
		return Lanes{}, fmt.Errorf("mirror: decode lanes: first seq 0")
	}
	return m, nil
}

// AppendLaneJoin appends the encoding of m; it fails only when the volume
// name is longer than MaxString.
func AppendLaneJoin(b []byte, m LaneJoin) ([]byte, error) {
	start := len(b)
	b, err := appendString(b, m.Volume, "volume name")
	if err != nil {
		return b[:start], err
	}
	b = appendU64(b, m.Token)
	b = append(b, m.Index)
	return appendCRC(b, start), nil
}

// DecodeLaneJoin decodes a LaneJoin payload; Index must be below MaxLanes.
func DecodeLaneJoin(p []byte) (LaneJoin, error) {
	r := checkCRC(p, "lane join")
	m := LaneJoin{Volume: r.str("volume name"), Token: r.u64("token"), Index: r.u8("index")}
	if err := r.done(); err != nil {
		return LaneJoin{}, err
	}
	if m.Index >= MaxLanes {
		return LaneJoin{}, fmt.Errorf("mirror: decode lane join: lane %d, want below %d", m.Index, MaxLanes)
	}
	return m, nil
}
