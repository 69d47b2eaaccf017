package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/coord"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/nbd"
)

// Volume is one volume of a process, in either role: as a primary it
// holds the node, its replication, the mirror.Volume that NBD serves, the
// NBD export and the responder; as a mirror the mirror daemon. A mirror
// promoted online becomes a primary in the same Volume and serves NBD;
// a primary demoted stops serving (the process ends, and is started again
// as a mirror).
//
// Methods are safe for concurrent use.
type Volume struct {
	cfg   config.VolumeConfig
	env   *env
	log   *slog.Logger
	hooks *volumeHooks

	// opened is a primary's node between New and Run.
	opened *mirror.Node

	mu   sync.Mutex
	role mirror.Role
	// mirror is the mirror daemon until an online promotion; primary is
	// set while the volume serves as primary.
	mirror  *mirror.Replica
	primary *primary
	// onStop ends the process (a demote, or a failure).
	onStop func(error)
	// changed is closed and replaced on every change of role (guarded by
	// mu).
	changed chan struct{}

	// lease gates the primary's completions under automatic failover (nil
	// without: every write completes as the replication allows); it
	// outlives the roles, as the coordinator does.
	lease *mirror.WriteLease
}

// primary is a volume serving as primary.
type primary struct {
	node  *mirror.Node
	repl  *mirror.Replication // nil without mirrors
	vol   *mirror.Volume
	resp  *mirror.Responder // nil without a listen address
	uri   string
	owned sync.WaitGroup // the responder and the metrics refresher
	dev   *volumeDevice
	// rejoin is closed when the coordinator demoted the volume: serve
	// returns errRejoin and the volume goes on as a mirror.
	rejoin     chan struct{}
	rejoinOnce sync.Once
}

// Name is the volume's configured name ("" for a volume given by flags).
func (v *Volume) Name() string { return v.cfg.Name }

// Role is the volume's current role.
func (v *Volume) Role() mirror.Role {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.role
}

// openPrimary opens (or creates) the primary volume of v.cfg and checks
// that it is a primary.
func (v *Volume) openPrimary(ctx context.Context) (*mirror.Node, error) {
	c := &v.cfg
	node, err := mirror.OpenNode(ctx, mirror.NodeOptions{
		Dir: c.Data, Disk: c.Disk, Size: c.Size.Bytes(), Role: mirror.RolePrimary,
		JournalMax: c.JournalMax.Bytes(), Logger: v.log, OnSync: v.hooks.onSync,
		JournalTestWriteDelay: v.env.opts.JournalTestWriteDelay,
	})
	if err != nil {
		return nil, fmt.Errorf("open volume: %w", err)
	}
	if m := node.Meta(); m.Role != mirror.RolePrimary {
		node.Close()
		return nil, fmt.Errorf("the volume in %s is a %s (epoch %d): run `blockmirror mirror` on it, or `blockmirror promote --data %s` to make it primary",
			c.Data, m.Role, m.Epoch, c.Data)
	}
	return node, nil
}

// mirrorOptions are the mirror daemon's options for v.
func (v *Volume) mirrorOptions() mirror.ReplicaOptions {
	c := &v.cfg
	return mirror.ReplicaOptions{
		Listen: c.Listen, Name: v.env.node.Name, Transport: v.env.tc, Logger: v.log, OnResyncChunk: v.hooks.onResyncChunk,
		Node: mirror.NodeOptions{Dir: c.Data, Disk: c.Disk, JournalMax: c.JournalMax.Bytes(), OnSync: v.hooks.onSync},
	}
}

// serve serves an opened primary node until ctx ends or the volume is
// demoted; then, after the process's NBD servers have finished their
// requests (the caller waits for them before it cancels ctx), it stops
// replication and the responder and closes the volume and the node.
func (v *Volume) serve(ctx context.Context, node *mirror.Node) (err error) {
	defer node.Close()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	m := node.Meta()
	log := v.log.With("volume", m.Volume.String())
	p := &primary{node: node, rejoin: make(chan struct{})}
	if p.repl, err = v.startReplication(node, log); err != nil {
		return err
	}
	if p.repl != nil {
		defer p.repl.Close()
	}
	var r mirror.Replicator
	if p.repl != nil {
		r = p.repl
	}
	if p.vol, err = mirror.NewVolume(node, r, mirror.VolumeOptions{Logger: log, OnAppend: v.hooks.onAppend, Lease: v.lease, IndirectMin: int(v.cfg.IndirectMin)}); err != nil {
		return err
	}
	p.dev = &volumeDevice{Volume: p.vol}
	defer func() {
		if err := p.vol.Close(); err != nil {
			log.Error("final checkpoint failed; the journal will be replayed at the next start", "err", err)
		}
	}()
	defer func() {
		stop() // the goroutines below end with ctx
		p.owned.Wait()
	}()
	if v.cfg.Listen != "" {
		tc, err := v.env.transport()
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		if p.resp, err = mirror.NewResponder(v.cfg.Listen, v.env.node.Name, node, tc, v.Fence, log); err != nil {
			return err
		}
		p.owned.Go(func() { p.resp.Run(ctx) })
	}
	srv, addr, err := v.env.nbdServer(v.cfg.NBD)
	if err != nil {
		return err
	}
	if err := srv.AddExport(nbd.Export{
		Name:        v.cfg.Export,
		Description: fmt.Sprintf("blockmirror volume %s", m.Volume),
		Device:      p.dev,
		ReadOnly:    v.cfg.ReadOnly,
		Observe:     v.hooks.observeNBD,
	}); err != nil {
		return err
	}
	defer srv.RemoveExport(v.cfg.Export)
	p.uri = nbdURI(addr, v.cfg.Export, v.env.nbdOpts.TLS != nil)
	p.owned.Go(func() {
		v.hooks.run(ctx, node.Journal, func() *mirror.ReplicationStatus {
			if p.repl == nil {
				return nil
			}
			return new(p.repl.Status())
		})
	})
	v.setPrimary(p)
	defer v.setPrimary(nil)
	log.Info("serving NBD", "uri", p.uri, "size", m.Size, "epoch", m.Epoch, "example", "nbdinfo "+p.uri)
	select {
	case <-ctx.Done():
		log.Info("stopped serving NBD")
		return nil
	case <-p.rejoin:
		// Connections to the export fail every request from now on (the
		// volume closes under them).
		p.dev.close(fmt.Errorf("%w (this node was demoted by its coordinator; connect to the new primary)", mirror.ErrDemoted))
		log.Info("stopped serving NBD: demoted")
		return errRejoin
	}
}

// startReplication begins replication to the volume's mirrors (nil
// without any).
func (v *Volume) startReplication(node *mirror.Node, log *slog.Logger) (*mirror.Replication, error) {
	c := &v.cfg
	if len(c.Mirrors) == 0 {
		return nil, nil
	}
	var mode mirror.Mode
	switch c.Mode {
	case config.ModeSync:
		mode = mirror.ModeSync
	case config.ModeAsync:
		mode = mirror.ModeAsync
	default:
		return nil, fmt.Errorf("--mode %q: want sync or async", c.Mode)
	}
	level, err := parseAckLevel(c.AckLevel)
	if err != nil {
		return nil, err
	}
	if c.SyncAcks < 1 || c.SyncAcks > len(c.Mirrors) {
		return nil, fmt.Errorf("--sync-acks %d: want 1..%d (the number of --mirror flags)", c.SyncAcks, len(c.Mirrors))
	}
	tc, err := v.env.transport()
	if err != nil {
		return nil, err
	}
	mirrors := c.Mirrors
	if v.lease != nil {
		mirrors = otherMirrors(c, v.env.node.Name)
	}
	if c.SyncAcks < 1 || c.SyncAcks > len(mirrors) {
		return nil, fmt.Errorf("--sync-acks %d: want 1..%d (the number of mirrors besides this node)", c.SyncAcks, len(mirrors))
	}
	peers := make([]mirror.PeerAddr, len(mirrors))
	names := make([]string, len(mirrors))
	for i, m := range mirrors {
		peers[i] = mirror.PeerAddr{Name: m.Name, Addr: m.Address}
		names[i] = m.Name + "=" + m.Address
	}
	rep, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: peers, Mode: mode, SyncAcks: c.SyncAcks, AckLevel: level,
		AllowDegraded: c.AllowDegraded, AckTimeout: c.AckTimeout.Duration(), MaxLag: c.MaxLag.Duration(),
		NodeName: v.env.node.Name, VolumeName: c.Name, Pool: v.env.pool, Transport: tc, Logger: log,
		Resync: mirror.ResyncOptions{Rate: c.ResyncRate.Bytes()}, Lanes: c.Lanes,
		OnAck: v.hooks.onAck, OnResyncSent: v.hooks.onResyncSent,
		// Under a coordinator: it owns the ack set, heartbeats stop with
		// the write lease, and come often enough for the failsafe's
		// contact window (the TTL).
		Coordinated: v.lease != nil, Lease: v.lease, HeartbeatEvery: v.heartbeatEvery(),
	})
	if err != nil {
		return nil, fmt.Errorf("start replication: %w", err)
	}
	log.Info("replicating", "mirrors", strings.Join(names, ","), "mode", c.Mode, "sync_acks", c.SyncAcks,
		"ack_level", c.AckLevel, "allow_degraded", c.AllowDegraded)
	return rep, nil
}

func parseAckLevel(s string) (mirror.AckLevel, error) {
	switch s {
	case config.AckReceived:
		return mirror.AckReceived, nil
	case config.AckWritten:
		return mirror.AckWritten, nil
	case config.AckDurable:
		return mirror.AckDurable, nil
	}
	return 0, fmt.Errorf("--ack-level %q: want received, written or durable", s)
}

// runMirror runs the mirror daemon d (of its own listener) until ctx
// ends; a volume promoted online goes on serving as primary.
func (v *Volume) runMirror(ctx context.Context, d *mirror.Replica) error {
	err := d.Run(ctx)
	if !errors.Is(err, mirror.ErrPromoted) {
		return err
	}
	v.log.Info("serving as primary after promotion", "nbd", v.cfg.NBD, "listen", v.cfg.Listen)
	return v.serve(ctx, d.Node())
}

// rejoin runs the volume as a mirror again after its coordinator demoted
// it (err is errRejoin), for as long as it keeps changing roles, until ctx
// ends; any other err is returned as it is.
func (v *Volume) rejoinLoop(ctx context.Context, err error) error {
	for errors.Is(err, errRejoin) && ctx.Err() == nil {
		d, oerr := mirror.NewReplica(ctx, v.mirrorOptions())
		if oerr != nil {
			return fmt.Errorf("rejoin as a mirror: %w", oerr)
		}
		v.setMirror(d)
		v.log.Info("rejoined as a mirror", "listen", v.cfg.Listen)
		err = v.runMirror(ctx, d)
	}
	if errors.Is(err, errRejoin) {
		return nil
	}
	return err
}

// heartbeatEvery is the primary's heartbeat period: default without a
// coordinator, else a fifth of the TTL (the contact window), at most 1 s.
func (v *Volume) heartbeatEvery() time.Duration {
	if v.lease == nil {
		return 0
	}
	ttl := v.env.node.FailoverTTL.Duration()
	if ttl <= 0 {
		ttl = coord.DefaultTTL
	}
	return min(time.Second, ttl/5)
}

// setPrimary records that the volume serves as primary (p), or no longer
// does (nil: it stops serving).
func (v *Volume) setPrimary(p *primary) {
	v.mu.Lock()
	v.primary = p
	if p != nil {
		v.mirror, v.role = nil, mirror.RolePrimary
	}
	v.notifyLocked()
	v.mu.Unlock()
	v.env.roleChanged()
}

// setMirror records that the volume runs as the mirror d.
func (v *Volume) setMirror(d *mirror.Replica) {
	v.mu.Lock()
	v.primary, v.mirror, v.role = nil, d, mirror.RoleMirror
	v.notifyLocked()
	v.mu.Unlock()
	v.env.roleChanged()
}

func (v *Volume) notifyLocked() {
	if v.changed != nil {
		close(v.changed)
	}
	v.changed = make(chan struct{})
}

// roleChange returns a channel closed at the next change of role.
func (v *Volume) roleChange() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.changed == nil {
		v.changed = make(chan struct{})
	}
	return v.changed
}

func (v *Volume) current() (*primary, *mirror.Replica) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.primary, v.mirror
}

// Fence is the fence policy: a node is primary in a higher epoch, so
// this primary fails every write from now on (its replication fails
// what is pending). A mirror ignores it.
func (v *Volume) Fence(epoch uint64) {
	p, _ := v.current()
	if p == nil {
		return
	}
	v.log.Error("a node of a higher epoch exists: this primary is fenced and fails every write", "their_epoch", epoch)
	p.vol.SetReadOnly(fmt.Errorf("%w (a node is primary in epoch %d)", mirror.ErrFenced, epoch))
	if p.repl != nil {
		p.repl.Fence(epoch)
	}
}

// Demote turns this primary into a mirror: it stops taking writes, waits
// for those in flight, makes everything durable (locally and on mirrors
// as the mode asks) and records the new role (mirror.Volume.Demote); then
// the process stops serving. With splitBrainLoser the node gives up its
// side of a split brain. On failure the volume takes writes again.
func (v *Volume) Demote(ctx context.Context, splitBrainLoser bool) error {
	p, _ := v.current()
	if p == nil {
		return mirror.ErrNotPrimary
	}
	if err := p.vol.Demote(ctx, splitBrainLoser); err != nil {
		return err
	}
	v.log.Warn("demoted to mirror; this process stops serving. Start the node again with `blockmirror mirror --data " + p.node.Dir + " --listen ...`")
	v.onStop(nil)
	return nil
}

// Promote makes this mirror the primary of the next epoch online (force:
// even with an inconsistent store); the volume then serves NBD as
// primary. It returns the new metadata.
func (v *Volume) Promote(ctx context.Context, force bool) (*mirror.Meta, error) {
	_, d := v.current()
	if d == nil {
		return nil, mirror.ErrNotMirror
	}
	return d.Promote(ctx, force)
}

// Verify compares this primary with its mirrors (resync: and resyncs the
// differing ranges).
func (v *Volume) Verify(ctx context.Context, resync bool) (mirror.VerifyReport, error) {
	p, _ := v.current()
	switch {
	case p == nil:
		return mirror.VerifyReport{}, mirror.ErrNotPrimary
	case p.repl == nil:
		return mirror.VerifyReport{}, errors.New("this primary has no mirrors to verify")
	}
	return p.repl.Verify(ctx, resync), nil
}

// Status is the volume's state, as GET /v1/status shows it.
func (v *Volume) Status() NodeStatus {
	p, d := v.current()
	switch {
	case p != nil:
		m := p.node.Meta()
		ps := &PrimaryStatus{Role: string(m.Role), Volume: m.Volume.String(), Size: m.Size, Epoch: m.Epoch,
			NBD: p.uri, Checkpoint: m.CheckpointSeq}
		if p.repl != nil {
			ps.Replication = new(p.repl.Status())
		}
		if p.resp != nil && p.resp.SplitBrain() != "" {
			ps.SplitBrain = p.resp.SplitBrain()
		} else if ps.Replication != nil {
			ps.SplitBrain = ps.Replication.SplitBrain
		}
		return NodeStatus{Primary: ps}
	case d != nil:
		return NodeStatus{Mirror: new(d.Status())}
	}
	return NodeStatus{}
}

// nbdURI formats the NBD URI clients use for an export (nbds:// with TLS).
func nbdURI(a net.Addr, export string, tls bool) string {
	scheme := "nbd"
	if tls {
		scheme = "nbds"
	}
	if a.Network() == "unix" {
		return fmt.Sprintf("%s+unix:///%s?socket=%s", scheme, url.PathEscape(export), a.String())
	}
	host := a.String()
	if strings.HasPrefix(host, "[::]") || strings.HasPrefix(host, "0.0.0.0") {
		_, port, _ := net.SplitHostPort(host)
		host = net.JoinHostPort("127.0.0.1", port)
	}
	return fmt.Sprintf("%s://%s/%s", scheme, host, url.PathEscape(export))
}

// volumeDevice adapts a mirror.Volume to nbd.Device (mirror does not
// import nbd). Once closed (the volume was demoted in a process that goes
// on as a mirror) every request fails: NBD connections outlive the export.
type volumeDevice struct {
	*mirror.Volume
	mu     sync.RWMutex
	closed error
}

// enter admits a request (release with mu.RUnlock), or says why not.
func (d *volumeDevice) enter() error {
	d.mu.RLock()
	if d.closed != nil {
		d.mu.RUnlock()
		return d.closed
	}
	return nil
}

// close fails every later request with err, once those in flight ended.
func (d *volumeDevice) close(err error) {
	d.mu.Lock()
	d.closed = err
	d.mu.Unlock()
}

func (d *volumeDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	return d.Volume.ReadAt(ctx, p, off)
}

func (d *volumeDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	return d.Volume.WriteAt(ctx, p, off, fua)
}

func (d *volumeDevice) Trim(ctx context.Context, off, length int64, fua bool) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	return d.Volume.Trim(ctx, off, length, fua)
}

func (d *volumeDevice) Flush(ctx context.Context) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	return d.Volume.Flush(ctx)
}

func (d *volumeDevice) WriteZeroes(ctx context.Context, off, length int64, f nbd.ZeroFlags) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	return d.Volume.WriteZeroes(ctx, off, length, mirror.ZeroFlagsView{FUA: f.FUA, NoHole: f.NoHole, FastZero: f.FastZero})
}
