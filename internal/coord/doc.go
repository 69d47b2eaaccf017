// Package coord runs automatic failover of a volume on etcd: the most
// up-to-date mirror takes over within seconds of the primary's loss, and
// a primary cut off from etcd fences itself before anyone else can take
// over. It is the only package that imports go.etcd.io/etcd.
//
// Leadership is etcd's, never a home-made election: a
// concurrency.Session holds a lease with a TTL (default 5 s; etcd's client
// renews it every TTL/3), the leader key is a concurrency.Election key
// bound to that lease, and every change that matters is one Txn that
// compares revisions, including the create revision of the caller's
// leader key.
//
// # Keys
//
// Under PREFIX (default /blockmirror, --etcd-prefix) and the volume name:
//
//	PREFIX/VOL/leader/<lease>   election keys; the one with the lowest
//	                            create revision is the leader; value: node
//	                            name; bound to the holder's lease
//	PREFIX/VOL/epoch            {"epoch","node"}: the current epoch and who
//	                            took it; written only in a Txn that checks
//	                            the writer holds the leader key
//	PREFIX/VOL/members/<node>   member record, bound to the node's lease:
//	                            role, epoch, seq (journal's last),
//	                            durable seq, consistent, following (mirror
//	                            in contact with a serving primary), fenced
//	                            (primary), and the primary's view of each
//	                            mirror (in sync, acked, lag)
//	PREFIX/VOL/sync             {"mode","k","members","epoch"}: the sync
//	                            set (not leased: it must outlive the
//	                            primary); written by the leader only
//	PREFIX/VOL/pause            present: automatic failover is paused
//	PREFIX/VOL/failover         the last change of primary: time, from, to,
//	                            epoch, automatic or planned
//	PREFIX/VOL/switchover       a planned switchover under way: from, to,
//	                            the seq the old primary stopped at; bound to
//	                            the old primary's lease
//
// Values are JSON, at most MaxRecord bytes, decoded strictly (unknown
// fields, trailing data and invalid names are refused and the record is
// ignored; an unreadable pause key still pauses).
//
// # The rules
//
// The decisions are pure functions (decide.go), tested as tables:
//
// The primary's lease (DecideLease). The primary completes writes only
// while its last renewal that etcd confirmed is younger than TTL − margin
// (default margin TTL/5), counted on the monotonic clock from when the
// renewal was sent — etcd's expiry is counted from when it received it, so
// it comes later still. The node gets a deadline (Node.SetWriteLease) and
// checks it when a write completes, so a process frozen past its deadline
// completes nothing when it resumes. Past the deadline the primary is
// fenced: writes are held (and fail with EIO after the ack timeout) and
// status says why. When etcd answers that the lease or the leader key is
// gone the primary fences at once; it resumes only by reclaiming the key at
// the same epoch (no one took a newer one, no mirror is ahead of it);
// otherwise it demotes itself and rejoins as a mirror, its divergent
// records quarantined by the mirror code as after any failover.
//
// Campaigning (DecideCampaign). A mirror campaigns only when the leader key
// is gone and: failover is not paused; its store is consistent; no serving
// primary contacted it for a contact window (= TTL); the last automatic
// failover is at least the minimum interval ago (default 5 min); it is in
// the sync set; in sync mode it sees at least |set| − K + 1 members of the
// set (itself included) — any K members and any |set| − K + 1 intersect,
// so one of those it sees holds every acknowledged write; and every other
// member record it sees is final (rewritten after the leader key vanished,
// not following a primary) and not ahead of it in (epoch, seq). It then
// waits a settle time, plus longer the further behind the best seq it has
// heard of it is (as drbd-reactor's promoter does). Having won the key it
// reads everything again, decides again, and takes epoch max(etcd's, its
// own) + 1 in one Txn that fails if its leader key, the epoch, the sync
// set, the pause key, the failover or switchover record, or any member
// record it compared has changed; then it promotes online to exactly that
// epoch.
//
// The sync set (PlanSync). The recorded set and its K promise: every
// acknowledged write is on at least K of its members. The primary's ack set
// (the mirrors whose acks count toward K) changes only while the record
// covers both the old and the new ack set — every member of both, the
// smaller K — so the record is written before the ack set changes
// (Patroni's /sync rule, generalized to K of N); the record narrows to the
// new ack set only once K of its members acknowledged the last seq of the
// old one. A mirror outside the set is never promoted automatically
// (`promote --force` by hand). Without --allow-degraded the ack set is
// every mirror with K; with it, the mirrors in sync with K at most their
// number, so with none in sync the record has K = 0 and no mirror is
// promoted automatically. In async mode the set names the candidates and
// K is 0; the loss is bounded by --max-lag.
//
// # When etcd is unreachable
//
// The policy is Patroni's failsafe mode, made precise: a primary whose
// lease etcd cannot confirm keeps completing writes only while every
// mirror of the sync set confirmed contact within the contact window
// minus the margin (the send time of the last heartbeat each echoed). This
// is safe because of a rule every mirror keeps whether etcd is up or not:
// it does not campaign until a full contact window after it last heard
// from a serving primary; and no node outside the sync set can win. So
// while the primary serves in failsafe, no one can take over; once any
// mirror of the set loses it, the primary fences before that mirror's
// window ends. Failsafe only extends a lease the primary held (a primary
// that starts while etcd is down waits for it), never overrides an answer
// from etcd that the lease is gone, and is off with Config.NoFailsafe (then
// an etcd outage longer than TTL − margin stops writes). Mirrors never
// promote without etcd. Why this rather than "fence when etcd is away":
// the etcd cluster is a dependency for changes of primary, not for
// serving; a three-member etcd losing its quorum, or the network to etcd
// failing, must not stop every volume whose primary and mirrors are fine.
// A fenced primary stops confirming contact (Node contract), so the
// mirrors' windows run out and, if etcd is reachable for them, one takes
// over.
//
// # The driver
//
// A Coordinator (New, Run, Status, Switchover) owns three goroutines, all
// ended by Run's context: the etcd loop (read every key of the volume in
// one Get, publish the member record, campaign or maintain the epoch and
// the sync set), the lease loop (renew with KeepAliveOnce, stamping the
// send time, and re-grant the node's write deadline every poll whether or
// not etcd answers), and a watch that wakes the etcd loop on any change.
// The node is driven through the Node interface; time through Clock.
// On a clean stop Run revokes its lease, so the leader key goes at once.
//
// Switchover (planned, zero loss): fence writes, wait until the target's
// journal holds the last seq, demote, then in one Txn write the
// switchover record (bound to the old primary's lease) and delete the
// leader key. Other mirrors stand aside while the record exists; the
// target takes the next epoch at once (no pause, contact or interval
// rule: the old primary said where it stopped).
//
// # Configuration
//
// Flags and config names (wired by cmd and internal/daemon; see the list
// above EtcdCAFile): --etcd ENDPOINTS, --etcd-certs DIR (ca.crt,
// client.crt, client.key), --etcd-prefix, --etcd-embed DIR with
// --etcd-embed-client, -peer and -cluster (run an etcd member in the node,
// as k3s does: StartEmbedded), --failover-ttl, --failover-hook. Production points at an existing etcd cluster of three
// or five members.
package coord
