// Package daemon is the node assembly of blockmirror's daemons (`serve`
// and `mirror`): it turns one config.Process into running volumes and
// owns everything they share.
//
// A Process runs the volumes of one role; a process of one volume is a
// process of several with one, on the same code path:
//
//   - primaries: each volume opens its node, starts replication to its
//     mirrors (one QUIC connection per mirror host, shared by the volumes
//     through a mirror.ConnPool), serves a mirror.Volume as an export of
//     the process's NBD server for its address (one server per address),
//     and, with a listen address, answers other primaries (the responder:
//     an old primary learns it is fenced, a split brain is noticed).
//   - mirrors: one volume listens alone (any volume name is accepted);
//     several share one listener (mirror.ReplicaHost, sessions routed by
//     volume name).
//
// Volume holds the policy cmd used to: the fence policy (Fence: writes
// fail from then on), the demote sequence (Demote: mirror.Volume.Demote,
// then the process stops serving), online promotion (Promote) and the
// promote-to-serve transition (a mirror promoted online goes on as the
// primary of its new epoch in the same process, serving NBD, with the
// responder at its old listen address), and Status.
//
// The admin endpoint (read-only TCP: status, metrics, pprof) and the
// control socket (unix, peer-credential checked: promote, demote, verify)
// belong to the Process; the control operations offered follow the
// volumes' roles. Post, ControlStatus and FetchStatus are the client side
// the CLI uses.
//
// # Lifecycle
//
// New opens every volume (nothing is served yet); Run serves until its
// context ends, a volume fails, or a primary is demoted. Stopping, the NBD
// servers first finish the requests in flight, then the volumes stop
// replicating, checkpoint and close, then the admin endpoint closes.
// Every goroutine the process starts — NBD servers, mirror host, volume
// runners, each primary's responder and metrics refresher — is owned and
// waited for before Run returns.
package daemon
