package mirror_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// identities issues a test CA and node identities.
func identities(t *testing.T, names ...string) map[string]*transport.Identity {
	t.Helper()
	ca, err := transport.GenerateCA("test CA", transport.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]*transport.Identity{}
	for _, n := range names {
		if ids[n], err = ca.IssueNode(n, transport.KeyECDSAP256, 0); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// primaryVol is an in-process primary volume replicating to one mirror.
type primaryVol struct {
	node   *mirror.Node
	repl   *mirror.Replication
	vol    *mirror.Volume
	closed bool
}

func startPrimaryVol(t *testing.T, dir, name, mirrorAddr string, id *transport.Identity, pool *mirror.ConnPool) *primaryVol {
	t.Helper()
	return startPrimaryVolAt(t, dir, name, mirrorAddr, id, pool, wire.AckWritten)
}

func startPrimaryVolAt(t *testing.T, dir, name, mirrorAddr string, id *transport.Identity, pool *mirror.ConnPool, level wire.AckLevel) *primaryVol {
	t.Helper()
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: dir, Size: 4 << 20, Role: mirror.RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	repl, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: []mirror.PeerAddr{{Name: "m", Addr: mirrorAddr}}, Mode: wire.ModeSync, SyncAcks: 1,
		AckLevel: level, AckTimeout: 20 * time.Second, NodeName: "p", VolumeName: name, Pool: pool,
		Transport: transport.Config{Identity: id},
	})
	if err != nil {
		t.Fatal(err)
	}
	vol, err := mirror.NewVolume(node, repl, mirror.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &primaryVol{node: node, repl: repl, vol: vol}
}

func (p *primaryVol) close() {
	if p.closed {
		return
	}
	p.closed = true
	p.vol.Close()
	p.repl.Close()
	p.node.Close()
}

// newHost makes a mirror host on a free loopback port with one volume per
// name, each in dir/m-NAME.
func newHost(t *testing.T, id *transport.Identity, dir string, names ...string) *mirror.ReplicaHost {
	t.Helper()
	host, err := mirror.NewReplicaHost(mirror.ReplicaHostOptions{Listen: "127.0.0.1:0", Transport: transport.Config{Identity: id}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := host.AddVolume(t.Context(), n, mirror.ReplicaOptions{Name: "m", Node: mirror.NodeOptions{Dir: filepath.Join(dir, "m-"+n)}}); err != nil {
			t.Fatal(err)
		}
	}
	return host
}

// runHost runs host until the returned stop is called, which reports the
// host's error.
func runHost(t *testing.T, host *mirror.ReplicaHost) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- host.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("host: %v", err)
		}
	}
}

// TestReplicaHostRoutesVolumes: two primary volumes share one connection
// (one pool) to a host with two volumes; each volume's writes land in its
// own mirror volume, and a session naming an unknown volume is refused.
func TestReplicaHostRoutesVolumes(t *testing.T) {
	ids := identities(t, "p", "m")
	dir := t.TempDir()
	host := newHost(t, ids["m"], dir, "a", "b")
	if _, err := host.AddVolume(t.Context(), "a", mirror.ReplicaOptions{Name: "m", Node: mirror.NodeOptions{Dir: filepath.Join(dir, "m-a2")}}); err == nil {
		t.Fatal("a volume name was added twice")
	}
	stop := runHost(t, host)
	defer stop()

	pool := mirror.NewConnPool()
	pa := startPrimaryVol(t, filepath.Join(dir, "p-a"), "a", host.Addr(), ids["p"], pool)
	defer pa.close()
	pb := startPrimaryVol(t, filepath.Join(dir, "p-b"), "b", host.Addr(), ids["p"], pool)
	defer pb.close()
	wctx, wcancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer wcancel()
	for i := range 20 {
		for k, p := range []*primaryVol{pa, pb} {
			buf := bytes.Repeat([]byte{byte(16*k + i + 1)}, 4096)
			if err := p.vol.WriteAt(wctx, buf, int64(i)*4096, false); err != nil {
				t.Fatalf("write %d to volume %d: %v", i, k, err)
			}
		}
	}
	for k, name := range []string{"a", "b"} {
		p := []*primaryVol{pa, pb}[k]
		last := p.repl.Status().LastSeq
		d := host.Volume(name)
		deadline := time.Now().Add(20 * time.Second)
		for d.Status().Applied < last {
			if time.Now().After(deadline) {
				t.Fatalf("volume %s: mirror applied %d of %d", name, d.Status().Applied, last)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got, want := d.Status().Volume, p.node.Meta().Volume.String(); got != want {
			t.Fatalf("mirror volume %s holds volume %s, its primary serves %s", name, got, want)
		}
		got := make([]byte, 4096)
		for i := range 20 {
			if _, err := d.Node().Store.ReadAt(got, int64(i)*4096); err != nil {
				t.Fatal(err)
			}
			if want := byte(16*k + i + 1); got[0] != want || got[4095] != want {
				t.Fatalf("volume %s block %d: got %d, want %d", name, i, got[0], want)
			}
		}
	}
	// One connection per lane (lane 0 shares the log streams'), shared by
	// both volumes.
	conns := int64(mirror.DefaultLanes)
	if n := host.Connections(); n != conns {
		t.Errorf("the host accepted %d connections for two volumes of one primary, want %d", n, conns)
	}
	if s := pool.Stats(); s.Dialed != int(conns) {
		t.Errorf("pool %+v: want %d dials", s, conns)
	}

	// Stopping volume a's replication ends only its session: b goes on
	// writing on the same connection.
	pa.close()
	for i := range 10 {
		if err := pb.vol.WriteAt(wctx, bytes.Repeat([]byte{0xee}, 4096), int64(i)*4096, true); err != nil {
			t.Fatalf("volume b after a's session ended: %v", err)
		}
	}
	if n, s := host.Connections(), pool.Stats(); n != conns || s.Dialed != int(conns) || s.Open != int(conns) {
		t.Errorf("after a's session ended: host accepted %d, pool %+v; want the %d connections kept", n, s, conns)
	}

	// A volume the host does not have is refused with a reason.
	pc := startPrimaryVol(t, filepath.Join(dir, "p-c"), "c", host.Addr(), ids["p"], pool)
	defer pc.close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := pc.repl.Status()
		if len(st.Peers) == 1 && st.Peers[0].LastError != "" {
			if !bytes.Contains([]byte(st.Peers[0].LastError), []byte(`"c"`)) {
				t.Fatalf("refusal does not name the volume: %s", st.Peers[0].LastError)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refusal for an unknown volume: %+v", st.Peers)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSyncWriteIsOnMirrorAtAckLevel: for each ack level, every sync write
// that completes is already on the mirror at that level (the mirror sends
// its acks from the session goroutine, early for received, after the
// journal write otherwise).
func TestSyncWriteIsOnMirrorAtAckLevel(t *testing.T) {
	for _, level := range []wire.AckLevel{wire.AckReceived, wire.AckWritten, wire.AckDurable} {
		t.Run(level.String(), func(t *testing.T) {
			ids := identities(t, "p", "m")
			dir := t.TempDir()
			host := newHost(t, ids["m"], dir, "v")
			stop := runHost(t, host)
			defer stop()
			p := startPrimaryVolAt(t, filepath.Join(dir, "p"), "v", host.Addr(), ids["p"], mirror.NewConnPool(), level)
			defer p.close()
			wctx, wcancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer wcancel()
			d := host.Volume("v")
			for i := range 30 {
				if err := p.vol.WriteAt(wctx, bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i%8)*4096, i%7 == 0); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				seq := p.repl.Status().LastSeq
				st := d.Status()
				got := map[wire.AckLevel]uint64{wire.AckReceived: st.Received, wire.AckWritten: st.Written, wire.AckDurable: st.Durable}[level]
				if got < seq {
					t.Fatalf("write %d (seq %d) completed but the mirror is %s only through %d", i, seq, level, got)
				}
			}
		})
	}
}
