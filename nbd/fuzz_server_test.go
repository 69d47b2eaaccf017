package nbd_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

// appendOpt encodes a client option (header and data).
func appendOpt(b []byte, o uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, cIHAVEOPT)
	b = binary.BigEndian.AppendUint32(b, o)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzServerConn feeds arbitrary client bytes to a server over net.Pipe.
// The server must neither panic nor hang: once the input is exhausted and
// the client side closed, ServeConn must return promptly.
func FuzzServerConn(f *testing.F) {
	opt := appendOpt
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

// FuzzStartTLS drives the option phase around NBD_OPT_STARTTLS: arbitrary
// options before it (pre), then STARTTLS, a real TLS handshake when the
// server agrees, and arbitrary bytes inside TLS (post). Besides not
// panicking or hanging, the server must keep the TLS rules: with
// RequireTLS (mode bit 0) nothing but TLS_REQD, ABORT's ACK and
// STARTTLS's answers leaves it in plaintext, and it never enters
// transmission before TLS; NBD_REP_ERR_TLS_REQD is never sent without
// RequireTLS or once TLS is up.
func FuzzStartTLS(f *testing.F) {
	opt := appendOpt
	f.Add(byte(1), []byte{}, opt(nil, cOptGo, infoData("", cInfoBlock)))
	f.Add(byte(1), opt(opt(nil, cOptList, nil), cOptStructured, nil), opt(opt(nil, cOptStructured, nil), cOptList, nil))
	f.Add(byte(0), opt(nil, cOptInfo, infoData("")), opt(nil, cOptStartTLS, nil))
	f.Add(byte(1), opt(nil, cOptStartTLS, []byte("x")), opt(nil, cOptExportName, nil))
	f.Add(byte(1), opt(nil, cOptExportName, nil), []byte{})
	f.Add(byte(0), opt(nil, cOptStartTLS, nil), []byte("garbage"))
	p := sharedPKI(f)
	srvCfg := p.serverConfig(false)
	cliCfg := p.clientConfig(nil)

	f.Fuzz(func(t *testing.T, mode byte, pre, post []byte) {
		require := mode&1 != 0
		srv := nbd.NewServer(nbd.Options{ShutdownTimeout: time.Second, MaxInFlight: 8, TLS: srvCfg, RequireTLS: require,
			HandshakeTimeout: 3 * time.Second})
		srv.AddExport(nbd.Export{Name: "", Device: newMemDev(1 << 16)})
		cs, ss := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(context.Background(), ss) }()
		defer func() {
			cs.Close()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("ServeConn hung")
			}
		}()
		cs.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(cs, make([]byte, 18)); err != nil {
			return
		}
		wrote := make(chan struct{})
		// Once everything is written (a net.Pipe write returns when the
		// server has read it all), replies come within moments: reading
		// then stops soon instead of waiting for the handshake timeout (a
		// reply missed on a slow machine only shortens the run).
		settle := func() { cs.SetReadDeadline(time.Now().Add(10 * time.Millisecond)) }
		go func() {
			defer close(wrote)
			cs.Write(append(append([]byte{0, 0, 0, 3}, pre...), opt(nil, cOptStartTLS, nil)...))
		}()
		check := func(r io.Reader, inTLS bool) (upgrade bool) {
			var h [20]byte
			for {
				if _, err := io.ReadFull(r, h[:]); err != nil {
					return false
				}
				if binary.BigEndian.Uint64(h[:]) != cOptReplyMagic {
					if require && !inTLS {
						t.Fatalf("plaintext bytes % x that are not an option reply on a server requiring TLS", h)
					}
					return false // transmission, or the export info of EXPORT_NAME
				}
				o, typ, n := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
				if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
					return false
				}
				switch {
				case typ == cRepErrTLSReqd && (!require || inTLS):
					t.Fatalf("NBD_REP_ERR_TLS_REQD for option %d (require %v, in TLS %v)", o, require, inTLS)
				case require && !inTLS && typ != cRepErrTLSReqd && o != cOptStartTLS && o != cOptAbort:
					t.Fatalf("plaintext reply %#x to option %d on a server requiring TLS", typ, o)
				case !inTLS && o == cOptStartTLS && typ == cRepAck:
					return true
				}
			}
		}
		settled := make(chan struct{})
		go func() {
			defer close(settled)
			<-wrote
			settle()
		}()
		if !check(cs, false) {
			return
		}
		select {
		case <-settled:
		case <-time.After(time.Second):
			return // an earlier STARTTLS in pre was acknowledged; the rest of pre breaks the handshake
		}
		cs.SetDeadline(time.Now().Add(3 * time.Second))
		tc := tls.Client(cs, cliCfg)
		if err := tc.Handshake(); err != nil {
			return
		}
		go func() {
			tc.Write(post)
			settle()
		}()
		check(tc, true)
	})
}
