// Package transport carries blockmirror traffic between nodes: QUIC
// connections authenticated in both directions with certificates from a
// private cluster CA, framed message streams on top, certificate
// management, and a reconnect backoff helper.
//
// It is a leaf package: it imports no other blockmirror package.
//
// # Security model
//
// Every node has a certificate issued by the cluster CA with its node name
// as DNS SAN (and CN), valid for both TLS server and client use. TLS 1.3 is
// required and both sides offer the ALPN protocol "blockmirror/1".
//
//   - A dialer states which node it expects (Dial's peerName). The server's
//     certificate must chain to the cluster CA and carry that name, else
//     Dial fails with ErrUntrustedPeer or ErrPeerName.
//   - A listener requires a client certificate chaining to the same CA and,
//     if Config.AllowPeers is set, naming one of those nodes. The verified
//     name is Conn.PeerName. A refused client is logged on the listener
//     (Warn, with the reason) and its Dial fails with ErrRejected.
//
// Only node certificates (both usages, IssueNode) are accepted from peers,
// in either direction: the certificates the CA issues for NBD clients
// (IssueClient, clientAuth only) and NBD servers (IssueServer, serverAuth
// only, with the host names and addresses clients connect to) are refused
// with ErrUntrustedPeer, so a hypervisor holding one cannot act as a node.
// WritePEMDir stores such a certificate in the layout qemu's
// tls-creds-x509 and libnbd's tls-certificates read: ca-cert.pem,
// client-cert.pem / client-key.pem or server-cert.pem / server-key.pem.
//
// In TLS 1.3 the client completes its handshake before the server has
// checked the client certificate. So that Dial reports refusals itself
// instead of handing out a connection that dies a moment later, the
// listener confirms every accepted connection on a unidirectional stream
// and Dial waits for it:
//
//	listener → dialer, unidirectional stream, then FIN:
//	+-----+-----+-----+-----+
//	| 'B' | 'M' | 'O' | 'K' |   (format constant)
//	+-----+-----+-----+-----+
//
// Certificate directory (InitCerts, LoadNode):
//
//	DIR/ca.crt      cluster CA certificate (PEM)          0644
//	DIR/ca.key      cluster CA key (PKCS#8 PEM)           0600, only needed to issue
//	DIR/NAME.crt    node certificate (PEM)                0644
//	DIR/NAME.key    node key (PKCS#8 PEM)                 0600
//
// # Frames
//
// Streams carry frames; the package assigns no meaning to the type byte.
//
//	+--------+--------+--------+--------+--------+---------------------+
//	|  type  |       payload length (uint32, big endian)  | payload ... |
//	+--------+--------+--------+--------+--------+---------------------+
//	  1 byte             4 bytes                              length bytes
//
// FrameHeaderLen (5) and the layout are format constants. A reader rejects a
// length above its limit (Stream.SetMaxFrame, DefaultMaxFrame = 64 MiB)
// with ErrFrameTooLarge before allocating anything; the stream is unusable
// afterwards. The pure functions PutFrameHeader, ParseFrameHeader,
// AppendFrame and DecodeFrame encode and decode without I/O; FrameReader and
// FrameWriter do the same over any io.Reader/io.Writer.
//
// # Buffer ownership
//
// WriteFrame does not retain its parts: small parts are copied into the
// stream's 64 KiB write buffer, large ones are handed to QUIC, which has
// finished with them when WriteFrame returns. ReadFrame returns a payload
// that aliases the caller's buf when cap(buf) is large enough (so it is
// only valid until buf is reused), otherwise a new slice the caller owns.
//
// # Concurrency
//
// Listener and Conn are safe for concurrent use. A Stream allows one reader
// and one writer goroutine at a time. Backoff and FrameReader/FrameWriter
// are not safe for concurrent use. Listen starts one goroutine (owned by the
// Listener, stopped by Close); a dialed Conn owns one goroutine that
// releases its UDP socket when the connection ends. Blocking calls take a
// context or honour the stream deadlines.
//
// # Liveness
//
// Keep-alives (Config.KeepAlive, default 2 s) keep an idle connection open;
// a peer that has died or is partitioned away is detected after
// Config.IdleTimeout (default 10 s) without any packet: Conn.Done is closed
// and Conn.Err matches ErrIdleTimeout. An orderly Conn.Close reaches the
// peer at once as a *CloseError.
//
// # Throughput and UDP buffers
//
// Receive windows are Config.MaxStreamWindow (16 MiB) per stream and
// Config.MaxConnWindow (48 MiB) per connection from the start (not grown
// from 1 MiB over the first round trips), enough for ~1.3 Gbit/s per
// stream at 100 ms RTT. Congestion control is quic-go's and not
// configurable: in v0.65 its cubic sender runs in NewReno mode (slow start
// left at the first loss or when HyStart sees the RTT rise by an eighth,
// 4–16 ms; then one packet per round trip of growth, and half the window
// at a loss), with pacing. On a long or lossy path it, not the windows,
// sets the rate — roughly packet size / RTT × 1.2 / √loss per connection —
// which is why the replication spreads records over several connections
// (mirror.ReplicationOptions.Lanes). quic-go asks the kernel for ~7 MiB UDP socket
// buffers and prints a warning to stderr when net.core.rmem_max /
// net.core.wmem_max are lower; the blockmirror set-up raises them:
//
//	sysctl -w net.core.rmem_max=8388608 net.core.wmem_max=8388608
package transport
