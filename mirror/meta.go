package mirror

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/blockmirror/blockmirror/internal/atomicfile"
	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// MetaFile is the name of the node metadata file inside the data directory.
const MetaFile = "meta.json"

// metaFormat is the version of the metadata file format.
const metaFormat = 1

// Role is what a node does for a volume.
type Role string

const (
	RolePrimary Role = "primary"
	RoleMirror  Role = "mirror"
)

// UUID is a volume identity (see wire.UUID).
type UUID = wire.UUID

// EpochStart records where an epoch branch begins (see wire.EpochStart).
type EpochStart = wire.EpochStart

// NewUUID returns a random (version 4) UUID.
func NewUUID() (UUID, error) {
	var u UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, fmt.Errorf("mirror: generate volume UUID: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

// PeerMeta is what a primary remembers durably about one mirror.
type PeerMeta struct {
	// DurableSeq is the highest seq the mirror acknowledged as durable.
	DurableSeq uint64 `json:"durable_seq"`
	// NeedsResync is set when records the mirror had not acknowledged were
	// dropped from the journal; Dirty then lists the regions they touched.
	NeedsResync bool             `json:"needs_resync,omitempty"`
	Dirty       []journal.Region `json:"dirty,omitempty"`
	// TrackedFrom: every record from this seq on that the mirror lacks is
	// in the journal or marked in its dirty bitmap (see peerstate.go). A
	// mirror whose last seq is below TrackedFrom-1 is compared in full.
	TrackedFrom uint64 `json:"tracked_from,omitempty"`
	// Resyncing: this node began a resync of the mirror that has not
	// completed, and the mirror's dirty bitmap marks what it has still to
	// copy. A mirror whose store is inconsistent (an interrupted resync)
	// resumes only with that bitmap: another primary's does not know what
	// the interrupted resync had not copied yet (core.PlanResync).
	Resyncing bool `json:"resyncing,omitempty"`
}

// Meta is a node's durable state for one volume. It is small and replaced
// atomically on every change (temp file, fsync, rename, fsync directory).
type Meta struct {
	Format  int          `json:"format"`
	Volume  UUID         `json:"volume"`
	Size    int64        `json:"size"`
	Role    Role         `json:"role"`
	Epoch   uint64       `json:"epoch"`
	History []EpochStart `json:"history"`
	// CheckpointSeq: the store holds the effect of every record ≤ it
	// (synced); recovery replays the journal from CheckpointSeq+1.
	CheckpointSeq uint64 `json:"checkpoint_seq"`
	// Inconsistent: the store is not a write-order prefix of the primary's
	// history (a resync is in progress); such a node must not be promoted
	// without force.
	Inconsistent bool `json:"inconsistent,omitempty"`
	// NeedsResync (a mirror): the journal holds records after a fork point
	// that the primary's history does not (they were quarantined); the
	// node must be reset by a resync before it follows any primary again.
	NeedsResync bool                `json:"needs_resync,omitempty"`
	Peers       map[string]PeerMeta `json:"peers,omitempty"`
	// WritesOpen: the node serves writes as a primary and has not stopped
	// cleanly since (set before its first write, cleared once its journal
	// is durable at a clean stop). Found set at the next start, it means
	// the node may have streamed records to mirrors that its own journal
	// lost; it then starts a new branch of its epoch (see Node.BeginWrites).
	WritesOpen bool `json:"writes_open,omitempty"`
	// FencedBy (a primary): a node is primary in this higher epoch; this
	// node must not complete writes any more, also after a restart, until
	// it is demoted (and rejoins as a mirror).
	FencedBy uint64 `json:"fenced_by,omitempty"`
	// AcceptDivergence: an operator chose this node as the losing side of
	// a split brain; on contact with a primary of the same epoch it
	// quarantines its own records after the fork and resyncs instead of
	// refusing. Cleared once done.
	AcceptDivergence bool `json:"accept_divergence,omitempty"`
}

// ErrNoMeta is returned by LoadMeta when the directory holds no volume yet.
var ErrNoMeta = errors.New("no volume metadata")

// LoadMeta reads dir/meta.json from the operating system's file system.
func LoadMeta(dir string) (*Meta, error) { return LoadMetaFS(vfs.OS, dir) }

// LoadMetaFS reads dir/meta.json from fsys.
func LoadMetaFS(fsys vfs.FS, dir string) (*Meta, error) {
	p := filepath.Join(dir, MetaFile)
	b, err := vfs.ReadFile(fsys, p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("mirror: load %s: %w", p, ErrNoMeta)
	}
	if err != nil {
		return nil, fmt.Errorf("mirror: load %s: %w", p, err)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("mirror: load %s: corrupt metadata: %w", p, err)
	}
	if m.Format != metaFormat {
		return nil, fmt.Errorf("mirror: load %s: metadata format %d, this build reads %d", p, m.Format, metaFormat)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("mirror: load %s: %w", p, err)
	}
	return &m, nil
}

func (m *Meta) validate() error {
	if m.Size <= 0 {
		return fmt.Errorf("bad volume size %d", m.Size)
	}
	if m.Role != RolePrimary && m.Role != RoleMirror {
		return fmt.Errorf("bad role %q", m.Role)
	}
	if err := core.ValidHistory(m.History, m.Epoch); err != nil {
		return fmt.Errorf("epoch history: %w", err)
	}
	if n := len(m.History); n > 0 && m.History[n-1].Epoch != m.Epoch {
		return fmt.Errorf("epoch %d is not the last in the history (%d)", m.Epoch, m.History[n-1].Epoch)
	}
	return nil
}

// Save writes the metadata atomically to dir/meta.json on fsys.
func (m *Meta) Save(fsys vfs.FS, dir string) error {
	m.Format = metaFormat
	if err := m.validate(); err != nil {
		return fmt.Errorf("mirror: save metadata: %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("mirror: encode metadata: %w", err)
	}
	if err := atomicfile.WriteFS(fsys, filepath.Join(dir, MetaFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("mirror: save metadata: %w", err)
	}
	return nil
}

// Clone returns a deep copy.
func (m *Meta) Clone() *Meta {
	c := *m
	c.History = append([]EpochStart(nil), m.History...)
	if m.Peers != nil {
		c.Peers = make(map[string]PeerMeta, len(m.Peers))
		for k, v := range m.Peers {
			v.Dirty = append([]journal.Region(nil), v.Dirty...)
			c.Peers[k] = v
		}
	}
	return &c
}

// randomID returns a random non-zero epoch ID.
func randomID() uint64 {
	var b [8]byte
	for {
		rand.Read(b[:])
		if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}

// nodeState is what the failover rules (core.Promotion, core.Demotion,
// core.RestartBranch) read of the metadata.
func (m *Meta) nodeState() core.NodeState {
	return core.NodeState{
		Primary: m.Role == RolePrimary, Epoch: m.Epoch, History: m.History, FencedBy: m.FencedBy,
		Inconsistent: m.Inconsistent, NeedsResync: m.NeedsResync, WritesOpen: m.WritesOpen,
	}
}
