package mirror

import (
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/resync"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// Names of mirror/wire, mirror/core and mirror/resync that the commands
// and the end-to-end tests use through this package (the drivers use the
// subpackages directly).

// Replication settings (wire format values).
type (
	Mode     = wire.Mode
	AckLevel = wire.AckLevel
)

const (
	ModeSync    = wire.ModeSync
	ModeAsync   = wire.ModeAsync
	AckReceived = wire.AckReceived
	AckWritten  = wire.AckWritten
	AckDurable  = wire.AckDurable
)

// ErrFenced: a node with a higher epoch exists; this primary must not
// acknowledge writes any more (see core.ErrFenced).
var ErrFenced = core.ErrFenced

// DefaultSyncChunk is the resync and verify chunk size.
const DefaultSyncChunk = resync.DefaultSyncChunk
