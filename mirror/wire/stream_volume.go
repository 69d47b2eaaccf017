package wire

// MsgStreamVolume is the first frame of every resync or verify stream: on
// a connection that several volumes share, it names the volume the stream
// belongs to (a log stream names it in its Hello). The value is part of
// the wire format.
const MsgStreamVolume MsgType = 16

// StreamVolume names the volume of a resync or verify stream.
//
//	| name str | crc32c u32 |
type StreamVolume struct {
	Name string
}

// AppendStreamVolume appends the encoding of m; it fails only when the name
// is longer than MaxString.
func AppendStreamVolume(b []byte, m StreamVolume) ([]byte, error) {
	start := len(b)
	b, err := appendString(b, m.Name, "volume name")
	if err != nil {
		return b[:start], err
	}
	return appendCRC(b, start), nil
}

// DecodeStreamVolume decodes a StreamVolume payload.
func DecodeStreamVolume(p []byte) (StreamVolume, error) {
	r := checkCRC(p, "stream volume")
	m := StreamVolume{Name: r.str("volume name")}
	if err := r.done(); err != nil {
		return StreamVolume{}, err
	}
	return m, nil
}
