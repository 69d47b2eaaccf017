#!/usr/bin/env bash
# bench-wan.sh — replication over a lossy, long path (issue 18, item 6):
# a primary replicating asynchronously to one mirror through the fault
# proxy, for each delay × loss profile, with its records/s and MB/s next
# to quic-go's raw bulk throughput through the same proxy, so the
# replication's own overhead on such a path is visible.
#
#   flock /tmp/bm-e2e.lock bash scripts/bench-wan.sh
#   DELAYS="10 40" LOSSES="0 2" RUNTIME=20 bash scripts/bench-wan.sh
#
# Topology (loopback only): fio → NBD → blockmirror serve (127.0.0.1) →
# QUIC → faultproxy (127.0.0.2) → blockmirror mirror (127.0.0.3). The
# proxy delays every datagram by DELAY ms and drops a fraction LOSS% of
# them, in both directions (data and acknowledgements), so the round trip
# grows by twice the delay.
#
# Per profile, two loads, each RUNTIME seconds after RAMP seconds:
#   1M  fio 1 MiB sequential writes, queue depth 8 (bulk: MB/s)
#   4k  fio 4 KiB random writes, queue depth 32 (small records: records/s)
# The primary runs in async mode (--max-lag 5s, the default): writes are
# throttled to what the link carries, and the figure is how fast records
# reach the mirror — its received seq over the run, from its status —
# not how fast fio writes. raw: go test -bench BulkWAN ./transport, one
# stream of 1 MiB frames between two processes through a proxy process
# with the same profile (transport/bulk_test.go), on one connection and,
# for comparison, on RAW_CONNS connections at once (each connection has
# its own congestion controller). The replication spreads its records
# over --lanes connections (default 8); PRIMARY_ARGS="--lanes 1" measures
# it on one.
#
# Environment: DELAYS (ms, default "1 10 40"), LOSSES (%, default
# "0 0.5 2"), RUNTIME (default 15), RAMP (default 5), LOADS (default
# "1M 4k"), RAW=0 skips the raw figures, RAW_CONNS (default 4; 1 skips
# the several-connection figure), BM_ARGS (extra flags for both daemons),
# PRIMARY_ARGS (extra flags for the primary only, e.g. "--lanes 1" for the
# replication on one connection),
# OUT (also write the table's rows as TSV there), PROFILE_DIR (with
# BM_ARGS=--pprof: the primary's CPU profile and goroutines per load go
# there). After each load the primary's view of the link is printed: the
# mirror's lag, whether writes are throttled, srtt, cwnd and loss.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
DELAYS=${DELAYS:-"1 10 40"}
LOSSES=${LOSSES:-"0 0.5 2"}
RUNTIME=${RUNTIME:-15}
RAMP=${RAMP:-5}
LOADS=${LOADS:-"1M 4k"}
RAW=${RAW:-1}
RAW_CONNS=${RAW_CONNS:-4}
export PATH=/usr/bin:/usr/sbin:$PATH:/usr/local/go/bin
PY=/usr/bin/python3
say() { printf 'bench-wan: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}
for t in fio nbdinfo curl; do
	command -v "$t" >/dev/null || die "$t not installed (scripts/setup.sh installs it)"
done

dir=$(mktemp -d /var/tmp/blockmirror-wan.XXXXXX)
pids=()
stop_all() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	# A primary stopping with a backlog for the mirror gets 10 s.
	local alive
	for _ in $(seq 100); do
		alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ "$alive" = 1 ] || break
		sleep 0.1
	done
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
cleanup() {
	stop_all
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p bin
say "go build -o bin/blockmirror ./cmd/blockmirror; go build -o bin/faultproxy ./cmd/faultproxy"
go build -o bin/blockmirror ./cmd/blockmirror
go build -o bin/faultproxy ./cmd/faultproxy
BM=$ROOT/bin/blockmirror

free_port() { "$PY" -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }

# received SEQ: the mirror's received seq, from its status.
received() {
	curl -sf "http://$madmin/v1/status" | "$PY" -c '
import json, sys
def find(o):
    if isinstance(o, dict):
        if "received_seq" in o:
            return o["received_seq"]
        for v in o.values():
            r = find(v)
            if r is not None:
                return r
print(find(json.load(sys.stdin)) or 0)'
}

# peer_state: what bounds the figure, from the primary's status at the
# end of a load: the mirror's lag, whether writes were throttled, and the
# QUIC connection's smoothed RTT, congestion window and loss.
peer_state() {
	curl -sf "http://$padmin/v1/status" | "$PY" -c '
import json, sys
def find(o):
    if isinstance(o, dict):
        if "peers" in o and isinstance(o["peers"], list):
            return o
        for v in o.values():
            r = find(v)
            if r is not None:
                return r
r = find(json.load(sys.stdin)) or {}
p = (r.get("peers") or [{}])[0]
q = p.get("quic") or {}
lost = 100.0 * q.get("packets_lost", 0) / max(1, q.get("packets_sent", 0))
print("lag %.1f s / %.1f MB, throttled %s, srtt %.1f ms, cwnd %d KB, lost %.2f%%" % (
    p.get("lag_seconds", 0), p.get("lag_bytes", 0) / 1e6, r.get("throttled"),
    q.get("srtt_us", 0) / 1e3, q.get("cwnd_bytes", 0) / 1024, lost))' || echo "status unavailable"
}

# start_cluster DELAY LOSS: mirror, proxy with the profile, primary.
start_cluster() {
	local d=$dir/run mport pport cport nport line
	rm -rf "$d"
	mkdir -p "$d"
	"$BM" certs init --out "$d/certs" p1 m1 >/dev/null
	mport=$(free_port udp)
	madmin=127.0.0.1:$(free_port tcp)
	# shellcheck disable=SC2086
	"$BM" mirror --data "$d/m1" --listen "127.0.0.3:$mport" --certs "$d/certs" --node m1 \
		--admin "$madmin" ${BM_ARGS:-} >"$d/m1.log" 2>&1 &
	pids+=($!)
	pport=$(free_port udp)
	cport=$(free_port tcp)
	control=127.0.0.1:$cport
	"$ROOT/bin/faultproxy" --listen "127.0.0.2:$pport" --target "127.0.0.3:$mport" \
		--control "$control" >"$d/proxy.out" 2>"$d/proxy.log" &
	pids+=($!)
	for _ in $(seq 100); do
		grep -q 'faultproxy: ready' "$d/proxy.out" 2>/dev/null && break
		sleep 0.1
	done
	grep -q 'faultproxy: ready' "$d/proxy.out" || die "faultproxy did not start: $(cat "$d/proxy.log")"
	nport=$(free_port tcp)
	padmin=127.0.0.1:$(free_port tcp)
	uri=nbd://127.0.0.1:$nport/disk
	# shellcheck disable=SC2086
	"$BM" serve --data "$d/p1" --size 4G --nbd "127.0.0.1:$nport" --admin "$padmin" --certs "$d/certs" \
		--node p1 --mode async --mirror "m1=127.0.0.2:$pport" ${BM_ARGS:-} ${PRIMARY_ARGS:-} >"$d/p1.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 150); do
		grep -q 'mirror connected' "$d/p1.log" && break
		sleep 0.1
	done
	grep -q 'mirror connected' "$d/p1.log" || {
		tail -20 "$d/p1.log" >&2
		die "the mirror did not connect"
	}
	curl -sf -X POST "http://$control/faults?dir=both&delay=${1}ms&drop=$(awk -v l="$2" 'BEGIN {print l / 100}')" >/dev/null ||
		die "setting the proxy's faults failed"
}

# load NAME: one fio run; prints "records/s MB/s" reaching the mirror.
load() {
	local opts r0 r1 bs
	case $1 in
	1M) opts=(--rw=write --bs=1M --iodepth=8 --size=2G) bs=1048576 ;;
	4k) opts=(--rw=randwrite --bs=4k --iodepth=32 --size=1G) bs=4096 ;;
	*) die "unknown load $1" ;;
	esac
	fio --name="$1" --thread --ioengine=nbd --uri="$uri" "${opts[@]}" --time_based \
		--runtime=$((RAMP + RUNTIME + 1)) --output="$dir/fio-$1.txt" >/dev/null 2>&1 &
	local fpid=$!
	sleep "$RAMP"
	r0=$(received)
	if [ -n "${PROFILE_DIR:-}" ]; then
		mkdir -p "$PROFILE_DIR"
		curl -sf -o "$PROFILE_DIR/$prof_name-$1.cpu.pprof" "http://$padmin/debug/pprof/profile?seconds=$((RUNTIME - 1))" &
	fi
	sleep "$RUNTIME"
	r1=$(received)
	say "  $1 at the end: $(peer_state)"
	if [ -n "${PROFILE_DIR:-}" ]; then
		# The primary's goroutines and a CPU profile over part of the run:
		# where the sender waits (needs BM_ARGS=--pprof).
		mkdir -p "$PROFILE_DIR"
		curl -sf -o "$PROFILE_DIR/$prof_name-$1.goroutines.txt" "http://$padmin/debug/pprof/goroutine?debug=1" || true
	fi
	# Not waited for: its last writes wait for the async throttle, which
	# waits for the backlog (up to --max-lag of it, and on a lossy path
	# far more) to cross the link: minutes at 2% loss. fio waits for its
	# requests in flight even when told to stop: killed.
	kill -KILL "$fpid" 2>/dev/null || true
	wait "$fpid" 2>/dev/null || true
	awk -v a="$r0" -v b="$r1" -v t="$RUNTIME" -v bs="$bs" 'BEGIN {printf "%.0f %.2f\n", (b - a) / t, (b - a) * bs / t / 1e6}'
}

# The raw figures, one transfer per profile, all profiles in one go.
declare -A raw
if [ "$RAW" = 1 ]; then
	say "raw quic-go through the proxy: go test -bench BulkWAN ./transport (${RUNTIME}s per profile)"
	conns="1 $RAW_CONNS"
	[ "$RAW_CONNS" != 1 ] || conns=1
	BM_WAN_SECONDS=$RUNTIME BM_WAN_DELAYS=$DELAYS BM_WAN_LOSSES=$LOSSES BM_WAN_CONNS=$conns \
		go test -run '^$' -bench 'BulkWAN' -benchtime 1x -timeout 60m ./transport >"$dir/raw.txt" 2>&1 || {
		tail -20 "$dir/raw.txt" >&2
		die "go test -bench BulkWAN failed"
	}
	grep '^BenchmarkBulkWAN' "$dir/raw.txt" | sed 's/^/raw: /' >&2
	# BenchmarkBulkWAN/delay=10ms/loss=0.5%[/conns=4]-2 ... 12.3 MB/s
	while read -r name mbps; do
		raw[$name]=$mbps
	done < <(awk '$1 ~ /^BenchmarkBulkWAN\// {
		n = split($1, p, "/"); sub(/-[0-9]+$/, "", p[n])
		sub(/^delay=/, "", p[2]); sub(/ms$/, "", p[2]); sub(/^loss=/, "", p[3]); sub(/%$/, "", p[3])
		c = 1; if (n >= 4) { c = p[4]; sub(/^conns=/, "", c) }
		for (i = 1; i < NF; i++) if ($(i + 1) == "MB/s") print p[2] "/" p[3] "/" c, $i }' "$dir/raw.txt")
fi

rows=$dir/rows.tsv
: >"$rows"
for delay in $DELAYS; do
	for loss in $LOSSES; do
		say "profile: delay ${delay} ms each way, loss ${loss}% each way"
		line="$delay	$loss"
		prof_name="d${delay}-l${loss}"
		for l in $LOADS; do
			# A fresh cluster per load: the backlog one load leaves must
			# not slow the next.
			start_cluster "$delay" "$loss"
			read -r rps mbps < <(load "$l")
			say "  $l: $rps records/s, $mbps MB/s"
			line="$line	$l	$rps	$mbps"
			stop_all
		done
		printf '%s\t%s\t%s\n' "$line" "${raw[$delay/$loss/1]:--}" "${raw[$delay/$loss/$RAW_CONNS]:--}" >>"$rows"
	done
done
[ -z "${OUT:-}" ] || cp "$rows" "$OUT"

"$PY" - "$rows" "$RAW_CONNS" <<'PYEOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
conns = sys.argv[2]
print()
print("replication through the fault proxy (async, 1 mirror): records/s and MB/s reaching the mirror;")
print("raw = quic-go, one stream of 1 MiB frames on one connection, through the same proxy profile;")
print("raw x%s = the same on %s connections at once" % (conns, conns))
hdr = "%8s %7s" % ("delay ms", "loss %")
loads = rows[0][2:-2:3] if rows else []
for l in loads:
    hdr += " %11s %9s" % (l + " rec/s", l + " MB/s")
hdr += " %9s %10s %10s" % ("raw MB/s", "1M / raw", "raw x" + conns)
print(hdr)
print("-" * len(hdr))
for r in rows:
    out = "%8s %7s" % (r[0], r[1])
    vals = r[2:-2]
    mb1 = None
    for i in range(0, len(vals), 3):
        out += " %11s %9s" % (vals[i + 1], vals[i + 2])
        if vals[i] == "1M":
            mb1 = float(vals[i + 2])
    raw, rawn = r[-2], r[-1]
    out += " %9s" % raw
    if raw != "-" and mb1 is not None and float(raw) > 0:
        out += " %10.2f" % (mb1 / float(raw))
    else:
        out += " %10s" % "-"
    out += " %10s" % rawn
    print(out)
PYEOF
