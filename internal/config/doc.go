// Package config reads a node's TOML configuration file: the node's
// identity, logging, admin endpoint, control socket and NBD TLS, and the
// volumes it serves as
// primary or as mirror. Command-line flags override the file; the command
// merges them (Config.Volume finds the volume to merge into).
//
// # File format
//
//	[node]
//	name       = "alpha"                    # certificate node name
//	certs      = "/etc/blockmirror/certs"   # ca.crt, alpha.crt, alpha.key
//	admin      = "127.0.0.1:7480"           # read-only; "" disables; loopback only unless admin_allow_remote
//	control    = "auto"                     # control socket: /run/blockmirror/NAME.sock; "" disables
//	control_group = "blockmirror"           # may use the control socket besides root
//	nbd_tls    = "off"                      # off | on | require
//	nbd_tls_cert = ""                       # NBD server certificate and key (default: the node's)
//	nbd_tls_key  = ""
//	nbd_tls_client_ca = ""                  # "cluster" or a PEM file: client certificates required
//	log_level  = "info"                     # debug | info | warn | error
//	log_format = "text"                     # text | json
//	pprof      = false
//
//	[[volumes]]                             # one table per volume
//	name        = "db"
//	role        = "primary"                 # primary | mirror
//	data        = "/var/lib/blockmirror/db"
//	size        = "10G"                     # creation only; multiple of 512
//	nbd         = "127.0.0.1:10809"         # HOST:PORT or unix:PATH
//	export      = "db"                      # default: the volume name
//	mode        = "sync"                    # sync | async
//	sync_acks   = 1                         # 1..len(mirrors)
//	ack_level   = "written"                 # received | written | durable
//	max_lag     = "5s"
//	ack_timeout = "5s"
//	journal_max = "8G"
//	indirect_min = "256K"                   # 0: journal every write with its data
//	resync_rate = "200M"                    # bytes/s, 0 = unlimited
//	mirrors = [
//	  { name = "beta",  address = "10.0.0.2:7443" },
//	  { name = "gamma", address = "10.0.0.3:7443" },
//	]
//
//	[[volumes]]
//	name   = "logs"
//	role   = "mirror"
//	data   = "/var/lib/blockmirror/logs"
//	listen = "0.0.0.0:7443"                 # QUIC
//	allow  = ["delta"]                      # primaries allowed to connect
//
// Sizes are strings with an optional binary unit ("512", "64K", "10G"; a
// plain TOML integer is a byte count too); durations are Go duration
// strings ("5s", "250ms"). Key names, the role/mode/ack_level values and
// the defaults (Default* constants) are part of the format. Mirrors may
// also be written as [[volumes.mirrors]] tables.
//
// # Errors
//
// Parse and Load report every problem at once, as an *Error whose Problems
// carry file, line and key path, for example
//
//	blockmirror.toml:12: volume "db": sync_acks 3 exceeds the 2 mirrors listed
//	blockmirror.toml:20: unknown key volumes[1].mirorrs — did you mean mirrors?
//
// Unknown keys are errors, so typos never silently fall back to defaults.
// Line numbers come from a small scan of the file after the TOML library
// has accepted it; a key left to its default is reported at its table's
// header line.
//
// # Concurrency
//
// A Config is a plain value: safe for concurrent reads, not for concurrent
// modification. Functions keep no state between calls.
package config
