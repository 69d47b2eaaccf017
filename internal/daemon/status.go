package daemon

import (
	"github.com/blockmirror/blockmirror/internal/coord"
	"github.com/blockmirror/blockmirror/mirror"
)

// NodeStatus is what GET /v1/status returns for a process running one
// volume: Primary or Mirror is set, as the volume's role is.
//
// A process running several volumes sets Volumes instead: each volume's
// status by name, with the process's QUIC connection counts in
// Connections.
type NodeStatus struct {
	Primary     *PrimaryStatus        `json:"primary,omitempty"`
	Mirror      *mirror.ReplicaStatus `json:"mirror,omitempty"`
	Volumes     map[string]NodeStatus `json:"volumes,omitempty"`
	Connections *ConnStatus           `json:"connections,omitempty"`
	// Failover is the coordinator's view (automatic failover only):
	// leader or not, lease age, how long writes may still complete and,
	// when fenced, why; the last failover decision and etcd error.
	Failover *coord.LocalStatus `json:"failover,omitempty"`
	// Control is the node's control socket (promote, demote, verify),
	// "" without one; set by the admin server for the whole process. It
	// comes last so that the JSON still starts with the role.
	Control string `json:"control,omitempty"`
}

// PrimaryStatus is a primary volume's state.
type PrimaryStatus struct {
	Role        string                    `json:"role"`
	Volume      string                    `json:"volume"`
	Size        int64                     `json:"size"`
	Epoch       uint64                    `json:"epoch"`
	NBD         string                    `json:"nbd"`
	Checkpoint  uint64                    `json:"checkpoint_seq"`
	SplitBrain  string                    `json:"split_brain,omitempty"`
	Replication *mirror.ReplicationStatus `json:"replication,omitempty"`
}

// ConnStatus counts a multi-volume process's QUIC connections: a primary
// process's pool (one connection per mirror host, shared by its volumes)
// or a mirror host's accepted connections.
type ConnStatus struct {
	Open     int   `json:"open,omitempty"`
	Dialed   int   `json:"dialed,omitempty"`
	Accepted int64 `json:"accepted,omitempty"`
}
