package wire

import (
	"encoding/hex"
	"fmt"
)

// UUID is a volume identity.
type UUID [16]byte

func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// ParseUUID parses the textual form written by String.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("mirror: bad UUID %q", s)
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("mirror: bad UUID %q: %w", s, err)
	}
	return u, nil
}

func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

func (u *UUID) UnmarshalText(b []byte) error {
	v, err := ParseUUID(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

// EpochStart records that Epoch began at FirstSeq: records with seq ≥
// FirstSeq (up to the next entry's FirstSeq) were written in Epoch.
//
// ID is a random number chosen by the node that started the epoch, so two
// nodes promoted to the same epoch number while partitioned (split brain)
// have different histories and notice it on contact.
type EpochStart struct {
	Epoch    uint64 `json:"epoch"`
	FirstSeq uint64 `json:"first_seq"`
	ID       uint64 `json:"id"`
}
