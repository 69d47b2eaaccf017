package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

const devSize = 8 << 20

type testServer struct {
	srv  *nbd.Server
	addr net.Addr
	stop func() // cancels Serve and checks it returned nil
}

func startServer(t testing.TB, opts nbd.Options, exports ...nbd.Export) *testServer {
	t.Helper()
	if overTLS != nil && opts.TLS == nil {
		opts.TLS, opts.RequireTLS = overTLS.serverConfig(false), true
	}
	srv, err := nbd.NewServerChecked(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exports {
		if err := srv.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	return runServer(t, srv)
}

// runServer serves srv on a loopback port until the test ends.
func runServer(t testing.TB, srv *nbd.Server) *testServer {
	t.Helper()
	ln, err := nbd.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	ts := &testServer{srv: srv, addr: ln.Addr()}
	ts.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve returned %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("Serve did not return after cancel")
			}
		})
	}
	t.Cleanup(ts.stop)
	return ts
}

func oneExport(t testing.TB, d nbd.Device) *testServer {
	return startServer(t, nbd.Options{}, nbd.Export{Name: "disk", Description: "test disk", Device: d})
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestExportNameNoZeroes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		flags    uint32
		zeroes   int
		expected string
	}{
		{"with-zeroes", 1, 124, "disk"},
		{"no-zeroes", 3, 0, "disk"},
		{"default-empty-name", 3, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newMemDev(devSize)
			copy(d.data, "hello")
			ts := oneExport(t, d)
			c := dialRaw(t, ts.addr, tc.flags)
			c.sendOpt(cOptExportName, []byte(tc.expected))
			b := make([]byte, 10+tc.zeroes)
			if _, err := io.ReadFull(c.Reader(), b); err != nil {
				t.Fatal(err)
			}
			if sz := binary.BigEndian.Uint64(b); sz != devSize {
				t.Fatalf("size %d", sz)
			}
			tf := binary.BigEndian.Uint16(b[8:])
			want := uint16(cFlagHasFlags | cFlagFlush | cFlagFUA | cFlagTrim | cFlagWZeroes | cFlagFastZero | cFlagMultiConn)
			if tf != want {
				t.Fatalf("transmission flags %#x, want %#x", tf, want)
			}
			if !bytes.Equal(b[10:], make([]byte, tc.zeroes)) {
				t.Fatal("reserved bytes not zero")
			}
			// The next bytes must be a reply: any stray zeroes would break it.
			c.start()
			got, errno := c.read(0, 5)
			if errno != 0 || string(got) != "hello" {
				t.Fatalf("read: errno %d data %q", errno, got)
			}
			c.disconnect()
		})
	}
}

func TestExportNameUnknownCloses(t *testing.T) {
	ts := oneExport(t, newMemDev(devSize))
	ts.srv.AddExport(nbd.Export{Name: "other", Device: newMemDev(4096)}) // "" is now ambiguous
	for _, name := range []string{"nope", ""} {
		c := dialRaw(t, ts.addr, 3)
		c.sendOpt(cOptExportName, []byte(name))
		if _, err := c.Reader().ReadByte(); err != io.EOF {
			t.Fatalf("%q: want EOF, got %v", name, err)
		}
		c.Conn().Close()
	}
}

func TestInfoAndGo(t *testing.T) {
	d := newMemDev(devSize)
	ts := startServer(t, nbd.Options{},
		nbd.Export{Name: "disk", Description: "the disk", Device: d, MinBlockSize: 512, PreferredBlockSize: 4096, MaxBlockSize: 1 << 20},
		nbd.Export{Name: "ro", Device: newMemDev(4096), ReadOnly: true})
	c := dialRaw(t, ts.addr, 3)

	ei, typ := c.info(cOptInfo, "disk", cInfoName, cInfoDesc, cInfoBlock)
	if typ != cRepAck {
		t.Fatalf("INFO: %#x", typ)
	}
	if ei.size != devSize || !ei.hasName || ei.name != "disk" || !ei.hasDesc || ei.desc != "the disk" {
		t.Fatalf("INFO: %+v", ei)
	}
	if !ei.hasBlock || ei.minB != 512 || ei.prefB != 4096 || ei.maxB != 1<<20 {
		t.Fatalf("INFO block sizes: %+v", ei)
	}
	// Block sizes are sent even when not asked for.
	ei, _ = c.info(cOptInfo, "ro")
	if !ei.hasBlock || ei.minB != 1 || ei.prefB != 4096 || ei.maxB != 32<<20 || ei.hasName {
		t.Fatalf("INFO ro: %+v", ei)
	}
	if ei.tflags&cFlagReadOnly == 0 || ei.tflags&(cFlagTrim|cFlagWZeroes|cFlagFUA) != 0 {
		t.Fatalf("ro flags %#x", ei.tflags)
	}
	if _, typ := c.info(cOptInfo, "missing"); typ != cRepErrUnknown {
		t.Fatalf("unknown export: %#x", typ)
	}
	if _, typ := c.info(cOptGo, "missing"); typ != cRepErrUnknown {
		t.Fatalf("GO unknown export: %#x", typ)
	}
	// Malformed: count says 3 infos, data holds 1.
	bad := infoData("disk", 1)
	binary.BigEndian.PutUint16(bad[4+4:], 3)
	c.sendOpt(cOptGo, bad)
	if r := c.mustOptReply(cOptGo); r.typ != cRepErrInvalid {
		t.Fatalf("malformed GO: %#x", r.typ)
	}
	// Structured reply with data is invalid; without, fine.
	c.sendOpt(cOptStructured, []byte{1})
	if r := c.mustOptReply(cOptStructured); r.typ != cRepErrInvalid {
		t.Fatalf("structured with data: %#x", r.typ)
	}
	c.sendOpt(cOptStructured, nil)
	if r := c.mustOptReply(cOptStructured); r.typ != cRepAck {
		t.Fatalf("structured: %#x", r.typ)
	}
	ei, typ = c.info(cOptGo, "disk")
	if typ != cRepAck || ei.tflags&cFlagDF == 0 {
		t.Fatalf("GO: %#x flags %#x", typ, ei.tflags)
	}
	c.start()
	// Misaligned to MinBlockSize 512 and over MaxBlockSize 1 MiB.
	if _, e := c.read(100, 512); e != eEINVAL {
		t.Fatalf("misaligned read: %d", e)
	}
	if _, e := c.read(0, 2<<20); e != eEINVAL {
		t.Fatalf("oversize read: %d", e)
	}
	if _, e := c.read(512, 512); e != 0 {
		t.Fatalf("aligned read: %d", e)
	}
	c.disconnect()
}

func TestList(t *testing.T) {
	ts := startServer(t, nbd.Options{},
		nbd.Export{Name: "b", Description: "second", Device: newMemDev(4096)},
		nbd.Export{Name: "a", Device: newMemDev(4096)})
	c := dialRaw(t, ts.addr, 3)
	c.sendOpt(cOptList, nil)
	var got []string
	for {
		r := c.mustOptReply(cOptList)
		if r.typ == cRepAck {
			break
		}
		if r.typ != cRepServer {
			t.Fatalf("LIST reply %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		got = append(got, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if fmt.Sprint(got) != "[a| b|second]" {
		t.Fatalf("LIST: %q", got)
	}
	c.sendOpt(cOptList, []byte("x"))
	if r := c.mustOptReply(cOptList); r.typ != cRepErrInvalid {
		t.Fatalf("LIST with data: %#x", r.typ)
	}
}

func TestAbort(t *testing.T) {
	ts := oneExport(t, newMemDev(devSize))
	c := dialRaw(t, ts.addr, 3)
	c.sendOpt(cOptAbort, nil)
	if r := c.mustOptReply(cOptAbort); r.typ != cRepAck {
		t.Fatalf("ABORT: %#x", r.typ)
	}
	if _, err := c.Reader().ReadByte(); err != io.EOF {
		t.Fatalf("after ABORT: %v", err)
	}
}

func TestUnsupportedOptions(t *testing.T) {
	ts := oneExport(t, newMemDev(devSize))
	c := dialRaw(t, ts.addr, 3)
	for _, opt := range []uint32{cOptStartTLS, cOptListMeta, cOptSetMeta, cOptExtHeaders, 4, 0x1234, 0xffffffff} {
		want := uint32(cRepErrUnsup)
		if opt == cOptStartTLS && overTLS != nil {
			want = cRepErrInvalid // TLS is already active
		}
		c.sendOpt(opt, []byte("some data"))
		if r := c.mustOptReply(opt); r.typ != want {
			t.Fatalf("option %d: %#x, want %#x", opt, r.typ, want)
		}
	}
	if _, typ := c.info(cOptGo, "disk"); typ != cRepAck {
		t.Fatalf("GO after unsupported options: %#x", typ)
	}
}

func TestBadClientFlagsClose(t *testing.T) {
	ts := oneExport(t, newMemDev(devSize))
	c := dialRaw(t, ts.addr, 1|4)
	if _, err := c.Reader().ReadByte(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestOversizeOption(t *testing.T) {
	ts := oneExport(t, newMemDev(devSize))
	// 1 MiB of data for an unknown option: drained, ERR_TOO_BIG, usable after.
	c := dialRaw(t, ts.addr, 3)
	c.sendOpt(cOptInfo, make([]byte, 1<<20))
	if r := c.mustOptReply(cOptInfo); r.typ != cRepErrTooBig {
		t.Fatalf("1 MiB option: %#x", r.typ)
	}
	if _, typ := c.info(cOptGo, "disk"); typ != cRepAck {
		t.Fatalf("GO after big option: %#x", typ)
	}
	c.Conn().Close()
	// A claimed 3 GiB option is not read at all: the server closes.
	c = dialRaw(t, ts.addr, 3)
	b := binary.BigEndian.AppendUint64(nil, cIHAVEOPT)
	b = binary.BigEndian.AppendUint32(b, cOptGo)
	b = binary.BigEndian.AppendUint32(b, 3<<30)
	c.raw(b)
	if _, err := c.Reader().ReadByte(); err == nil {
		t.Fatal("server answered a 3 GiB option")
	}
	// EXPORT_NAME beyond the cap closes too.
	c = dialRaw(t, ts.addr, 3)
	b = binary.BigEndian.AppendUint64(nil, cIHAVEOPT)
	b = binary.BigEndian.AppendUint32(b, cOptExportName)
	b = binary.BigEndian.AppendUint32(b, 100<<10)
	c.raw(b)
	if _, err := c.Reader().ReadByte(); err == nil {
		t.Fatal("server answered an oversized EXPORT_NAME")
	}
}

func TestReadWrite(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			d := newMemDev(devSize)
			ts := oneExport(t, d)
			c := negotiate(t, ts.addr, "disk", structured)
			for i, sz := range []int{1, 511, 4096, 65536, 1 << 20, 4<<20 + 7} {
				off := uint64(i * 4099)
				data := randBytes(sz, uint64(i))
				if e := c.write(off, data, 0); e != 0 {
					t.Fatalf("write %d: errno %d", sz, e)
				}
				if !bytes.Equal(d.snapshot(int(off), sz), data) {
					t.Fatalf("device content differs after write of %d", sz)
				}
				got, e := c.read(off, uint32(sz))
				if e != 0 || !bytes.Equal(got, data) {
					t.Fatalf("read %d: errno %d equal %v", sz, e, bytes.Equal(got, data))
				}
			}
			// Last byte of the export.
			if e := c.write(devSize-1, []byte{7}, cCmdFlagFUA); e != 0 {
				t.Fatalf("write last byte: %d", e)
			}
			if got, e := c.read(devSize-1, 1); e != 0 || got[0] != 7 {
				t.Fatalf("read last byte: %d %v", e, got)
			}
			c.disconnect()
		})
	}
}

func TestCommandsReachDevice(t *testing.T) {
	d := newMemDev(devSize)
	ts := oneExport(t, d)
	c := negotiate(t, ts.addr, "disk", true)
	data := randBytes(8192, 9)
	c.write(0, data, 0)
	if d.fuaCalls.Load() != 0 {
		t.Fatal("FUA without flag")
	}
	if e := c.write(0, data, cCmdFlagFUA); e != 0 || d.fuaCalls.Load() != 1 {
		t.Fatalf("FUA write: %d fua=%d", e, d.fuaCalls.Load())
	}
	if e := c.do(cCmdFlush, 0, 0, 0, nil); e != 0 || d.flushes.Load() != 1 {
		t.Fatalf("flush: %d %d", e, d.flushes.Load())
	}
	if e := c.do(cCmdTrim, cCmdFlagFUA, 0, 4096, nil); e != 0 || d.trims.Load() != 1 || d.fuaCalls.Load() != 2 {
		t.Fatalf("trim: %d", e)
	}
	if got, _ := c.read(0, 8192); !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:], data[4096:]) {
		t.Fatal("trim did not zero exactly its range")
	}
	if e := c.do(cCmdZeroes, cCmdFlagNoHole|cCmdFlagFUA, 4096, 100, nil); e != 0 {
		t.Fatalf("write zeroes: %d", e)
	}
	if f := d.lastZero.Load().(nbd.ZeroFlags); !f.NoHole || !f.FUA || f.FastZero {
		t.Fatalf("zero flags %+v", f)
	}
	if got, _ := c.read(4096, 200); !bytes.Equal(got[:100], make([]byte, 100)) || !bytes.Equal(got[100:], data[4196:4296]) {
		t.Fatal("write zeroes wrong range")
	}
	// FAST_ZERO on a device that cannot: ENOTSUP reaches the client.
	if e := c.do(cCmdZeroes, cCmdFlagFastZero, 0, 4096, nil); e != eENOTSUP {
		t.Fatalf("fast zero: errno %d", e)
	}
	if f := d.lastZero.Load().(nbd.ZeroFlags); !f.FastZero {
		t.Fatalf("zero flags %+v", f)
	}
	c.disconnect()
}

func TestInvalidRequestsKeepConnection(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			d := newMemDev(devSize)
			ts := oneExport(t, d)
			c := negotiate(t, ts.addr, "disk", structured)
			before := d.calls.Load()
			cases := []struct {
				name       string
				cmd, flags uint16
				off        uint64
				length     uint32
				payload    []byte
				want       uint32
			}{
				{"read past end", cCmdRead, 0, devSize - 10, 11, nil, eEINVAL},
				{"read overflow", cCmdRead, 0, 1<<64 - 512, 1024, nil, eEINVAL},
				{"write past end", cCmdWrite, 0, devSize - 10, 11, make([]byte, 11), eENOSPC},
				{"write overflow", cCmdWrite, 0, 1<<64 - 2, 4, make([]byte, 4), eENOSPC},
				{"trim past end", cCmdTrim, 0, devSize, 1, nil, eENOSPC},
				{"zero past end", cCmdZeroes, 0, devSize + 4096, 4096, nil, eENOSPC},
				{"read over 32MiB", cCmdRead, 0, 0, 32<<20 + 1, nil, eEINVAL},
				{"write over 32MiB", cCmdWrite, 0, 0, 33 << 20, make([]byte, 33<<20), eEINVAL},
				{"unknown command", 99, 0, 0, 0, nil, eEINVAL},
				{"cache (not advertised)", cCmdCache, 0, 0, 4096, nil, eEINVAL},
				{"block status", cCmdBlock, 0, 0, 4096, nil, eEINVAL},
				{"bad flag on read", cCmdRead, cCmdFlagNoHole, 0, 4096, nil, eEINVAL},
				{"bad flag on write", cCmdWrite, 1 << 9, 0, 8, make([]byte, 8), eEINVAL},
				{"fast zero on trim", cCmdTrim, cCmdFlagFastZero, 0, 4096, nil, eEINVAL},
			}
			if !structured {
				cases = append(cases, struct {
					name       string
					cmd, flags uint16
					off        uint64
					length     uint32
					payload    []byte
					want       uint32
				}{"DF without structured", cCmdRead, cCmdFlagDF, 0, 512, nil, eEINVAL})
			}
			for _, tc := range cases {
				if e := c.do(tc.cmd, tc.flags, tc.off, tc.length, tc.payload); e != tc.want {
					t.Errorf("%s: errno %d, want %d", tc.name, e, tc.want)
				}
			}
			if n := d.calls.Load() - before; n != 0 {
				t.Errorf("%d invalid requests reached the device", n)
			}
			// Zero-length requests succeed without touching the device.
			for _, cmd := range []uint16{cCmdRead, cCmdWrite, cCmdTrim, cCmdZeroes} {
				if e := c.do(cmd, 0, 4096, 0, nil); e != 0 {
					t.Errorf("zero-length cmd %d: %d", cmd, e)
				}
			}
			if n := d.calls.Load() - before; n != 0 {
				t.Errorf("zero-length requests reached the device %d times", n)
			}
			// The connection still works.
			data := randBytes(4096, 3)
			if e := c.write(8192, data, 0); e != 0 {
				t.Fatal(e)
			}
			if got, e := c.read(8192, 4096); e != 0 || !bytes.Equal(got, data) {
				t.Fatal("read after errors failed")
			}
			c.disconnect()
		})
	}
}

func TestReadOnlyExport(t *testing.T) {
	d := newMemDev(devSize)
	copy(d.data, "ro data")
	ts := startServer(t, nbd.Options{}, nbd.Export{Name: "ro", Device: d, ReadOnly: true})
	c := negotiate(t, ts.addr, "ro", true)
	if c.Flags()&cFlagReadOnly == 0 {
		t.Fatalf("flags %#x lack READ_ONLY", c.Flags())
	}
	if e := c.write(0, []byte("xx"), 0); e != eEPERM {
		t.Fatalf("write: %d", e)
	}
	if e := c.do(cCmdTrim, 0, 0, 4096, nil); e != eEPERM {
		t.Fatalf("trim: %d", e)
	}
	if e := c.do(cCmdZeroes, 0, 0, 4096, nil); e != eEPERM {
		t.Fatalf("zero: %d", e)
	}
	if got, e := c.read(0, 7); e != 0 || string(got) != "ro data" {
		t.Fatalf("read: %d %q", e, got)
	}
	if e := c.do(cCmdFlush, 0, 0, 0, nil); e != 0 {
		t.Fatalf("flush: %d", e)
	}
	c.disconnect()
}

func TestDeviceErrorFailsOnlyItsRequest(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			d := newMemDev(devSize)
			d.failAt.Store(5 * 4096)
			ts := oneExport(t, d)
			c := negotiate(t, ts.addr, "disk", structured)
			var calls []*nbd.Call
			for i := range 10 {
				calls = append(calls, c.send(cCmdRead, 0, uint64(i*4096), 4096, nil))
			}
			w := c.send(cCmdWrite, 0, 5*4096, 4096, make([]byte, 4096))
			for i, cl := range calls {
				e, err := c.wait(cl)
				if err != nil {
					t.Fatal(err)
				}
				if want := map[bool]uint32{true: eEIO, false: 0}[i == 5]; e != want {
					t.Fatalf("read %d: errno %d want %d", i, e, want)
				}
				if structured && i == 5 && cl.Message == "" {
					t.Fatal("structured error without message")
				}
			}
			if e, _ := c.wait(w); e != eEIO {
				t.Fatalf("write: %d", e)
			}
			d.failAt.Store(-1)
			if _, e := c.read(5*4096, 4096); e != 0 {
				t.Fatal("connection unusable after device error")
			}
			c.disconnect()
		})
	}
}

// TestManyInFlight keeps 256 requests in flight; the device completes
// them in an order unrelated to submission.
func TestManyInFlight(t *testing.T) {
	const n = 256
	d := newMemDev(devSize)
	data := randBytes(n*4096, 5)
	copy(d.data, data)
	d.gate = make(chan struct{})
	d.delay = func(op string, off int64) time.Duration {
		return time.Duration((off/4096*7919)%97) * 50 * time.Microsecond
	}
	ts := oneExport(t, d)
	c := negotiate(t, ts.addr, "disk", true)
	calls := make([]*nbd.Call, n)
	for i := range n {
		calls[i] = c.send(cCmdRead, 0, uint64(i*4096), 4096, nil)
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.cur.Load() < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := d.cur.Load(); got != n {
		t.Fatalf("%d requests concurrently in the device, want %d", got, n)
	}
	close(d.gate)
	for i, cl := range calls {
		if e, err := c.wait(cl); e != 0 || err != nil {
			t.Fatalf("read %d: %d %v", i, e, err)
		}
		if !bytes.Equal(cl.Data, data[i*4096:(i+1)*4096]) {
			t.Fatalf("read %d: wrong data", i)
		}
	}
	inversions := 0
	for i := 1; i < n; i++ {
		if calls[i].Order < calls[i-1].Order {
			inversions++
		}
	}
	t.Logf("%d of %d replies arrived before their predecessor", inversions, n)
	if inversions < n/8 {
		t.Fatalf("only %d of %d replies out of request order; completion order should follow device delays", inversions, n)
	}
	c.disconnect()
}

func TestMaxInFlightCap(t *testing.T) {
	d := newMemDev(devSize)
	d.gate = make(chan struct{})
	ts := startServer(t, nbd.Options{MaxInFlight: 4}, nbd.Export{Name: "disk", Device: d})
	c := negotiate(t, ts.addr, "disk", false)
	var calls []*nbd.Call
	for i := range 20 {
		calls = append(calls, c.send(cCmdWrite, 0, uint64(i*512), 512, make([]byte, 512)))
	}
	time.Sleep(100 * time.Millisecond)
	if got := d.cur.Load(); got != 4 {
		t.Fatalf("%d requests in the device, want 4", got)
	}
	close(d.gate)
	for _, cl := range calls {
		if e, err := c.wait(cl); e != 0 || err != nil {
			t.Fatal(e, err)
		}
	}
	if p := d.peak.Load(); p != 4 {
		t.Fatalf("peak concurrency %d, want 4", p)
	}
	c.disconnect()
}

func TestDiscCompletesInFlight(t *testing.T) {
	d := newMemDev(devSize)
	d.delay = func(op string, off int64) time.Duration { return 30 * time.Millisecond }
	ts := oneExport(t, d)
	c := negotiate(t, ts.addr, "disk", false)
	var calls []*nbd.Call
	for i := range 32 {
		calls = append(calls, c.send(cCmdWrite, 0, uint64(i*4096), 4096, randBytes(4096, uint64(i))))
	}
	c.send(cCmdDisc, 0, 0, 0, nil)
	for i, cl := range calls {
		if e, err := c.wait(cl); e != 0 || err != nil {
			t.Fatalf("write %d after DISC: %d %v", i, e, err)
		}
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("server did not close after DISC")
	}
	for i := range 32 {
		if !bytes.Equal(d.snapshot(i*4096, 4096), randBytes(4096, uint64(i))) {
			t.Fatalf("write %d not applied", i)
		}
	}
}

func settleGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, want ≤ %d\n%s", n, want, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClientDropMidFlight(t *testing.T) {
	d := newMemDev(devSize)
	d.gate = make(chan struct{}) // never opened: requests wait for ctx
	ts := oneExport(t, d)
	base := runtime.NumGoroutine()
	for round := range 3 {
		c := negotiate(t, ts.addr, "disk", round%2 == 0)
		for i := range 50 {
			c.send(cCmdRead, 0, uint64(i*4096), 4096, nil)
			c.send(cCmdWrite, 0, uint64(i*4096), 4096, make([]byte, 4096))
		}
		for d.cur.Load() < 100 {
			time.Sleep(time.Millisecond)
		}
		c.Conn().Close()
		<-c.Done()
	}
	settleGoroutines(t, base)
	if d.cur.Load() != 0 || d.cancelled.Load() != 300 {
		t.Fatalf("device: %d still in flight, %d cancelled", d.cur.Load(), d.cancelled.Load())
	}
	// The server still serves new clients.
	d.gate = nil
	c := negotiate(t, ts.addr, "disk", true)
	if _, e := c.read(0, 4096); e != 0 {
		t.Fatal(e)
	}
	c.disconnect()
	settleGoroutines(t, base)
}

func TestGracefulShutdown(t *testing.T) {
	d := newMemDev(devSize)
	d.delay = func(op string, off int64) time.Duration { return 200 * time.Millisecond }
	ts := oneExport(t, d)
	c := negotiate(t, ts.addr, "disk", true)
	cl := c.send(cCmdWrite, cCmdFlagFUA, 0, 4096, randBytes(4096, 1))
	for d.cur.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	ts.stop() // waits for Serve to return nil
	if e, err := c.wait(cl); e != 0 || err != nil {
		t.Fatalf("in-flight write at shutdown: %d %v", e, err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed at shutdown")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("shutdown took %v", el)
	}
	if _, err := net.Dial("tcp", ts.addr.String()); err == nil {
		t.Fatal("listener still open after shutdown")
	}
}

func TestShutdownTimeout(t *testing.T) {
	d := newMemDev(devSize)
	d.gate = make(chan struct{}) // requests never finish on their own
	ts := startServer(t, nbd.Options{ShutdownTimeout: 100 * time.Millisecond}, nbd.Export{Name: "disk", Device: d})
	c := negotiate(t, ts.addr, "disk", false)
	cl := c.send(cCmdRead, 0, 0, 4096, nil)
	for d.cur.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	ts.stop()
	if el := time.Since(start); el > 3*time.Second || el < 100*time.Millisecond {
		t.Fatalf("shutdown took %v", el)
	}
	<-c.Done()
	// The read was cancelled; its ESHUTDOWN reply may or may not have
	// made it out before the close.
	if e, err := c.wait(cl); err == nil && e != 108 {
		t.Fatalf("abandoned read: errno %d", e)
	}
}

func TestErrnoOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{syscall.EPERM, 1},
		{fmt.Errorf("x: %w", syscall.EROFS), 1},
		{syscall.EIO, 5},
		{syscall.ENOMEM, 12},
		{fmt.Errorf("wrapped: %w", syscall.EINVAL), 22},
		{syscall.ENOSPC, 28},
		{syscall.EDQUOT, 28},
		{syscall.EFBIG, 28},
		{syscall.EOVERFLOW, 75},
		{syscall.ENOTSUP, 95},
		{syscall.ESHUTDOWN, 108},
		{context.Canceled, 108},
		{syscall.ENOENT, 5},
		{errors.New("plain"), 5},
	} {
		if got := nbd.ErrnoOf(tc.err); got != tc.want {
			t.Errorf("ErrnoOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestAddExportValidation(t *testing.T) {
	s := nbd.NewServer(nbd.Options{})
	d := newMemDev(4096)
	bad := []nbd.Export{
		{Name: "nil device"},
		{Name: "a\x00b", Device: d},
		{Name: "min", Device: d, MinBlockSize: 3},
		{Name: "pref", Device: d, MinBlockSize: 8192, PreferredBlockSize: 4096},
		{Name: "max", Device: d, MaxBlockSize: 64 << 20},
		{Name: string(make([]byte, 5000)), Device: d},
	}
	for _, e := range bad {
		if err := s.AddExport(e); err == nil {
			t.Errorf("AddExport(%q) accepted", e.Name)
		}
	}
	if err := s.AddExport(nbd.Export{Name: "x", Device: d}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(nbd.Export{Name: "x", Device: d}); !errors.Is(err, nbd.ErrExportExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := nbd.NewServerChecked(nbd.Options{MaxInFlight: -1}); err == nil {
		t.Fatal("negative MaxInFlight accepted")
	}
}

func TestDefaultAndRemoveExport(t *testing.T) {
	a, b := newMemDev(4096), newMemDev(8192)
	ts := startServer(t, nbd.Options{}, nbd.Export{Name: "a", Device: a}, nbd.Export{Name: "b", Device: b})
	c := dialRaw(t, ts.addr, 3)
	if _, typ := c.info(cOptInfo, ""); typ != cRepErrUnknown {
		t.Fatalf("empty name with two exports and no default: %#x", typ)
	}
	ts.srv.SetDefaultExport("b")
	if ei, typ := c.info(cOptInfo, ""); typ != cRepAck || ei.size != 8192 {
		t.Fatalf("default export: %#x %d", typ, ei.size)
	}
	ts.srv.RemoveExport("b")
	if _, typ := c.info(cOptInfo, "b"); typ != cRepErrUnknown {
		t.Fatalf("removed export: %#x", typ)
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ln, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	// Live socket: refused.
	if _, err := nbd.Listen("unix:" + sock); err == nil {
		t.Fatal("second Listen on a live socket succeeded")
	}
	// Make it stale: close without unlinking.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatal(err)
	}
	ln, err = nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	d := newMemDev(4096)
	copy(d.data, "unix")
	srv := nbd.NewServer(nbd.Options{})
	srv.AddExport(nbd.Export{Name: "", Device: d})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, ln) }()
	c := negotiate(t, ln.Addr(), "", false)
	if got, e := c.read(0, 4); e != 0 || string(got) != "unix" {
		t.Fatal(e, got)
	}
	c.disconnect()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A regular file is never removed.
	reg := filepath.Join(dir, "file")
	os.WriteFile(reg, []byte("keep"), 0o600)
	if _, err := nbd.Listen("unix:" + reg); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(reg); string(b) != "keep" {
		t.Fatal("regular file damaged")
	}
}

func TestMultipleConnectionsShareDevice(t *testing.T) {
	d := newMemDev(devSize)
	ts := oneExport(t, d)
	var wg sync.WaitGroup
	for k := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := negotiate(t, ts.addr, "disk", k%2 == 0)
			defer c.disconnect()
			for i := range 50 {
				off := uint64((k*50 + i) * 4096)
				data := randBytes(4096, off)
				if e := c.write(off, data, 0); e != 0 {
					t.Errorf("write: %d", e)
					return
				}
				if got, e := c.read(off, 4096); e != 0 || !bytes.Equal(got, data) {
					t.Errorf("read back failed")
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestHandshakeTimeout(t *testing.T) {
	ts := startServer(t, nbd.Options{HandshakeTimeout: 100 * time.Millisecond}, nbd.Export{Name: "disk", Device: newMemDev(4096)})
	nc, err := net.Dial("tcp", ts.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := io.Copy(io.Discard, nc); err != nil {
		t.Fatalf("want clean close, got %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("idle handshake closed after %v", el)
	}
}

// TestBufferBudget: payload bytes in flight are capped by MaxBufferBytes.
func TestBufferBudget(t *testing.T) {
	d := newMemDev(64 << 20)
	d.gate = make(chan struct{})
	ts := startServer(t, nbd.Options{MaxBufferBytes: 32 << 20}, nbd.Export{Name: "disk", Device: d})
	c := negotiate(t, ts.addr, "disk", false)
	payload := make([]byte, 20<<20)
	var calls []*nbd.Call
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 3 {
			calls = append(calls, c.send(cCmdWrite, 0, uint64(i)*(20<<20), 20<<20, payload))
		}
	}()
	// Wait for the first write to reach the device (slow under -race and
	// TLS), then give a second one time to get in if the budget let it.
	for deadline := time.Now().Add(10 * time.Second); d.cur.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if got := d.cur.Load(); got != 1 {
		t.Fatalf("%d 20 MiB writes in the device with a 32 MiB budget, want 1", got)
	}
	close(d.gate)
	<-done
	for _, cl := range calls {
		if e, err := c.wait(cl); e != 0 || err != nil {
			t.Fatal(e, err)
		}
	}
	c.disconnect()
}

// TestPipelinedAfterExportName: requests sent in the same packet as
// NBD_OPT_EXPORT_NAME (before its reply) are served.
func TestPipelinedAfterExportName(t *testing.T) {
	d := newMemDev(devSize)
	copy(d.data[4096:], "pipelined")
	ts := oneExport(t, d)
	c := dialRaw(t, ts.addr, 3)
	b := binary.BigEndian.AppendUint64(nil, cIHAVEOPT)
	b = binary.BigEndian.AppendUint32(b, cOptExportName)
	b = binary.BigEndian.AppendUint32(b, 4)
	b = append(b, "disk"...)
	for i := range 3 {
		b = binary.BigEndian.AppendUint32(b, cReqMagic)
		b = binary.BigEndian.AppendUint32(b, cCmdRead)
		b = binary.BigEndian.AppendUint64(b, uint64(100+i))
		b = binary.BigEndian.AppendUint64(b, 4096)
		b = binary.BigEndian.AppendUint32(b, 9)
	}
	c.raw(b)
	if _, err := io.ReadFull(c.Reader(), make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r := make([]byte, 16+9)
		if _, err := io.ReadFull(c.Reader(), r); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint32(r) != cSimpleMagic || binary.BigEndian.Uint32(r[4:]) != 0 || string(r[16:]) != "pipelined" {
			t.Fatalf("reply % x", r)
		}
	}
	c.Conn().Close()
}

// ownDev keeps the buffer of every write (nbd.OwningWriter), as the
// journal does.
type ownDev struct {
	*memDev
	mu   sync.Mutex
	kept [][]byte
}

func (d *ownDev) WriteOwned(ctx context.Context, p []byte, off int64, fua bool) error {
	d.mu.Lock()
	d.kept = append(d.kept, p)
	d.mu.Unlock()
	return d.memDev.WriteAt(ctx, p, off, fua)
}

// A device that keeps write buffers gets them through WriteOwned, each
// exactly its payload, and the server never reuses one: every buffer
// still holds its write after many more requests of the same size.
func TestOwningWriterKeepsBuffers(t *testing.T) {
	d := &ownDev{memDev: newMemDev(devSize)}
	ts := oneExport(t, d)
	c := negotiate(t, ts.addr, "disk", false)
	const n = 64
	var calls []*nbd.Call
	for i := range n {
		calls = append(calls, c.send(cCmdWrite, 0, uint64(i%8*65536), 65536, randBytes(65536, uint64(i))))
	}
	for i, cl := range calls {
		if e, err := c.wait(cl); e != 0 || err != nil {
			t.Fatalf("write %d: %d %v", i, e, err)
		}
	}
	c.disconnect()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.kept) != n {
		t.Fatalf("WriteOwned got %d writes, want %d", len(d.kept), n)
	}
	seen := make(map[string]bool)
	for i := range n {
		seen[string(randBytes(65536, uint64(i)))] = true
	}
	for i, p := range d.kept {
		if len(p) != 65536 || !seen[string(p)] {
			t.Fatalf("kept buffer %d (%d bytes) no longer holds a write: the server reused it", i, len(p))
		}
		delete(seen, string(p))
	}
}
