package config_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/internal/config"
)

// node is a valid [node] table for the cases below (lines 1-3).
const node = `[node]
name = "alpha"
certs = "/c"
`

// primary is a valid primary volume.
const primary = `
[[volumes]]
name = "db"
role = "primary"
data = "/d/db"
mirrors = [{ name = "beta", address = "10.0.0.2:7443" }]
`

// TestProblems checks every message, with its line. In want, "!N" stands
// for "t.toml:L" where L is the line of the file marked "#!N".
func TestProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		toml string
		want []string
	}{
		{"valid", node + primary, nil},
		{"syntax error", node + "[[volumes]]\nname = #!1\n", []string{"!1: TOML syntax: "}},
		{"unknown key with suggestion", node + primary + "mirorrs = 1 #!1\n",
			[]string{"!1: unknown key volumes[0].mirorrs — did you mean mirrors?"}},
		{"unknown key dashed", node + primary + "sync-acks = 1 #!1\n",
			[]string{"!1: unknown key volumes[0].sync-acks — did you mean sync_acks?"}},
		{"unknown key without suggestion", "[node]\nname = \"alpha\"\ncerts = \"/c\"\ncolour = \"red\" #!1\n" + primary,
			[]string{"!1: unknown key node.colour (known keys here: name, certs, admin, admin_allow_remote, control, control_group, nbd_tls, nbd_tls_cert, nbd_tls_key, nbd_tls_client_ca, log_level, log_format, pprof, etcd, etcd_certs, etcd_prefix, etcd_embed, etcd_embed_client, etcd_embed_peer, etcd_embed_cluster, failover_ttl, failover_min_interval, failover_no_failsafe, failover_hook)"}},
		{"unknown table", "[nodes] #!1\nname = \"alpha\"\n" + primary,
			[]string{"!1: unknown key nodes — did you mean node?",
				`t.toml: node: name is required (volume "db" replicates; it is this node's certificate name)`,
				"t.toml: node: certs is required (volume \"db\" replicates; it is the directory with ca.crt and the node's certificate and key, made by `blockmirror certs init`)"}},
		{"unknown key in inline mirror", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nmirrors = [\n  { name = \"b\", address = \"h:1\" },\n  { name = \"c\", adress = \"h:2\" }, #!1\n]\n",
			[]string{"!1: unknown key volumes[0].mirrors[1].adress — did you mean address?", "!1: volume \"db\": mirror \"c\": address is required (HOST:PORT)"}},
		{"unknown key in mirror table", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\n[[volumes.mirrors]]\nname = \"b\"\naddress = \"h:1\"\n[[volumes.mirrors]] #!2\nnaem = \"c\" #!1\naddress = \"h:2\"\n",
			[]string{"!2: volume \"db\": mirrors[1]: name is required", "!1: unknown key volumes[0].mirrors[1].naem — did you mean name?"}},
		{"integer as string", node + primary + "sync_acks = \"2\" #!1\n",
			[]string{`!1: volumes[0].sync_acks: want an integer, got string "2"`}},
		{"integer out of range", node + primary + "sync_acks = 99999999999 #!1\n",
			[]string{`!1: volumes[0].sync_acks: 99999999999 is out of range`}},
		{"bool as string", "[node]\npprof = \"yes\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node.pprof: want true or false, got string "yes"`}},
		{"string as integer", node + primary + "mode = 1 #!1\n",
			[]string{`!1: volumes[0].mode: want a string, got integer 1`}},
		{"bad size", node + primary + "size = \"10Q\" #!1\n",
			[]string{`!1: volumes[0].size: bad size "10Q": want a whole number of bytes with an optional K, M, G or T suffix, such as "10G"`}},
		{"negative size", node + primary + "size = -512 #!1\n",
			[]string{`!1: volumes[0].size: size -512 is negative`}},
		{"float size", node + primary + "size = 1.5 #!1\n",
			[]string{`!1: volumes[0].size: want a size such as "10G", got float 1.5`}},
		{"integer size ok", node + primary + "size = 1048576\n", nil},
		{"lanes ok", node + primary + "lanes = 8\n", nil},
		{"lanes out of range", node + primary + "lanes = 17 #!1\n",
			[]string{`!1: volume "db": lanes 17 must be 1..16 (0: the default)`}},
		{"bad duration", node + primary + "max_lag = \"5 seconds\" #!1\n",
			[]string{`!1: volumes[0].max_lag: bad duration "5 seconds": want a number with a unit, such as "5s" or "250ms"`}},
		{"duration as integer", node + primary + "ack_timeout = 5 #!1\n",
			[]string{`!1: volumes[0].ack_timeout: want a duration such as "5s", got integer 5`}},
		{"negative duration", node + primary + "max_lag = \"-1s\" #!1\n",
			[]string{`!1: volumes[0].max_lag: duration -1s is negative`}},
		{"volumes as a table", node + "[volumes] #!1\nname = \"v\"\n",
			[]string{`!1: volumes: want an array, got a table`}},
		{"node not a table", "node = 1 #!1\n" + primary,
			[]string{`!1: node: want a table, got integer 1`}},
		{"allow element type", node + "[[volumes]]\nname = \"m\"\nrole = \"mirror\"\ndata = \"/d\"\nlisten = \":7443\"\nallow = [\"ok\",\n  2] #!1\n",
			[]string{`!1: volumes[0].allow[1]: want a string, got integer 2`}},
		{"type error suppresses validation of the key", node + "[[volumes]]\nname = \"v\"\nrole = 1 #!1\ndata = \"/d\"\n",
			[]string{`!1: volumes[0].role: want a string, got integer 1`}},

		{"no volumes", node, []string{"t.toml: no volumes: add at least one [[volumes]] table"}},
		{"name missing", node + "[[volumes]] #!1\nrole = \"primary\"\ndata = \"/d\"\n",
			[]string{`!1: volumes[0]: name is required`}},
		{"bad volume name", node + "[[volumes]]\nname = \"a b\" #!1\nrole = \"primary\"\ndata = \"/d\"\n",
			[]string{`!1: volume "a b": name: "a b": only letters, digits, '-', '.' and '_' allowed, starting with a letter or digit`}},
		{"long volume name", node + "[[volumes]]\nname = \"" + strings.Repeat("v", 64) + "\" #!1\nrole = \"primary\"\ndata = \"/d\"\n",
			[]string{`!1: volume "` + strings.Repeat("v", 64) + `": name: "` + strings.Repeat("v", 64) + `" is longer than 63 characters`}},
		{"duplicate volume", node + primary + "\n[[volumes]] #!1\nname = \"db\" #!2\nrole = \"primary\"\ndata = \"/d/other\"\nnbd = \"127.0.0.1:10810\"\n",
			[]string{`!2: volume "db" is defined twice (first as volumes[0] at line 5)`}},
		{"role missing", node + "[[volumes]] #!1\nname = \"v\"\ndata = \"/d\"\n",
			[]string{`!1: volume "v": role is required: primary or mirror`}},
		{"role invalid", node + "[[volumes]]\nname = \"v\"\nrole = \"primray\" #!1\ndata = \"/d\"\n",
			[]string{`!1: volume "v": role "primray": want primary or mirror`}},
		{"data missing", node + "[[volumes]] #!1\nname = \"v\"\nrole = \"primary\"\n",
			[]string{`!1: volume "v": data is required (the volume's data directory)`}},
		{"data shared", node + primary + "[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"/d/db/\" #!1\n",
			[]string{`!1: volume "v": data directory "/d/db/" is also used by volume "db"`}},
		{"disk shared", node + "[[volumes]]\nname='a'\nrole='primary'\ndata='/a'\ndisk='/dev/sdb'\n[[volumes]]\nname='b'\nrole='primary'\ndata='/b'\ndisk='/dev/sdb' #!1\n",
			[]string{`!1: volume "b": disk "/dev/sdb" is also used by volume "a"`}},
		{"size not multiple of 512", node + primary + "size = \"1000\" #!1\n",
			[]string{`!1: volume "db": size 1000 is not a multiple of 512`}},
		{"journal_max zero", node + primary + "journal_max = 0 #!1\n",
			[]string{`!1: volume "db": journal_max must be positive`}},
		{"nbd bad", node + primary + "nbd = \"localhost\" #!1\n",
			[]string{`!1: volume "db": nbd "localhost": want HOST:PORT (want HOST:PORT or unix:PATH)`}},
		{"nbd bad port", node + primary + "nbd = \"localhost:nbd\" #!1\n",
			[]string{`!1: volume "db": nbd "localhost:nbd": port "nbd" is not a number from 1 to 65535 (want HOST:PORT or unix:PATH)`}},
		{"nbd empty unix", node + primary + "nbd = \"unix:\" #!1\n",
			[]string{`!1: volume "db": nbd "unix:": want unix:PATH with a path`}},
		{"nbd unix ok", node + primary + "nbd = \"unix:/run/blockmirror/db.sock\"\n", nil},
		{"nbd empty", node + primary + "nbd = \"\" #!1\n",
			[]string{`!1: volume "db": nbd is required (HOST:PORT or unix:PATH)`}},
		{"nbd is admin", node + primary + "nbd = \"0.0.0.0:7480\" #!1\n",
			[]string{`!1: volume "db": nbd "0.0.0.0:7480" is also the node's admin address`}},
		{"export shared", node + primary + "export = \"disk\"\n[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"/d/v\"\nexport = \"disk\" #!1\n",
			[]string{`!1: volume "v": NBD export "disk" on 127.0.0.1:10809 is also served by volume "db"`}},
		{"same export on another address ok", node + primary + "export = \"disk\"\n[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"/d/v\"\nexport = \"disk\"\nnbd = \"127.0.0.1:10810\"\n", nil},
		{"export empty", node + primary + "export = \"\" #!1\n",
			[]string{`!1: volume "db": export must not be empty`}},
		{"export too long", node + primary + "export = \"" + strings.Repeat("e", 4097) + "\" #!1\n",
			[]string{`!1: volume "db": export name is 4097 bytes; NBD allows at most 4096`}},

		{"mode invalid", node + primary + "mode = \"semi\" #!1\n",
			[]string{`!1: volume "db": mode "semi": want sync or async`}},
		{"ack level invalid", node + primary + "ack_level = \"fsynced\" #!1\n",
			[]string{`!1: volume "db": ack_level "fsynced": want received, written or durable`}},
		{"sync_acks exceeds mirrors", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nsync_acks = 3 #!1\nmirrors = [{ name = \"beta\", address = \"b:1\" }, { name = \"gamma\", address = \"g:1\" }]\n",
			[]string{`!1: volume "db": sync_acks 3 exceeds the 2 mirrors listed`}},
		{"sync_acks zero", node + primary + "sync_acks = 0 #!1\n",
			[]string{`!1: volume "db": sync_acks 0: want 1..1 (the number of mirrors listed)`}},
		{"sync_acks negative without mirrors", node + "[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"/d\"\nsync_acks = -1 #!1\n",
			[]string{`!1: volume "v": sync_acks -1 is negative`}},
		{"sync_acks without mirrors", node + "[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"/d\"\nsync_acks = 2 #!1\n",
			[]string{`!1: volume "v": sync_acks 2 exceeds the 0 mirrors listed`}},
		{"ack_timeout zero", node + primary + "ack_timeout = \"0s\" #!1\n",
			[]string{`!1: volume "db": ack_timeout must be positive`}},
		{"mirror name missing", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nmirrors = [{ address = \"b:1\" }] #!1\n",
			[]string{`!1: volume "db": mirrors[0]: name is required`}},
		{"mirror name invalid", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nmirrors = [{ name = \"b_1\", address = \"b:1\" }] #!1\n",
			[]string{`!1: volume "db": mirror name "b_1": only letters, digits, '-' and '.' allowed, starting and ending with a letter or digit`}},
		{"mirror name dots", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nmirrors = [{ name = \"b..c\", address = \"b:1\" }] #!1\n",
			[]string{`!1: volume "db": mirror name "b..c": must not contain ".."`}},
		{"mirror is this node", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nmirrors = [{ name = \"alpha\", address = \"b:1\" }] #!1\n",
			[]string{`!1: volume "db": mirror "alpha" is this node (node.name); a node cannot mirror to itself`}},
		{"mirror twice", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nmirrors = [\n { name = \"b\", address = \"b:1\" },\n { name = \"b\", address = \"c:1\" }, #!1\n]\n",
			[]string{`!1: volume "db": mirror "b" is listed twice (mirrors[0] and mirrors[1])`}},
		{"mirror address missing", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\n[[volumes.mirrors]] #!1\nname = \"b\"\n",
			[]string{`!1: volume "db": mirror "b": address is required (HOST:PORT)`}},
		{"mirror address invalid", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\n[[volumes.mirrors]]\nname = \"b\"\naddress = \"10.0.0.2\" #!1\n",
			[]string{`!1: volume "db": mirror "b": address "10.0.0.2": want HOST:PORT`}},
		{"mirror address port 0", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\n[[volumes.mirrors]]\nname = \"b\"\naddress = \"10.0.0.2:0\" #!1\n",
			[]string{`!1: volume "db": mirror "b": address "10.0.0.2:0": port 0 cannot be dialed`}},
		{"mirror address no host", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\n[[volumes.mirrors]]\nname = \"b\"\naddress = \":7443\" #!1\n",
			[]string{`!1: volume "db": mirror "b": address ":7443": host is empty`}},
		{"mirror address bad host", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\n[[volumes.mirrors]]\nname = \"b\"\naddress = \"a/b:7443\" #!1\n",
			[]string{`!1: volume "db": mirror "b": address "a/b:7443": host "a/b" is not a host name or IP address`}},
		{"mirror address shared", node + "[[volumes]]\nname = \"db\"\nrole = \"primary\"\ndata = \"/d\"\nmirrors = [\n { name = \"b\", address = \"h:1\" },\n { name = \"c\", address = \"h:1\" }, #!1\n]\n",
			[]string{`!1: volume "db": mirrors "b" and "c" have the same address h:1`}},
		{"listen on primary", node + primary + "listen = \":7443\" #!1\n",
			[]string{`!1: volume "db": listen applies only to mirrors (a primary connects out to its mirrors)`}},
		{"allow on primary", node + primary + "allow = [\"x\"] #!1\n",
			[]string{`!1: volume "db": allow applies only to mirrors`}},

		{"mirror volume ok", node + "[[volumes]]\nname = \"m\"\nrole = \"mirror\"\ndata = \"/d\"\nlisten = \"[::]:7443\"\n", nil},
		// One process runs every mirror volume of a file on one listener.
		{"mirror volumes share a listen address", node + "[[volumes]]\nname = \"m\"\nrole = \"mirror\"\ndata = \"/d\"\nlisten = \"[::]:7443\"\n" +
			"[[volumes]]\nname = \"n\"\nrole = \"mirror\"\ndata = \"/e\"\nlisten = \"[::]:7443\"\n", nil},
		// Primaries of one process share one connection per mirror host.
		{"primaries share a mirror host", node + "[[volumes]]\nname = \"x\"\nrole = \"primary\"\ndata = \"/x\"\nmirrors = [{ name = \"b\", address = \"h:1\" }]\n" +
			"[[volumes]]\nname = \"y\"\nrole = \"primary\"\ndata = \"/y\"\nmirrors = [{ name = \"b\", address = \"h:1\" }]\n", nil},
		{"listen missing", node + "[[volumes]] #!1\nname = \"m\"\nrole = \"mirror\"\ndata = \"/d\"\n",
			[]string{`!1: volume "m": listen is required for a mirror (the QUIC address primaries connect to, HOST:PORT)`}},
		{"listen invalid", node + "[[volumes]]\nname = \"m\"\nrole = \"mirror\"\ndata = \"/d\"\nlisten = \"7443\" #!1\n",
			[]string{`!1: volume "m": listen "7443": want HOST:PORT`}},
		{"allow invalid", node + "[[volumes]]\nname = \"m\"\nrole = \"mirror\"\ndata = \"/d\"\nlisten = \":1\"\nallow = [\n\"ok\",\n\"-bad\", #!1\n]\n",
			[]string{`!1: volume "m": allow: node name "-bad": only letters, digits, '-' and '.' allowed, starting and ending with a letter or digit`}},
		{"primary-only keys on mirror", node + "[[volumes]]\nname = \"m\"\nrole = \"mirror\"\ndata = \"/d\"\nlisten = \":1\"\nsize = \"1G\" #!1\nmode = \"sync\" #!2\nsync_acks = 1 #!3\nack_level = \"written\" #!4\nmax_lag = \"1s\" #!5\nack_timeout = \"1s\" #!6\nallow_degraded = true #!7\nresync_rate = \"1M\" #!8\nmirrors = [{ name = \"x\", address = \"x:1\" }] #!9\n",
			[]string{
				`!1: volume "m": size applies only to primaries (a mirror takes its size from the primary)`,
				`!2: volume "m": mode applies only to primaries (this volume's role is mirror)`,
				`!3: volume "m": sync_acks applies only to primaries (this volume's role is mirror)`,
				`!4: volume "m": ack_level applies only to primaries (this volume's role is mirror)`,
				`!5: volume "m": max_lag applies only to primaries (this volume's role is mirror)`,
				`!6: volume "m": ack_timeout applies only to primaries (this volume's role is mirror)`,
				`!7: volume "m": allow_degraded applies only to primaries (this volume's role is mirror)`,
				`!8: volume "m": resync_rate applies only to primaries (this volume's role is mirror)`,
				`!9: volume "m": mirrors applies only to primaries (this volume's role is mirror)`,
			}},

		{"node name and certs required", "[node] #!1\n" + primary,
			[]string{`!1: node: name is required (volume "db" replicates; it is this node's certificate name)`,
				"!1: node: certs is required (volume \"db\" replicates; it is the directory with ca.crt and the node's certificate and key, made by `blockmirror certs init`)"}},
		{"node name required by two", primary + "[[volumes]]\nname = \"m\"\nrole = \"mirror\"\ndata = \"/m\"\nlisten = \":1\"\n[node] #!1\ncerts = \"/c\"\n",
			[]string{`!1: node: name is required (volumes "db", "m" replicate; it is this node's certificate name)`}},
		{"standalone needs no identity", "[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"/d\"\n", nil},
		{"node name invalid", "[node]\nname = \"alpha_1\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: name "alpha_1": only letters, digits, '-' and '.' allowed, starting and ending with a letter or digit`}},
		{"node name too long", "[node]\nname = \"" + strings.Repeat("n", 64) + "\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: name "` + strings.Repeat("n", 64) + `": must be 1-63 characters`}},
		{"admin invalid", "[node]\nadmin = \"7480\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: admin "7480": want HOST:PORT`}},
		{"admin not loopback", "[node]\nadmin = \"0.0.0.0:7480\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: admin "0.0.0.0:7480" is not a loopback address; the admin endpoint has no authentication and shows the node's volumes, addresses and metrics (set admin_allow_remote = true to allow it anyway)`}},
		{"admin remote allowed", "[node]\nadmin = \"10.1.2.3:7480\"\nadmin_allow_remote = true\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n", nil},
		{"admin loopback forms", "[node]\nadmin = \"[::1]:7480\"\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n[[volumes]]\nname='w'\nrole='primary'\ndata='e'\nnbd='localhost:1'\n", nil},
		{"admin disabled", "[node]\nadmin = \"\"\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\nnbd='127.0.0.1:7480'\n", nil},
		{"control socket paths", "[node]\ncontrol = \"run/x.sock\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: control "run/x.sock": want an absolute path for the control socket, "auto", or "" to disable online control`}},
		{"control socket too long", "[node]\ncontrol = \"/" + strings.Repeat("s", 107) + "\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: control "/` + strings.Repeat("s", 107) + `" is 108 bytes, longer than the 107 a unix socket path allows`}},
		{"control socket forms", "[node]\ncontrol = \"\"\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n", nil},
		{"control socket auto", "[node]\ncontrol = \"auto\"\ncontrol_group = \"ops\"\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n", nil},
		{"nbd tls value", "[node]\nnbd_tls = \"yes\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: nbd_tls "yes": want off, on or require`}},
		{"nbd tls needs a certificate", "[node]\nnbd_tls = \"require\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: nbd_tls "require" needs a server certificate: nbd_tls_cert and nbd_tls_key, or certs and name (the node's certificate)`}},
		{"nbd tls node certificate", node + "nbd_tls = \"on\"\nnbd_tls_client_ca = \"cluster\"\n" + primary, nil},
		{"nbd tls files", "[node]\nnbd_tls = \"require\"\nnbd_tls_cert = \"/p/server-cert.pem\"\nnbd_tls_key = \"/p/server-key.pem\"\nnbd_tls_client_ca = \"/p/ca-cert.pem\"\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n", nil},
		{"nbd tls half a pair", "[node]\nnbd_tls = \"on\"\nnbd_tls_cert = \"/p/c.pem\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: nbd_tls_cert and nbd_tls_key go together (the NBD server's certificate and its key)`}},
		{"nbd tls cluster CA needs certs", "[node]\nnbd_tls = \"on\"\nnbd_tls_cert = \"/c.pem\"\nnbd_tls_key = \"/k.pem\"\nnbd_tls_client_ca = \"cluster\" #!1\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: nbd_tls_client_ca = "cluster" needs certs (the directory with the cluster's ca.crt)`}},
		{"nbd tls off ignores files", "[node]\nnbd_tls_cert = \"/c.pem\"\nnbd_tls_key = \"/k.pem\"\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`t.toml:1: node: nbd_tls is off, so nbd_tls_cert, nbd_tls_key and nbd_tls_client_ca would be ignored: set nbd_tls = "on" or "require", or remove them`}},
		{"log level", "[node]\nlog_level = \"loud\" #!1\nlog_format = \"xml\" #!2\n" + "[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n",
			[]string{`!1: node: log_level "loud": want debug, info, warn or error`, `!2: node: log_format "xml": want text or json`}},

		{"many problems in file order", node + "[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"/d\"\nmode = \"x\" #!1\nack_level = \"y\" #!2\nbogus = 1 #!3\nsize = \"1\" #!4\n",
			[]string{`!1: volume "v": mode "x": want sync or async`, `!2: volume "v": ack_level "y": want received, written or durable`,
				`!3: unknown key volumes[0].bogus (known keys here: name, role, data, disk, size, nbd, export, read_only, journal_max, indirect_min, mirrors, mode, sync_acks, ack_level, max_lag, ack_timeout, allow_degraded, resync_rate, lanes, listen, allow)`,
				`!4: volume "v": size 1 is not a multiple of 512`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tc.toml), "t.toml")
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error:\n%v", err)
				}
				if c == nil {
					t.Fatal("nil Config without an error")
				}
				return
			}
			if c != nil {
				t.Error("Parse returned a Config along with problems")
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *config.Error", err, err)
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Error("error does not wrap ErrInvalid")
			}
			want := expand(t, tc.toml, tc.want)
			got := make([]string, len(ce.Problems))
			for i, p := range ce.Problems {
				got[i] = p.String()
			}
			ok := len(got) == len(want)
			for i := 0; ok && i < len(want); i++ {
				if tc.name == "syntax error" {
					ok = strings.HasPrefix(got[i], want[i])
				} else {
					ok = got[i] == want[i]
				}
			}
			if !ok {
				t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
			}
		})
	}
}

// expand replaces a leading "!N" with "t.toml:LINE", LINE being the line
// marked "#!N" in doc.
func expand(t *testing.T, doc string, want []string) []string {
	lines := strings.Split(doc, "\n")
	out := make([]string, len(want))
	for i, w := range want {
		out[i] = w
		if !strings.HasPrefix(w, "!") {
			continue
		}
		n, rest, _ := strings.Cut(w[1:], ":")
		found := 0
		for l, text := range lines {
			if strings.HasSuffix(strings.TrimSpace(text), "#!"+n) {
				found = l + 1
				break
			}
		}
		if found == 0 {
			t.Fatalf("no line marked #!%s", n)
		}
		out[i] = fmt.Sprintf("t.toml:%d:%s", found, rest)
	}
	return out
}

func TestValidateWithoutSource(t *testing.T) {
	c := (&config.Config{Volumes: []config.VolumeConfig{{Name: "v", Role: "primary", Data: "d", SyncAcks: 3}}}).WithDefaults()
	err := c.Validate()
	var ce *config.Error
	if !errors.As(err, &ce) || len(ce.Problems) != 1 {
		t.Fatalf("Validate: %v", err)
	}
	p := ce.Problems[0]
	if p.File != "" || p.Line != 0 || p.Key != "volumes[0].sync_acks" || p.String() != `volume "v": sync_acks 3 exceeds the 0 mirrors listed` {
		t.Errorf("problem %+v / %q", p, p.String())
	}
}
