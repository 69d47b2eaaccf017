// Package nbd is a Network Block Device (NBD) protocol server: it serves
// one or more Exports, each backed by a Device, to NBD clients (the Linux
// kernel via nbd-client, qemu, libnbd/nbdinfo/nbdsh, fio's nbd engine) over
// any net.Listener — TCP or unix sockets (see Listen). It also has the
// project's one NBD client (Client, Connect): `blockmirror attach`
// negotiates with it before handing the socket to the kernel, and the
// tests drive servers with it.
//
// # Protocol coverage
//
// Handshake: fixed newstyle only (server handshake flags FIXED_NEWSTYLE and
// NO_ZEROES; a client flag the server does not know closes the connection).
// Options:
//
//	NBD_OPT_EXPORT_NAME       enter transmission (unknown name: close, as the
//	                          protocol gives no way to report it); the 124
//	                          zero bytes are omitted if the client set NO_ZEROES
//	NBD_OPT_GO / NBD_OPT_INFO NBD_INFO_EXPORT, NAME and DESCRIPTION (if asked),
//	                          BLOCK_SIZE (always), then ACK; unknown export:
//	                          NBD_REP_ERR_UNKNOWN; malformed: ERR_INVALID
//	NBD_OPT_LIST              one NBD_REP_SERVER per export (name, then the
//	                          description as free text), then ACK
//	NBD_OPT_STRUCTURED_REPLY  ACK; reads then use structured replies
//	NBD_OPT_ABORT             ACK, then close
//	NBD_OPT_STARTTLS          with Options.TLS: ACK, then a TLS handshake on
//	                          the connection (a failed one closes it); option
//	                          haggling continues inside TLS and everything
//	                          negotiated before (structured replies) is
//	                          forgotten. Data, or TLS already active:
//	                          NBD_REP_ERR_INVALID. Without Options.TLS:
//	                          NBD_REP_ERR_UNSUP
//	anything else             NBD_REP_ERR_UNSUP (metadata contexts,
//	                          extended headers, ...)
//
// # TLS
//
// Options.TLS alone offers TLS to clients that ask (nbds:// URIs, qemu's
// tls-creds); plaintext clients are still served. Options.RequireTLS is
// the protocol's FORCEDTLS mode: before TLS every option other than
// STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD (with a message
// naming STARTTLS), NBD_OPT_EXPORT_NAME closes the connection (it cannot
// be refused otherwise), and so does a client that does not set the fixed
// newstyle flag (TLS needs it). Refusals and failed TLS handshakes are
// logged at Warn with the client's address. Client certificates are
// whatever the tls.Config demands (ClientAuth, ClientCAs); the server
// adds no checks of its own.
//
// Option data above 64 KiB is never buffered: up to 16 MiB it is read and
// discarded and answered with NBD_REP_ERR_TOO_BIG; beyond that (or for
// NBD_OPT_EXPORT_NAME, which cannot fail politely) the connection is closed.
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, CAN_MULTI_CONN always;
// SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, SEND_FAST_ZERO for writable
// exports; READ_ONLY for read-only ones; SEND_DF when structured replies
// were negotiated (every read is answered with a single chunk anyway).
// CAN_MULTI_CONN is sound because the Device contract makes Flush cover
// writes completed on every connection.
//
// Commands: READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES (flags FUA,
// NO_HOLE, FAST_ZERO); DF is accepted on READ with structured replies. A
// request is checked before it reaches the Device:
//
//	unknown command or a flag not valid for the command   EINVAL
//	write/trim/zero on a read-only export                 EPERM
//	length > MaxBlockSize, or misaligned to MinBlockSize  EINVAL
//	offset+length beyond the export (or overflowing)      EINVAL for READ,
//	                                                      ENOSPC for writes
//	length 0 (not FLUSH)                                  success, no-op
//
// A rejected NBD_CMD_WRITE's payload is read and discarded (never
// buffered) when it is at most 128 MiB; a longer one closes the connection
// (the protocol allows that, and draining up to 4 GiB would only help an
// attacker). Device errors are mapped with ErrnoOf and fail only their own
// request.
//
// # Replies on the wire
//
//	simple reply (16 bytes + READ data when successful):
//	  +--------------+-----------+----------------+
//	  | 0x67446698   | error u32 | cookie u64     |  [data]
//	  +--------------+-----------+----------------+
//	structured chunk (20-byte header):
//	  +------------+-----------+----------+------------+------------+
//	  | 0x668e33ef | flags u16 | type u16 | cookie u64 | length u32 |  payload
//	  +------------+-----------+----------+------------+------------+
//
// Without structured replies everything is a simple reply; a READ reply
// header is written only after the device read finished, so an error is
// always reported in the header with no data following. With structured
// replies a READ succeeds with one OFFSET_DATA chunk (flag DONE), a
// zero-length READ with a NONE chunk, and fails with an ERROR_OFFSET chunk
// (offset = request offset); other commands succeed with a simple reply and
// fail with an ERROR chunk carrying a short message.
//
// # Concurrency
//
// Each connection has one reader goroutine that parses requests (header
// and WRITE payload through one bufio.Reader) and hands them to a pool of
// worker goroutines, grown on demand up to Options.MaxInFlight (default
// 256). When MaxInFlight requests are in flight, or their payload buffers
// reach Options.MaxBufferBytes, the reader stops reading until one
// completes. Replies go out in completion order (not request order)
// through one bufio.Writer guarded by a mutex; the last reply waiting for
// the mutex flushes it. If other requests are still executing, that last
// writer first yields the processor once (runtime.Gosched) so replies
// finishing at the same moment join the same write; whoever then finds no
// reply queued flushes, so a reply is never left unsent. With qd32 4 KiB
// reads this cuts write syscalls from ~0.8 to ~0.2 per request.
//
// Requests are never served on the reader goroutine itself: a Device call
// that waits for another request of the same connection (or is merely
// slow) must not stop the server from reading requests.
//
// NBD_CMD_DISC stops reading; every in-flight request is still completed
// and answered before the connection is closed. A client that drops the
// connection cancels the context given to in-flight Device calls; their
// goroutines exit once the Device returns. Cancelling the ctx of Serve or
// ServeConn is a graceful stop: listeners are closed, reading stops, in-flight
// requests finish and are answered; after Options.ShutdownTimeout their
// context is cancelled and the connection closed regardless.
//
// Server methods are safe for concurrent use. Exports added or removed
// while serving affect only later handshakes.
//
// # Buffers
//
// Payload buffers come from per-Server sync.Pools in power-of-two classes
// (4 KiB … 32 MiB). The slice passed to Device.ReadAt / WriteAt belongs to
// the server and is reused as soon as the call returns; a Device must copy
// anything it keeps. The steady state allocates nothing per request.
//
// # Errors
//
// ServeConn returns nil for orderly ends (DISC, ABORT, EOF between
// messages, shutdown) and otherwise an error; protocol violations wrap
// ErrProtocol. AddExport reports invalid exports and ErrExportExists.
package nbd
