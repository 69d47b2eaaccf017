#!/usr/bin/env bash
# failover.sh — promote the local blockmirror mirror to primary after the
# primary is lost. Run it on the backup host; it reads no stdin and is safe
# to run again (a node that is already primary and serving is left alone).
#
#   scripts/failover.sh --primary 10.0.0.1:10809 --admin 127.0.0.1:7481
#   scripts/failover.sh --primary 10.0.0.1:10809 --data /var/lib/blockmirror \
#       --nbd 0.0.0.0:10809 --listen 10.0.0.2:7001 --certs /etc/blockmirror/certs --node m1 \
#       --fence-cmd 'ipmitool -H pdu1 chassis power off' -- --mirror p1=10.0.0.1:7001
#
# Steps:
#   1. the primary must be unreachable: a few TCP probes within about a
#      second to every --primary address (its NBD port or admin endpoint);
#      if one answers, refuse (exit 2) unless --force
#   2. run the operator's fencing hook (--fence-cmd) if given; it must exit 0
#      (exit 3 otherwise, unless --force)
#   3. promote: if the local mirror daemon answers at --admin, online
#      (`blockmirror promote`, through the daemon's control socket, which
#      needs root or the control group; the daemon then serves NBD itself);
#      else offline (`blockmirror promote --data DIR`) and start
#      `blockmirror serve` in the background (log DIR/serve.log, pid
#      DIR/serve.pid) with --nbd/--listen/--certs/--node and any arguments
#      after `--`
#   4. wait (bounded by --wait) until the NBD endpoint answers; print the URI
#      and the seconds since the script started
#   5. optionally attach a kernel NBD device (--attach /dev/nbdX) and mount
#      it (--mount DIR); skipped, with a message, when /dev/nbd* is absent
#
# Exit status: 0 promoted (or already primary and serving), 1 usage or
# environment error, 2 the primary still answers, 3 the fencing hook
# failed, 4 the promotion failed or was refused (e.g. an inconsistent
# mirror without --force), 5 the promoted node does not serve NBD in time,
# 6 attach or mount failed.
set -uo pipefail

prog=failover
t0=$(date +%s.%N)

say() { printf '%s: %s\n' "$prog" "$*"; }
die() { # die CODE MESSAGE: one line on stderr, then exit
	local code=$1
	shift
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit "$code"
}
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

usage() {
	cat <<'EOU'
Usage: failover.sh [options] [-- extra `blockmirror serve` arguments]

  --primary ADDR     HOST:PORT of the primary to probe (its NBD port or admin
                     endpoint); repeatable; required unless --force
  --admin ADDR       the local mirror daemon's admin endpoint (default 127.0.0.1:7481);
                     after an offline promotion, `serve` gets this --admin too
  --control PATH     the local mirror daemon's control socket (default: the one its
                     status names); after an offline promotion, `serve` gets it too
  --data DIR         the local mirror's data directory (needed when the daemon
                     is not running: offline promotion)
  --nbd ADDR         where the promoted node serves NBD, HOST:PORT or unix:PATH
                     (offline: passed to serve, default 127.0.0.1:10809; online:
                     the daemon's own --nbd is used and this only overrides the probe)
  --export NAME      NBD export name (default disk)
  --listen ADDR      QUIC address for serve (fences an old primary that comes back)
  --certs DIR        certificate directory for serve
  --node NAME        this node's name for serve
  --fence-cmd CMD    operator fencing hook run with bash -c; must exit 0
  --fence-timeout S  seconds the fencing hook may take (default 60)
  --force            skip the reachability check, ignore a failed fence hook, and
                     promote an inconsistent mirror
  --wait S           seconds to wait for the NBD endpoint (default 30)
  --attach DEV       attach the export to a kernel NBD device, e.g. /dev/nbd0
  --mount DIR        mount the attached device on DIR (needs --attach)
  --bin PATH         the blockmirror binary (default: blockmirror on PATH, else
                     bin/blockmirror next to this script's directory)
  -h, --help         this text
EOU
}

# --- arguments ------------------------------------------------------------
primaries=()
admin=127.0.0.1:7481
control=""
data=""
nbd=""
export_name=disk
listen=""
certs=""
node=""
fence_cmd=""
fence_timeout=60
force=0
wait_s=30
attach_dev=""
mount_dir=""
bin=""
serve_extra=()

need() { # need OPT VALUE-COUNT-LEFT
	[ "$2" -ge 2 ] || die 1 "$1 needs a value (see --help)"
}
while [ $# -gt 0 ]; do
	case "$1" in
	--primary) need "$1" $#; primaries+=("$2"); shift 2 ;;
	--admin) need "$1" $#; admin=$2; shift 2 ;;
	--control) need "$1" $#; control=$2; shift 2 ;;
	--data) need "$1" $#; data=$2; shift 2 ;;
	--nbd) need "$1" $#; nbd=$2; shift 2 ;;
	--export) need "$1" $#; export_name=$2; shift 2 ;;
	--listen) need "$1" $#; listen=$2; shift 2 ;;
	--certs) need "$1" $#; certs=$2; shift 2 ;;
	--node) need "$1" $#; node=$2; shift 2 ;;
	--fence-cmd) need "$1" $#; fence_cmd=$2; shift 2 ;;
	--fence-timeout) need "$1" $#; fence_timeout=$2; shift 2 ;;
	--force) force=1; shift ;;
	--wait) need "$1" $#; wait_s=$2; shift 2 ;;
	--attach) need "$1" $#; attach_dev=$2; shift 2 ;;
	--mount) need "$1" $#; mount_dir=$2; shift 2 ;;
	--bin) need "$1" $#; bin=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	--) shift; serve_extra=("$@"); break ;;
	*) usage >&2; die 1 "unknown argument '$1'" ;;
	esac
done

[[ $wait_s =~ ^[0-9]+$ ]] || die 1 "--wait '$wait_s': want whole seconds"
[[ $fence_timeout =~ ^[0-9]+$ ]] || die 1 "--fence-timeout '$fence_timeout': want whole seconds"
if [ ${#primaries[@]} -eq 0 ] && [ $force = 0 ]; then
	die 1 "--primary ADDR is required (the primary's NBD or admin HOST:PORT to probe), or --force to skip the check"
fi
if [ -n "$mount_dir" ] && [ -z "$attach_dev" ]; then
	die 1 "--mount needs --attach /dev/nbdX"
fi

if [ -z "$bin" ]; then
	if command -v blockmirror >/dev/null 2>&1; then
		bin=$(command -v blockmirror)
	else
		bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bin/blockmirror"
	fi
fi
[ -x "$bin" ] || die 1 "blockmirror binary '$bin' is not executable (use --bin PATH)"

# split_addr ADDR → sets host and port (accepts HOST:PORT and [V6]:PORT)
split_addr() {
	local a=$1
	if [[ $a =~ ^\[([^]]+)\]:([0-9]+)$ ]] || [[ $a =~ ^([^:]+):([0-9]+)$ ]]; then
		host=${BASH_REMATCH[1]}
		port=${BASH_REMATCH[2]}
		return 0
	fi
	return 1
}

# tcp_probe HOST:PORT → 0 if something accepts a TCP connection within 0.3 s
tcp_probe() {
	local host port
	split_addr "$1" || return 1
	timeout 0.3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

nbd_uri() { # the URI of the export at ADDR
	case "$1" in
	unix:*) printf 'nbd+unix:///%s?socket=%s' "$export_name" "${1#unix:}" ;;
	*) printf 'nbd://%s/%s' "$1" "$export_name" ;;
	esac
}

# nbd_answers ADDR → 0 if an NBD server completes a handshake there (nbdinfo;
# a server that refuses plaintext with "requires TLS" answers too), or,
# without nbdinfo, accepts a connection
nbd_answers() {
	if command -v nbdinfo >/dev/null 2>&1; then
		local out
		out=$(LIBNBD_DEBUG=1 timeout 1 nbdinfo --size "$(nbd_uri "$1")" 2>&1) && return 0
		printf '%s' "$out" | grep -q 'requires TLS'
	else
		case "$1" in
		unix:*) [ -S "${1#unix:}" ] ;;
		*) tcp_probe "$1" ;;
		esac
	fi
}

# local_status → prints the local daemon's status JSON, whitespace removed
# (enough for the role, epoch and NBD URI); non-zero if no daemon answers
local_status() {
	local raw
	raw=$(timeout 3 "$bin" status --admin "$admin" --json 2>/dev/null) || return 1
	printf '%s' "$raw" | tr -d ' \t\r\n'
}

# json_field JSON KEY → the first string or number value of "KEY"
json_field() {
	printf '%s' "$1" | grep -o "\"$2\":[^,}]*" | head -n1 | sed -e "s/^\"$2\"://" -e 's/^"//' -e 's/"$//'
}

# wait_nbd ADDR → waits until NBD answers at ADDR (bounded by --wait)
wait_nbd() {
	local deadline=$(($(date +%s) + wait_s))
	while :; do
		if [ -n "${serve_pid:-}" ] && ! kill -0 "$serve_pid" 2>/dev/null; then
			return 2
		fi
		nbd_answers "$1" && return 0
		if [ "$(date +%s)" -ge "$deadline" ]; then
			return 1
		fi
		sleep 0.05
	done
}

# nbd_addr_of_uri URI → HOST:PORT or unix:PATH
nbd_addr_of_uri() {
	local u=$1
	case "$u" in
	nbd+unix://* | nbds+unix://*) printf 'unix:%s' "${u#*socket=}" ;;
	nbd://* | nbds://*) u=${u#*://}; printf '%s' "${u%%/*}" ;;
	esac
}

attach_and_mount() {
	local addr=$1
	[ -n "$attach_dev" ] || return 0
	if ! compgen -G '/dev/nbd[0-9]*' >/dev/null; then
		say "skipping --attach $attach_dev: this host has no kernel NBD devices (/dev/nbd* missing; try 'modprobe nbd')${mount_dir:+; not mounting $mount_dir}; clients can use $(nbd_uri "$addr")"
		return 0
	fi
	[ -b "$attach_dev" ] || die 6 "--attach $attach_dev is not a block device (have: $(echo /dev/nbd[0-9]* | cut -c1-60)...)"
	local name=${attach_dev##*/}
	if [ "$(cat "/sys/block/$name/size" 2>/dev/null || echo 0)" != 0 ]; then
		say "$attach_dev is already attached"
	else
		local logdir=${data:-/tmp}
		setsid nohup "$bin" attach --nbd "$addr" --export "$export_name" "$attach_dev" \
			>"$logdir/attach-$name.log" 2>&1 </dev/null &
		echo $! >"$logdir/attach-$name.pid"
		local deadline=$(($(date +%s) + wait_s))
		until [ "$(cat "/sys/block/$name/size" 2>/dev/null || echo 0)" != 0 ]; do
			if ! kill -0 "$(cat "$logdir/attach-$name.pid")" 2>/dev/null; then
				die 6 "blockmirror attach $attach_dev exited: $(tail -n1 "$logdir/attach-$name.log")"
			fi
			[ "$(date +%s)" -lt "$deadline" ] || die 6 "$attach_dev not attached after ${wait_s}s (see $logdir/attach-$name.log)"
			sleep 0.1
		done
		say "attached $attach_dev (pid $(cat "$logdir/attach-$name.pid"), log $logdir/attach-$name.log)"
	fi
	if [ -n "$mount_dir" ]; then
		if mountpoint -q "$mount_dir" 2>/dev/null; then
			say "$mount_dir is already mounted"
		else
			mkdir -p "$mount_dir" || die 6 "cannot create $mount_dir"
			local out
			out=$(mount "$attach_dev" "$mount_dir" 2>&1) || die 6 "mount $attach_dev $mount_dir: $out"
			say "mounted $attach_dev on $mount_dir"
		fi
	fi
}

finish() { # finish ADDR: wait for NBD, report, attach
	local addr=$1 rc=0
	wait_nbd "$addr" || rc=$?
	case $rc in
	0) ;;
	2) die 5 "blockmirror serve (pid $serve_pid) exited: $(tail -n1 "$data/serve.log" 2>/dev/null)" ;;
	*) die 5 "no NBD server answers at $(nbd_uri "$addr") after ${wait_s}s" ;;
	esac
	say "serving NBD at $(nbd_uri "$addr")"
	say "failover complete in $(elapsed) s"
	attach_and_mount "$addr"
	exit 0
}

# --- 0. already primary? (idempotence) ----------------------------------
if st=$(local_status) && [[ $st == '{"primary":{'* ]]; then
	uri=$(json_field "$st" nbd)
	addr=${nbd:-$(nbd_addr_of_uri "$uri")}
	say "the node at $admin is already primary (epoch $(json_field "$st" epoch)); nothing to promote"
	finish "$addr"
fi

# --- 1. is the primary gone? ----------------------------------------------
if [ ${#primaries[@]} -gt 0 ]; then
	for p in "${primaries[@]}"; do
		split_addr "$p" || die 1 "--primary '$p': want HOST:PORT"
	done
	# Three rounds; each probes every address in parallel (0.3 s timeout
	# each, so a black-holed address costs no more than a refused one
	# per round): about 1 s at worst.
	answered=""
	for i in 1 2 3; do
		pids=()
		for p in "${primaries[@]}"; do
			tcp_probe "$p" &
			pids+=($!)
		done
		for j in "${!pids[@]}"; do
			if wait "${pids[$j]}" && [ -z "$answered" ]; then
				answered=${primaries[$j]}
			fi
		done
		[ -n "$answered" ] && break
		[ $i = 3 ] || sleep 0.2
	done
	if [ -n "$answered" ]; then
		[ $force = 1 ] || die 2 "the primary still answers at $answered; refusing to promote (two primaries would diverge). Stop or fence it, or use --force"
		say "WARNING: the primary answers at $answered; promoting anyway (--force)"
	else
		say "primary unreachable at ${primaries[*]} (3 probes)"
	fi
else
	say "WARNING: no --primary given; reachability not checked (--force)"
fi

# --- 2. fence -------------------------------------------------------------
if [ -n "$fence_cmd" ]; then
	say "fencing: $fence_cmd"
	if timeout "$fence_timeout" bash -c "$fence_cmd" </dev/null; then
		say "fence hook succeeded"
	else
		rc=$?
		[ $force = 1 ] || die 3 "fence hook failed (exit $rc): $fence_cmd"
		say "WARNING: fence hook failed (exit $rc); going on (--force)"
	fi
fi

forceflag=()
[ $force = 1 ] && forceflag=(--force)

# --- 3. promote -------------------------------------------------------------
if st=$(local_status); then
	# A running daemon: promote it online; it serves NBD at its own --nbd.
	[[ $st == '{"mirror":{'* ]] || die 4 "unexpected status from $admin: ${st:0:200}"
	say "promoting the mirror daemon at $admin online"
	target=(--admin "$admin")
	[ -n "$control" ] && target=(--control "$control")
	out=$("$bin" promote "${target[@]}" "${forceflag[@]}" 2>&1) ||
		die 4 "promote ${target[*]} failed: $(printf '%s' "$out" | tail -n1)"
	say "$out"
	addr=${nbd:-${out##*serving NBD at }}
	finish "$addr"
fi

[ -n "$data" ] || die 1 "no mirror daemon answers at $admin and no --data DIR was given for an offline promotion"
[ -d "$data" ] || die 1 "--data $data is not a directory"
addr=${nbd:-127.0.0.1:10809}

# A serve we started earlier that is still running (its admin may be off).
if [ -f "$data/serve.pid" ] && serve_pid=$(cat "$data/serve.pid") && kill -0 "$serve_pid" 2>/dev/null &&
	grep -q "blockmirror" "/proc/$serve_pid/cmdline" 2>/dev/null; then
	say "blockmirror serve is already running for $data (pid $serve_pid)"
	finish "$addr"
fi
serve_pid=""

say "promoting $data offline"
out=$("$bin" promote --data "$data" "${forceflag[@]}" 2>&1) ||
	die 4 "promote --data $data failed: $(printf '%s' "$out" | grep -v 'level=INFO' | tail -n1)"
printf '%s\n' "$out" | grep -v 'level=INFO' | head -n1 | sed "s/^/$prog: /"

args=(serve --data "$data" --nbd "$addr" --export "$export_name" --admin "$admin")
[ -n "$control" ] && args+=(--control "$control")
[ -n "$listen" ] && args+=(--listen "$listen")
[ -n "$certs" ] && args+=(--certs "$certs")
[ -n "$node" ] && args+=(--node "$node")
args+=("${serve_extra[@]}")
say "starting: $bin ${args[*]}"
setsid nohup "$bin" "${args[@]}" >>"$data/serve.log" 2>&1 </dev/null &
serve_pid=$!
echo "$serve_pid" >"$data/serve.pid"
say "serve pid $serve_pid, log $data/serve.log"
finish "$addr"
