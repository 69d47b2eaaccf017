// Package faultproxy is a UDP proxy for tests that injects network faults
// between two QUIC (or any UDP) peers on loopback, and a TCP proxy
// (TCPProxy) that can partition and heal TCP connections (a node and etcd).
//
// A Proxy listens on one UDP address and forwards every datagram from a
// client to a fixed target, and the target's replies back to that client.
// Each client address gets a session with its own upstream socket, so the
// target sees one distinct source address per client:
//
//	client A ──► listen socket ──► session A upstream socket ──► target
//	client A ◄── listen socket ◄── session A upstream socket ◄── target
//
// Faults apply per direction — Up (client → target) and Down (target →
// client) — and can be changed while traffic flows:
//
//   - Drop: probability that a datagram is discarded.
//   - Delay + Jitter: each datagram is held Delay plus a uniform random
//     [0, Jitter) before it is sent on; jitter reorders naturally.
//   - Duplicate: probability that a datagram is sent twice (the copy takes
//     its own delay).
//   - Reorder: probability that a datagram is held back an extra
//     ReorderDelay so that later ones overtake it.
//   - Partition: every datagram in that direction is dropped.
//
// Randomness comes from one PCG generator per direction seeded from
// Config.Seed, so a single-flow test sees the same decisions on every run.
//
// The proxy asks for 8 MiB socket buffers so that it does not add loss of
// its own to bursts (effective only when net.core.rmem_max / wmem_max allow).
//
// Safety: by default both the listen and the target address must be
// loopback addresses (Config.AllowNonLoopback overrides).
//
// Concurrency: all methods are safe for concurrent use. Run owns every
// goroutine of the proxy (one reader for the listen socket, one reader per
// session, one delay line per direction, one session janitor) and returns
// after all of them have stopped. Datagrams that are forwarded immediately
// are not copied; delayed ones are copied once.
//
// Handler exposes the controls over HTTP (see cmd/faultproxy):
//
//	POST /partition?dir=up|down|both    cut the direction(s) off
//	POST /heal                          remove partitions and all faults
//	POST /faults?dir=..&drop=0.1&delay=5ms&jitter=1ms&dup=0.01&reorder=0.05&reorder_delay=5ms
//	                                    replace the faults of dir (absent = 0)
//	GET  /stats                         counters and current settings, JSON
package faultproxy
