// Package metrics exports blockmirror's Prometheus metrics.
//
// A process creates one Registry (New), serves Registry.Handler at
// /metrics on its admin endpoint, and hands per-volume hooks to the code
// that observes: NBD(volume), Journal(volume) and Peer(volume, peer). The
// hooks resolve their label values when created, so the hot-path calls
// (NBDMetrics.Observe, JournalMetrics.ObserveAppend, PeerMetrics.ObserveAck,
// the Set* gauges) are a few atomic operations and never allocate. A nil
// hook ignores every call, so code can run without metrics.
//
// No global state: nothing is registered with Prometheus's default
// registry. Registry and the hooks are safe for concurrent use.
//
// # Metric families (format: names and labels are an interface)
//
//	blockmirror_build_info{version}                              gauge, 1
//	blockmirror_nbd_requests_total{volume,op}                    counter
//	blockmirror_nbd_bytes_total{volume,op}                       counter (successful requests)
//	blockmirror_nbd_errors_total{volume,op}                      counter
//	blockmirror_nbd_request_duration_seconds{volume,op}          histogram
//	blockmirror_journal_append_duration_seconds{volume,level}    histogram (level written|durable)
//	blockmirror_journal_fsync_duration_seconds{volume}           histogram
//	blockmirror_journal_size_bytes{volume}                       gauge
//	blockmirror_journal_segments{volume}                         gauge
//	blockmirror_journal_records_total{volume}                    counter
//	blockmirror_journal_appended_bytes_total{volume}             counter
//	blockmirror_peer_ack_duration_seconds{volume,peer}           histogram
//	blockmirror_peer_lag_records{volume,peer}                    gauge
//	blockmirror_peer_lag_bytes{volume,peer}                      gauge
//	blockmirror_peer_lag_seconds{volume,peer}                    gauge
//	blockmirror_peer_connected{volume,peer}                      gauge 0/1
//	blockmirror_peer_state{volume,peer,state}                    gauge, 1 for the current state
//	blockmirror_peer_resync_done_bytes{volume,peer}              gauge
//	blockmirror_peer_resync_target_bytes{volume,peer}            gauge
//	blockmirror_peer_resync_sent_bytes_total{volume,peer}        counter (chunk data sent)
//	blockmirror_peer_age_seconds{volume,peer}                    gauge
//	blockmirror_resync_received_bytes_total{volume}              counter (mirror: chunk data received)
//	blockmirror_resync_applied_bytes_total{volume}               counter (mirror: disk bytes written)
//
// op is read, write, trim, zero, flush, cache, block_status or other.
// Latency histograms share LatencyBuckets (10µs doubling to ~21s). The Go
// runtime (go_*) and process (process_*) collectors are included unless
// Options.NoRuntimeMetrics.
//
// Useful queries: rate(blockmirror_nbd_bytes_total{op="write"}[1m]) for
// write throughput; histogram_quantile(0.99,
// rate(blockmirror_nbd_request_duration_seconds_bucket{op="write"}[5m]))
// for p99 write latency; blockmirror_peer_lag_seconds > 5 for a trailing
// mirror; rate(blockmirror_journal_records_total[1m]) for records/s.
package metrics
