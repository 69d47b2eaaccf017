package nbd_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

// benchClient is a lean pipelined client (simple replies only) so the
// benchmark measures the server, not test-client allocations.
func benchRun(b *testing.B, cmd uint16, size, qd int) {
	d := newMemDev(256 << 20)
	srv := nbd.NewServer(nbd.Options{})
	if err := srv.AddExport(nbd.Export{Name: "", Device: d}); err != nil {
		b.Fatal(err)
	}
	ln, err := nbd.Listen("unix:" + filepath.Join(b.TempDir(), "nbd.sock"))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			b.Error(err)
		}
	}()
	raw := dialRaw(b, ln.Addr(), 3)
	raw.sendOpt(cOptExportName, nil)
	if _, err := io.ReadFull(raw.Reader(), make([]byte, 10)); err != nil {
		b.Fatal(err)
	}
	raw.Conn().SetDeadline(time.Time{})
	nc := raw.Conn()
	br := raw.Reader()
	bw := bufio.NewWriterSize(nc, 1<<20)
	slots := make(chan uint64, qd)
	for i := range qd {
		slots <- uint64(i)
	}
	payload := make([]byte, size)
	rbuf := make([]byte, size)
	nblocks := uint64(d.Size()) / uint64(size)
	readerDone := make(chan error, 1)
	n := b.N
	go func() {
		var h [16]byte
		for i := 0; i < n; i++ {
			if _, err := io.ReadFull(br, h[:]); err != nil {
				readerDone <- err
				return
			}
			if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
				readerDone <- io.ErrUnexpectedEOF
				return
			}
			if cmd == cCmdRead {
				if _, err := io.ReadFull(br, rbuf); err != nil {
					readerDone <- err
					return
				}
			}
			slots <- binary.BigEndian.Uint64(h[8:])
		}
		readerDone <- nil
	}()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var h [28]byte
	binary.BigEndian.PutUint32(h[:], cReqMagic)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint32(h[24:], uint32(size))
	x := uint64(88172645463325252)
	for i := 0; i < n; i++ {
		var cookie uint64
		select {
		case cookie = <-slots:
		default:
			bw.Flush()
			cookie = <-slots
		}
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.BigEndian.PutUint64(h[8:], cookie)
		binary.BigEndian.PutUint64(h[16:], (x%nblocks)*uint64(size))
		bw.Write(h[:])
		if cmd == cCmdWrite {
			bw.Write(payload)
		}
	}
	bw.Flush()
	if err := <-readerDone; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "ops/s")
	binary.BigEndian.PutUint16(h[6:], cCmdDisc)
	bw.Write(h[:])
	bw.Flush()
	nc.Close()
}

func BenchmarkRead4KQD32(b *testing.B)  { benchRun(b, cCmdRead, 4096, 32) }
func BenchmarkWrite4KQD32(b *testing.B) { benchRun(b, cCmdWrite, 4096, 32) }
func BenchmarkRead4KQD1(b *testing.B)   { benchRun(b, cCmdRead, 4096, 1) }
func BenchmarkRead1MQD8(b *testing.B)   { benchRun(b, cCmdRead, 1<<20, 8) }
func BenchmarkWrite1MQD8(b *testing.B)  { benchRun(b, cCmdWrite, 1<<20, 8) }
