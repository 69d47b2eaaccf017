package coord

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
)

// DefaultPrefix is the etcd key prefix under which every volume's keys live
// unless --etcd-prefix says otherwise.
const DefaultPrefix = "/blockmirror"

// MaxRecord bounds every value this package reads from etcd. Records are a
// few hundred bytes; anything larger is not ours (or is corrupt) and is
// refused before it is parsed.
const MaxRecord = 64 << 10

// maxMembers bounds the member names of a sync set record.
const maxMembers = 64

// ErrMalformed wraps every decoding failure of a record read from etcd.
var ErrMalformed = errors.New("malformed coordination record")

// Keys names the etcd keys of one volume (see the package doc for the
// layout).
type Keys struct {
	// Base is PREFIX/VOLUME, without a trailing slash.
	Base string
}

// KeysFor returns the keys of volume under prefix ("" means DefaultPrefix).
func KeysFor(prefix, volume string) (Keys, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasPrefix(prefix, "/") {
		return Keys{}, fmt.Errorf("etcd prefix %q: must start with /", prefix)
	}
	if err := validName("volume", volume); err != nil {
		return Keys{}, err
	}
	return Keys{Base: path.Join(prefix, volume)}, nil
}

// validName accepts the names used as key components: node and volume
// names (the transport's certificate names are stricter still).
func validName(what, s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%s name %q: must be 1-128 characters", what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%s name %q: only letters, digits, '-', '_' and '.' are allowed", what, s)
		}
	}
	return nil
}

// Election is the concurrency.Election prefix: the key under it with the
// lowest create revision is the leader, bound to the leader's lease.
func (k Keys) Election() string { return k.Base + "/leader" }

// Epoch holds the EpochRecord; it changes only in a Txn that checks the
// writer holds the leader key.
func (k Keys) Epoch() string { return k.Base + "/epoch" }

// Sync holds the SyncSet (not leased: it must outlive the primary).
func (k Keys) Sync() string { return k.Base + "/sync" }

// Pause exists while automatic failover is paused (PauseRecord).
func (k Keys) Pause() string { return k.Base + "/pause" }

// Failover holds the FailoverRecord of the last change of primary.
func (k Keys) Failover() string { return k.Base + "/failover" }

// Switchover exists while a planned switchover hands over to its target
// (SwitchoverRecord), bound to the old primary's lease.
func (k Keys) Switchover() string { return k.Base + "/switchover" }

// Members is the prefix of the leased member records.
func (k Keys) Members() string { return k.Base + "/members/" }

// Member is the key of node's member record.
func (k Keys) Member(node string) string { return k.Members() + node }

// Role is a node's role for one volume.
type Role string

const (
	RolePrimary Role = "primary"
	RoleMirror  Role = "mirror"
)

// Mode is the volume's replication mode.
type Mode string

const (
	ModeSync  Mode = "sync"
	ModeAsync Mode = "async"
)

// Member is a node's member record, bound to its session lease: it
// vanishes within one TTL of the node losing etcd.
type Member struct {
	Node  string `json:"node"`
	Role  Role   `json:"role"`
	Epoch uint64 `json:"epoch"`
	// Seq is the last seq in the node's journal: what it keeps if it is
	// promoted now. DurableSeq is the part of it that is fdatasync'd.
	Seq        uint64 `json:"seq"`
	DurableSeq uint64 `json:"durable_seq"`
	// Consistent: the store is a write-order prefix of the primary's
	// history (no resync under way).
	Consistent bool `json:"consistent"`
	// Following (mirrors): in contact with a serving primary within the
	// contact window when the record was written.
	Following bool `json:"following,omitempty"`
	// Fenced (primaries): the reason the node completes no writes, if it
	// does not.
	Fenced string `json:"fenced,omitempty"`
	// Peers (primaries): the mirrors as the primary sees them.
	Peers []PeerView `json:"peers,omitempty"`
	// Written is the writer's wall clock (unix ns), for display only.
	Written int64 `json:"written_unix_ns"`

	// Rev is the record's etcd ModRevision (not stored).
	Rev int64 `json:"-"`
}

// PeerView is a mirror as its primary sees it.
type PeerView struct {
	Name   string `json:"name"`
	InSync bool   `json:"in_sync"`
	Acked  uint64 `json:"acked_seq"`
	Lag    uint64 `json:"lag_records"`
}

// EpochRecord is the volume's current epoch and the node that took it.
type EpochRecord struct {
	Epoch uint64 `json:"epoch"`
	Node  string `json:"node"`
	Rev   int64  `json:"-"`
}

// SyncSet is the set of mirrors that may be promoted automatically and
// the guarantee the primary's acknowledgements give about them: every
// acknowledged write is on at least K of Members (sync mode; K is 0 in
// async mode, where the set only names the candidates).
type SyncSet struct {
	Mode    Mode     `json:"mode"`
	K       int      `json:"k"`
	Members []string `json:"members"`
	// Epoch is the epoch of the primary that wrote it.
	Epoch uint64 `json:"epoch"`
	Rev   int64  `json:"-"`
}

// Has reports whether name is in the set.
func (s *SyncSet) Has(name string) bool {
	if s == nil {
		return false
	}
	for _, m := range s.Members {
		if m == name {
			return true
		}
	}
	return false
}

// Need is how many members of the set a candidate must see (itself
// included) to be sure one of them holds every acknowledged write: any K
// of the set and any Need of it intersect.
func (s *SyncSet) Need() int {
	if s.Mode != ModeSync || s.K <= 0 {
		return 1
	}
	return len(s.Members) - s.K + 1
}

// PauseRecord says who paused automatic failover and why.
type PauseRecord struct {
	Reason string `json:"reason"`
	Since  int64  `json:"since_unix_ns"`
}

// FailoverRecord describes the last change of primary.
type FailoverRecord struct {
	Time      int64  `json:"time_unix_ns"`
	From      string `json:"from,omitempty"`
	To        string `json:"to"`
	Epoch     uint64 `json:"epoch"`
	Automatic bool   `json:"automatic"`
	Rev       int64  `json:"-"`
}

// SwitchoverRecord: the old primary demoted itself at Seq for To.
type SwitchoverRecord struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Seq   uint64 `json:"seq"`
	Epoch uint64 `json:"epoch"`
	Rev   int64  `json:"-"`
}

// decode parses one record: bounded, strict (unknown fields and trailing
// data are refused), then checked by validate.
func decode[T any](b []byte, v *T, validate func(*T) error) error {
	if len(b) > MaxRecord {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrMalformed, len(b), MaxRecord)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if d.More() {
		return fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	if err := validate(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

func decodeMember(b []byte) (Member, error) {
	var m Member
	err := decode(b, &m, func(m *Member) error {
		if err := validName("node", m.Node); err != nil {
			return err
		}
		if m.Role != RolePrimary && m.Role != RoleMirror {
			return fmt.Errorf("role %q", m.Role)
		}
		if len(m.Peers) > maxMembers {
			return fmt.Errorf("%d peers", len(m.Peers))
		}
		for _, p := range m.Peers {
			if err := validName("peer", p.Name); err != nil {
				return err
			}
		}
		return nil
	})
	return m, err
}

func decodeEpoch(b []byte) (EpochRecord, error) {
	var e EpochRecord
	err := decode(b, &e, func(e *EpochRecord) error {
		if e.Epoch == 0 {
			return errors.New("epoch 0")
		}
		return validName("node", e.Node)
	})
	return e, err
}

func decodeSync(b []byte) (SyncSet, error) {
	var s SyncSet
	err := decode(b, &s, func(s *SyncSet) error {
		if s.Mode != ModeSync && s.Mode != ModeAsync {
			return fmt.Errorf("mode %q", s.Mode)
		}
		if len(s.Members) > maxMembers {
			return fmt.Errorf("%d members", len(s.Members))
		}
		if s.K < 0 || s.K > len(s.Members) || (s.Mode == ModeAsync && s.K != 0) {
			return fmt.Errorf("k %d with %d members in %s mode", s.K, len(s.Members), s.Mode)
		}
		seen := make(map[string]bool, len(s.Members))
		for _, m := range s.Members {
			if err := validName("member", m); err != nil {
				return err
			}
			if seen[m] {
				return fmt.Errorf("member %q twice", m)
			}
			seen[m] = true
		}
		return nil
	})
	return s, err
}

func decodePause(b []byte) (PauseRecord, error) {
	var p PauseRecord
	return p, decode(b, &p, func(*PauseRecord) error { return nil })
}

func decodeFailover(b []byte) (FailoverRecord, error) {
	var f FailoverRecord
	err := decode(b, &f, func(f *FailoverRecord) error { return validName("node", f.To) })
	return f, err
}

func decodeSwitchover(b []byte) (SwitchoverRecord, error) {
	var s SwitchoverRecord
	err := decode(b, &s, func(s *SwitchoverRecord) error {
		if err := validName("node", s.From); err != nil {
			return err
		}
		return validName("node", s.To)
	})
	return s, err
}

// encode marshals a record (the types above cannot fail to marshal).
func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("coord: marshal %T: %v", v, err))
	}
	return string(b)
}

// unixNano converts a wall time for a record; the zero time is 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromUnixNano is the inverse of unixNano.
func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
