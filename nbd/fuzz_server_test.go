package nbd_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

// FuzzServerConn feeds arbitrary client bytes to a server over net.Pipe.
// The server must neither panic nor hang: once the input is exhausted and
// the client side closed, ServeConn must return promptly.
func FuzzServerConn(f *testing.F) {
	opt := func(b []byte, o uint32, data []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, 0x49484156454F5054)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	req := func(b []byte, flags, cmd uint16, off uint64, n uint32) []byte {
		b = binary.BigEndian.AppendUint32(b, 0x25609513)
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, cmd)
		b = binary.BigEndian.AppendUint64(b, 1)
		b = binary.BigEndian.AppendUint64(b, off)
		return binary.BigEndian.AppendUint32(b, n)
	}
	flags := []byte{0, 0, 0, 3}
	seed := opt(append([]byte{}, flags...), cOptStructured, nil)
	seed = opt(seed, cOptGo, infoData("", cInfoBlock))
	seed = req(seed, 0, cCmdWrite, 0, 8)
	seed = append(seed, "abcdefgh"...)
	seed = req(seed, 0, cCmdRead, 0, 8)
	seed = req(seed, 0, cCmdRead, 1<<40, 8)
	seed = req(seed, 0, cCmdDisc, 0, 0)
	f.Add(seed)
	f.Add(opt(append([]byte{}, flags...), cOptExportName, nil))
	f.Add(opt(opt(append([]byte{}, flags...), cOptList, nil), cOptAbort, nil))
	f.Add(req(opt(append([]byte{}, flags...), cOptExportName, nil), 0, cCmdWrite, 0, 1<<30))
	f.Add([]byte{0, 0, 0, 1, 0, 0})

	f.Fuzz(func(t *testing.T, in []byte) {
		srv := nbd.NewServer(nbd.Options{ShutdownTimeout: time.Second, MaxInFlight: 8})
		srv.AddExport(nbd.Export{Name: "", Device: newMemDev(1 << 16)})
		cs, ss := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(context.Background(), ss) }()
		go io.Copy(io.Discard, cs) // drain replies
		cs.SetWriteDeadline(time.Now().Add(2 * time.Second))
		cs.Write(in)
		cs.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("ServeConn hung")
		}
	})
}
