package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/nbd"
	"github.com/blockmirror/blockmirror/transport"
)

// The node assembly driven in process: real volumes in temp dirs, real
// NBD on loopback TCP, real QUIC between a primary and a mirror on
// loopback, control requests over the control socket.

const testSize = 16 << 20

// certsDir issues certificates for names into a temp dir.
func certsDir(t *testing.T, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := transport.InitCertsWith(dir, names, transport.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// nodeConfig is a node with its control socket in a short temp dir and no
// admin endpoint.
func nodeConfig(t *testing.T, name, certs string) config.NodeConfig {
	return config.NodeConfig{
		Name: name, Certs: certs, Control: filepath.Join(testutil.SocketDir(t), name+".sock"),
		ControlGroup: "", NBDTLS: config.NBDTLSOff, LogLevel: "debug", LogFormat: "text",
	}
}

func primaryVolume(t *testing.T, mirrors ...config.MirrorConfig) config.VolumeConfig {
	return config.VolumeConfig{
		Role: config.RolePrimary, Data: t.TempDir(), Size: testSize, NBD: "127.0.0.1:0", Export: "disk",
		JournalMax: 64 << 20, Mode: config.ModeSync, SyncAcks: 1, AckLevel: config.AckWritten,
		AckTimeout: config.Duration(5 * time.Second), MaxLag: config.DefaultMaxLag, Mirrors: mirrors,
	}
}

// running is a Process serving in a goroutine.
type running struct {
	t      *testing.T
	p      *Process
	cancel context.CancelFunc
	done   chan error
}

// start opens and runs cfg; the test's end stops it.
func start(t *testing.T, cfg *config.Process) *running {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(t.Context(), cfg, Options{Logger: log, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// stop cancels Run and returns its error.
func (r *running) stop() error {
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(30 * time.Second):
		r.t.Fatal("Run did not return within 30 s of its context ending")
		return nil
	}
}

// ended returns Run's error once it returned by itself.
func (r *running) ended(timeout time.Duration) error {
	r.t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(timeout):
		r.t.Fatalf("Run did not return within %v", timeout)
		return nil
	}
}

// primaryStatus waits until the process's one volume serves as primary.
func (r *running) primaryStatus(timeout time.Duration) *PrimaryStatus {
	r.t.Helper()
	var ps *PrimaryStatus
	testutil.WaitFor(r.t, timeout, "the volume serving as primary", func() (bool, string) {
		ps = r.p.Status().Primary
		return ps != nil, "not yet"
	})
	return ps
}

func (r *running) control() string { return r.p.cfg.Node.Control }

// connect connects to the export of an nbd:// URI.
func connect(t *testing.T, uri string) *nbd.Client {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "nbd" {
		t.Fatalf("NBD URI %q: %v", uri, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := nbd.Connect(ctx, u.Host, nbd.ConnectOptions{Export: strings.TrimPrefix(u.Path, "/")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// TestPrimaryServesVerifiesAndDemotes: a primary process of one volume
// serves NBD (status says where), answers verify without mirrors with a
// refusal that says why, offers demote but not promote, and once demoted
// over the control socket it stops serving: Run returns nil, the volume on
// disk is a mirror, and its writes reached the disk image.
func TestPrimaryServesVerifiesAndDemotes(t *testing.T) {
	certs := certsDir(t, "p1")
	vol := primaryVolume(t)
	r := start(t, &config.Process{Role: config.RolePrimary, Node: nodeConfig(t, "p1", certs), Volumes: []config.VolumeConfig{vol}})
	ps := r.primaryStatus(10 * time.Second)
	if ps.Role != "primary" || ps.Epoch != 1 || ps.Size != testSize || ps.Replication != nil || !strings.HasPrefix(ps.NBD, "nbd://127.0.0.1:") {
		t.Fatalf("status %+v", ps)
	}
	c := connect(t, ps.NBD)
	want := pattern(0x5a, 64<<10)
	if err := c.WriteAt(t.Context(), want, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	var rep map[string]any
	if err := Post(t.Context(), r.control(), "/v1/verify", &rep); err == nil || !strings.Contains(err.Error(), "no mirrors to verify") {
		t.Errorf("verify without mirrors: %v", err)
	}
	if err := Post(t.Context(), r.control(), "/v1/promote", &rep); err == nil || !strings.Contains(err.Error(), "does not offer promote") {
		t.Errorf("promote on a primary: %v", err)
	}
	var res struct {
		Demoted bool
		Data    string
	}
	if err := Post(t.Context(), r.control(), "/v1/demote", &res); err != nil || !res.Demoted || res.Data != vol.Data {
		t.Fatalf("demote: %+v %v", res, err)
	}
	if err := r.ended(20 * time.Second); err != nil {
		t.Fatalf("Run after a demote: %v", err)
	}
	m, err := mirror.LoadMeta(vol.Data)
	if err != nil || m.Role != mirror.RoleMirror {
		t.Fatalf("meta after demote: %+v %v", m, err)
	}
	img, err := os.ReadFile(filepath.Join(vol.Data, mirror.DiskFile))
	if err != nil || !bytes.Equal(img[1<<20:1<<20+len(want)], want) {
		t.Fatalf("the acknowledged write is not in the image: %v", err)
	}
	if _, err := os.Stat(r.control()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left behind: %v", err)
	}
}

// TestFenceFailsWrites: the fence policy makes every later write fail
// (and reads go on).
func TestFenceFailsWrites(t *testing.T) {
	certs := certsDir(t, "p1")
	r := start(t, &config.Process{Role: config.RolePrimary, Node: nodeConfig(t, "p1", certs), Volumes: []config.VolumeConfig{primaryVolume(t)}})
	c := connect(t, r.primaryStatus(10*time.Second).NBD)
	if err := c.WriteAt(t.Context(), pattern(1, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	r.p.Volumes()[0].Fence(7)
	var errno nbd.Errno
	if err := c.WriteAt(t.Context(), pattern(2, 4096), 0, false); !errors.As(err, &errno) {
		t.Fatalf("write after the fence: %v, want an NBD error", err)
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(t.Context(), got, 0); err != nil || got[0] != 1 {
		t.Fatalf("read after the fence: %v, first byte %d", err, got[0])
	}
}

// TestMirrorPromotedOnlineServesAndFencesTheOldPrimary: a primary
// replicates to a mirror (sync); the primary stops; the mirror is promoted
// over its control socket and, in the same process, serves NBD as the
// primary of epoch 2 with every acknowledged write; the old primary,
// started again, learns from the new primary's responder that it is
// fenced and completes no write.
func TestMirrorPromotedOnlineServesAndFencesTheOldPrimary(t *testing.T) {
	certs := certsDir(t, "p1", "m1")
	listen := testutil.FreeUDPAddr(t)
	mnode := nodeConfig(t, "m1", certs)
	mvol := config.VolumeConfig{
		Role: config.RoleMirror, Data: t.TempDir(), Listen: listen, NBD: "127.0.0.1:0", Export: "disk", JournalMax: 64 << 20,
		Mode: config.ModeSync, SyncAcks: 1, AckLevel: config.AckWritten, AckTimeout: config.Duration(5 * time.Second),
	}
	m := start(t, &config.Process{Role: config.RoleMirror, Node: mnode, Volumes: []config.VolumeConfig{mvol}})
	if st := m.p.Status(); st.Mirror == nil || st.Primary != nil {
		t.Fatalf("mirror status %+v", st)
	}

	pvol := primaryVolume(t, config.MirrorConfig{Name: "m1", Address: listen})
	pcfg := &config.Process{Role: config.RolePrimary, Node: nodeConfig(t, "p1", certs), Volumes: []config.VolumeConfig{pvol}}
	p := start(t, pcfg)
	c := connect(t, p.primaryStatus(10*time.Second).NBD)
	want := pattern(0xc3, 128<<10)
	if err := c.WriteAt(t.Context(), want, 4<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st := p.p.Status().Primary.Replication; st == nil || len(st.Peers) != 1 || st.Peers[0].Name != "m1" {
		t.Fatalf("replication status %+v", st)
	}
	c.Close()
	if err := p.stop(); err != nil {
		t.Fatalf("primary stop: %v", err)
	}

	var res struct {
		Promoted bool
		Epoch    uint64
	}
	if err := Post(t.Context(), m.control(), "/v1/promote", &res); err != nil || !res.Promoted || res.Epoch != 2 {
		t.Fatalf("promote: %+v %v", res, err)
	}
	ps := m.primaryStatus(20 * time.Second)
	if ps.Epoch != 2 || ps.Role != "primary" {
		t.Fatalf("promoted status %+v", ps)
	}
	mc := connect(t, ps.NBD)
	got := make([]byte, len(want))
	if err := mc.ReadAt(t.Context(), got, 4<<20); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the promoted mirror lacks the acknowledged write: %v", err)
	}
	if err := mc.WriteAt(t.Context(), pattern(0x11, 4096), 0, true); err != nil {
		t.Fatalf("write on the promoted mirror: %v", err)
	}
	var rep map[string]any
	if err := Post(t.Context(), m.control(), "/v1/promote", &rep); err == nil {
		t.Error("a promoted node still offers promote")
	}

	// The old primary comes back (epoch 1) and meets epoch 2 at the
	// responder: fenced, its writes fail.
	pcfg.Volumes[0].AckTimeout = config.Duration(2 * time.Second)
	old := start(t, pcfg)
	oc := connect(t, old.primaryStatus(10*time.Second).NBD)
	testutil.WaitFor(t, 20*time.Second, "the old primary fenced", func() (bool, string) {
		rs := old.p.Status().Primary.Replication
		return rs != nil && rs.Fenced, "not fenced"
	})
	if err := oc.WriteAt(t.Context(), pattern(0x22, 4096), 0, false); err == nil {
		t.Fatal("the fenced old primary completed a write")
	}
}

// TestSeveralPrimariesOneProcess: two volumes in one process share one
// NBD server (one address, two exports) and report their status by name;
// verify needs ?volume=NAME and demote is not offered.
func TestSeveralPrimariesOneProcess(t *testing.T) {
	certs := certsDir(t, "p1")
	addr := testutil.FreeTCPAddr(t)
	a, b := primaryVolume(t), primaryVolume(t)
	a.Name, a.Export, a.NBD = "a", "a", addr
	b.Name, b.Export, b.NBD = "b", "b", addr
	r := start(t, &config.Process{Role: config.RolePrimary, Node: nodeConfig(t, "p1", certs), Volumes: []config.VolumeConfig{a, b}})
	var st NodeStatus
	testutil.WaitFor(t, 10*time.Second, "both volumes serving", func() (bool, string) {
		st = r.p.Status()
		return st.Volumes["a"].Primary != nil && st.Volumes["b"].Primary != nil, "not yet"
	})
	if st.Primary != nil || st.Connections == nil {
		t.Fatalf("status of several volumes: %+v", st)
	}
	for _, name := range []string{"a", "b"} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		c, err := nbd.Connect(ctx, addr, nbd.ConnectOptions{Export: name})
		cancel()
		if err != nil {
			t.Fatalf("export %s: %v", name, err)
		}
		if err := c.WriteAt(t.Context(), pattern(name[0], 4096), 0, true); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	var rep map[string]any
	if err := Post(t.Context(), r.control(), "/v1/verify", &rep); err == nil || !strings.Contains(err.Error(), "one of a, b") {
		t.Errorf("verify without a volume: %v", err)
	}
	if err := Post(t.Context(), r.control(), "/v1/verify?volume=a", &rep); err == nil || !strings.Contains(err.Error(), "no mirrors") {
		t.Errorf("verify a: %v", err)
	}
	if err := Post(t.Context(), r.control(), "/v1/demote", &rep); err == nil || !strings.Contains(err.Error(), "does not offer demote") {
		t.Errorf("demote in a process of several volumes: %v", err)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	for _, v := range []config.VolumeConfig{a, b} {
		img, err := os.ReadFile(filepath.Join(v.Data, mirror.DiskFile))
		if err != nil || img[0] != v.Name[0] {
			t.Errorf("volume %s: image %v, first byte %q", v.Name, err, img[:1])
		}
	}
}

// TestOpenRefusesAMirrorAsPrimary: serving a mirror's data directory as
// primary fails before anything listens, saying what to run instead.
func TestOpenRefusesAMirrorAsPrimary(t *testing.T) {
	certs := certsDir(t, "p1")
	vol := primaryVolume(t)
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: vol.Data, Size: testSize, Role: mirror.RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	if err := mirror.Demote(node, false); err != nil {
		t.Fatal(err)
	}
	node.Close()
	_, err = New(t.Context(), &config.Process{Role: config.RolePrimary, Node: nodeConfig(t, "p1", certs), Volumes: []config.VolumeConfig{vol}}, Options{})
	if err == nil || !strings.Contains(err.Error(), "blockmirror promote --data") {
		t.Fatalf("New on a mirror's volume: %v", err)
	}
}

// TestSeveralVolumesShareConnections: a primary process of two volumes
// replicates to a mirror process of two volumes over one QUIC connection
// (one per mirror host); the mirror host routes each session by volume
// name, and each volume's writes reach its own mirror.
func TestSeveralVolumesShareConnections(t *testing.T) {
	certs := certsDir(t, "p1", "h1")
	listen := testutil.FreeUDPAddr(t)
	var mvols, pvols []config.VolumeConfig
	for _, name := range []string{"a", "b"} {
		mvols = append(mvols, config.VolumeConfig{Name: name, Role: config.RoleMirror, Data: t.TempDir(), Listen: listen,
			NBD: config.DefaultNBD, Export: name, JournalMax: 64 << 20})
		pv := primaryVolume(t, config.MirrorConfig{Name: "h1", Address: listen})
		pv.Name, pv.Export, pv.NBD = name, name, "127.0.0.1:0"
		pvols = append(pvols, pv)
	}
	m := start(t, &config.Process{Role: config.RoleMirror, Node: nodeConfig(t, "h1", certs), Volumes: mvols})
	p := start(t, &config.Process{Role: config.RolePrimary, Node: nodeConfig(t, "p1", certs), Volumes: pvols})
	var st NodeStatus
	testutil.WaitFor(t, 20*time.Second, "both volumes replicating in sync", func() (bool, string) {
		st = p.p.Status()
		for _, name := range []string{"a", "b"} {
			ps := st.Volumes[name].Primary
			if ps == nil || ps.Replication == nil || len(ps.Replication.Peers) != 1 || ps.Replication.Peers[0].State != "in-sync" {
				return false, name + " not in sync"
			}
		}
		return true, ""
	})
	for i, name := range []string{"a", "b"} {
		c := connect(t, st.Volumes[name].Primary.NBD)
		if err := c.WriteAt(t.Context(), pattern(byte('a'+i), 4096), 0, true); err != nil {
			t.Fatalf("write to %s: %v", name, err)
		}
	}
	testutil.WaitFor(t, 20*time.Second, "the mirror volumes applied the writes", func() (bool, string) {
		ms := m.p.Status()
		for _, name := range []string{"a", "b"} {
			if mv := ms.Volumes[name].Mirror; mv == nil || mv.Applied < 1 {
				return false, name + " has not applied"
			}
		}
		return true, ""
	})
	// One connection per record lane (lane 0 the log streams'), shared by
	// both volumes.
	lanes := mirror.DefaultLanes
	if c := m.p.Status().Connections; c == nil || c.Accepted != int64(lanes) {
		t.Errorf("mirror host accepted %+v connections, want %d (one per lane) for both volumes", c, lanes)
	}
	if c := p.p.Status().Connections; c == nil || c.Open != lanes {
		t.Errorf("primary pool %+v, want %d open connections", c, lanes)
	}
	p.stop()
	m.stop()
	for i, v := range mvols {
		img, err := os.ReadFile(filepath.Join(v.Data, mirror.DiskFile))
		if err != nil || img[0] != byte('a'+i) {
			t.Errorf("mirror volume %s: %v, first byte %q", v.Name, err, img[:1])
		}
	}
}

// TestMirrorVolumesNeedOneListener: the volumes of a mirror process share
// one QUIC listener; different addresses are refused with what to do.
func TestMirrorVolumesNeedOneListener(t *testing.T) {
	certs := certsDir(t, "h1")
	vols := []config.VolumeConfig{
		{Name: "a", Role: config.RoleMirror, Data: t.TempDir(), Listen: testutil.FreeUDPAddr(t), JournalMax: 64 << 20},
		{Name: "b", Role: config.RoleMirror, Data: t.TempDir(), Listen: testutil.FreeUDPAddr(t), JournalMax: 64 << 20},
	}
	_, err := New(t.Context(), &config.Process{Role: config.RoleMirror, Node: nodeConfig(t, "h1", certs), Volumes: vols}, Options{})
	if err == nil || !strings.Contains(err.Error(), "listen on different addresses") || !strings.Contains(err.Error(), "--volume") {
		t.Fatalf("two listeners: %v", err)
	}
}

func TestNBDURI(t *testing.T) {
	for _, tc := range []struct {
		addr   net.Addr
		export string
		tls    bool
		want   string
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10809}, "disk", false, "nbd://127.0.0.1:10809/disk"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 10809}, "a b", true, "nbds://127.0.0.1:10809/a%20b"},
		{&net.UnixAddr{Name: "/run/bm/nbd.sock", Net: "unix"}, "disk", false, "nbd+unix:///disk?socket=/run/bm/nbd.sock"},
	} {
		if got := nbdURI(tc.addr, tc.export, tc.tls); got != tc.want {
			t.Errorf("nbdURI(%v, %q, %v) = %q, want %q", tc.addr, tc.export, tc.tls, got, tc.want)
		}
	}
}

// TestBusyNBDAddressEndsRun: a primary whose NBD address is taken fails
// at once with the address in the error, also when its responder was
// already started (every goroutine of the volume is stopped and waited
// for on the way out).
func TestBusyNBDAddressEndsRun(t *testing.T) {
	certs := certsDir(t, "p1")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	vol := primaryVolume(t)
	vol.NBD, vol.Listen = busy.Addr().String(), testutil.FreeUDPAddr(t)
	r := start(t, &config.Process{Role: config.RolePrimary, Node: nodeConfig(t, "p1", certs), Volumes: []config.VolumeConfig{vol}})
	if err := r.ended(10 * time.Second); err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("Run with a busy NBD address: %v", err)
	}
}
