#!/usr/bin/env bash
# bench-resync.sh — resync and verify throughput of blockmirror on one
# machine (loopback QUIC), next to the raw single-stream QUIC throughput of
# the transport package, with one table at the end.
#
#   bash scripts/bench-resync.sh
#   SIZE=4G BENCH_DIR=/var/tmp/rs bash scripts/bench-resync.sh
#
# Scenarios (all on a SIZE volume whose primary image is random,
# non-sparse data, so holes do not make hashing trivial):
#   different  a new, empty mirror joins: every chunk differs (the
#              primary's journal has dropped seq 1, so the mirror is
#              resynced, not caught up from the journal; the records still
#              in the journal's last segment, up to 64 MiB, reach it on the
#              log stream meanwhile, so "sent" can be less than "compared")
#   identical  the same pair again after the mirror was marked inconsistent
#              in its meta.json (as after an interrupted resync whose
#              bitmap is gone): the whole disk is compared, nothing is sent
#   verify     `blockmirror verify` of the in-sync pair: hashes the whole
#              disk on both sides (best of VERIFY_RUNS)
#   quic       go test ./transport -bench 'Bulk1MiB/window=<default>': one
#              stream, 1 MiB frames, loopback
# and what a DRBD-style full copy (every byte, no comparison) of SIZE
# would take at the measured QUIC rate.
#
# Environment (all optional):
#   SIZE        volume size (default 1G)
#   BENCH_DIR   working directory (default: new dir in /var/tmp; removed
#               at the end unless KEEP=1)
#   VERIFY_RUNS verify repetitions (default 3)
#   BENCHTIME   go test -benchtime for the QUIC benchmark (default 3s)
#   HOST_P, HOST_M  loopback addresses of primary and mirror
#               (default 127.0.0.121 and 127.0.0.122)
#   OUT         also write the table (TSV) to this file
#   PPROF_DIR   profile both daemons (--pprof) for PPROF_SECONDS (default
#               5) from the start of the new-mirror resync into
#               PPROF_DIR/{primary,mirror}.pprof and print the top of each
#   BIN_BASE    another blockmirror binary (e.g. built from main): the
#               "different" scenario then runs AB_ROUNDS times (default 2)
#               with each binary, alternating (base first), on the same
#               primary data, and the table has a row per run (this
#               binary's last run is the one profiled), so a change is
#               compared side by side in one run
#               (go build -o /tmp/bm-main ./cmd/blockmirror in a checkout
#               of main; BIN_BASE=/tmp/bm-main)
#
# The images live in the page cache (this measures the software, not the
# disk); run with a SIZE larger than RAM to include the disk.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SIZE=${SIZE:-1G}
VERIFY_RUNS=${VERIFY_RUNS:-3}
BENCHTIME=${BENCHTIME:-3s}
HOST_P=${HOST_P:-127.0.0.121}
HOST_M=${HOST_M:-127.0.0.122}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
command -v go >/dev/null 2>&1 || export PATH=/usr/local/go/bin:$PATH
export PATH=/usr/bin:/usr/sbin:$PATH

say() { printf 'bench-resync: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
for t in fio go "$PY"; do command -v "$t" >/dev/null || die "$t not found"; done

case $SIZE in
*G) SIZE_BYTES=$(( ${SIZE%G} << 30 )) ;;
*M) SIZE_BYTES=$(( ${SIZE%M} << 20 )) ;;
*) SIZE_BYTES=$SIZE ;;
esac
(( SIZE_BYTES >= 256 << 20 )) || die "SIZE must be at least 256M"

if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /var/tmp/blockmirror-bench-resync.XXXXXX)
	CLEAN_DIR=1
else
	mkdir -p "$BENCH_DIR"
	CLEAN_DIR=0
fi
BIN=$BENCH_DIR/blockmirror
P_NBD=$HOST_P:10809 P_ADMIN=$HOST_P:7480
M_LISTEN=$HOST_M:7001 M_ADMIN=$HOST_M:7481
PRIMARY_PID= MIRROR_PID=
PPROF_ARGS=()
[ -z "${PPROF_DIR:-}" ] || { mkdir -p "$PPROF_DIR"; PPROF_ARGS=(--pprof); }

# stop PID: SIGTERM, SIGKILL after 5 s (only processes started here).
stop() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
		sleep 0.1
	done
	say "pid $pid did not exit 5 s after SIGTERM; killing it"
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	stop "$MIRROR_PID"
	stop "$PRIMARY_PID"
	if [ "$CLEAN_DIR" = 1 ] && [ "${KEEP:-0}" != 1 ]; then
		rm -rf "$BENCH_DIR"
	else
		say "files kept in $BENCH_DIR"
	fi
}
trap cleanup EXIT

# wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local n=$(( secs * 10 ))
	for _ in $(seq "$n"); do
		"$@" && return 0
		sleep 0.1
	done
	die "timed out after ${secs}s waiting for $what"
}

# start_primary LOG [ARGS...]
start_primary() {
	local log=$1
	shift
	"${RUN_BIN:-$BIN}" serve --data "$BENCH_DIR/p1" --nbd "$P_NBD" --admin "$P_ADMIN" \
		--certs "$BENCH_DIR/certs" --node p1 "${PPROF_ARGS[@]}" "$@" >"$log" 2>&1 &
	PRIMARY_PID=$!
	wait_for 20 "primary serving NBD" grep -qs "serving NBD" "$log"
}
start_mirror() {
	local log=$1
	"${RUN_BIN:-$BIN}" mirror --data "$BENCH_DIR/m1" --listen "$M_LISTEN" --admin "$M_ADMIN" \
		--certs "$BENCH_DIR/certs" --node m1 "${PPROF_ARGS[@]}" >"$log" 2>&1 &
	MIRROR_PID=$!
	wait_for 20 "mirror listening" grep -qs "mirror listening" "$log"
}

# log_field LOG MSG KEY: KEY's value on the last line of LOG whose msg is MSG.
log_field() {
	grep "msg=\"$2\"" "$1" | tail -1 | sed -n "s/.* $3=\([^ ]*\).*/\1/p"
}

one_segment() {
	local n
	n=$(find "$BENCH_DIR/p1/journal" -name '*.seg' | wc -l)
	[ "$n" = 1 ] && ! [ -e "$BENCH_DIR/p1/journal/00000000000000000001.seg" ]
}

say "building blockmirror"
go build -o "$BIN" ./cmd/blockmirror
"$BIN" certs init --out "$BENCH_DIR/certs" p1 m1 >/dev/null

# --- primary with SIZE of random data whose journal no longer holds seq 1
say "creating a $SIZE primary and writing random data (non-sparse) over all of it through NBD"
# --indirect-min 0: the fill's records carry their data, so the journal
# fills segments and drops seq 1 (indirect records would be a few bytes each
# and the first segment would stay).
start_primary "$BENCH_DIR/p1-setup.log" --size "$SIZE" --indirect-min 0
fio --name=fill --ioengine=nbd --uri="nbd://$P_NBD/disk" --rw=write --bs=1M --iodepth=4 \
	--size="$SIZE_BYTES" --refill_buffers --output=/dev/null
wait_for 30 "the journal to drop its first segments" one_segment
stop "$PRIMARY_PID"
PRIMARY_PID=

# --- different, A/B: the base binary and this one alternate, each
# resyncing a new, empty mirror (the last run is this binary's, below)
AB_ROWS=()
if [ -n "${BIN_BASE:-}" ]; then
	[ -x "$BIN_BASE" ] || die "BIN_BASE=$BIN_BASE is not an executable"
	for round in $(seq "${AB_ROUNDS:-2}"); do
		for which in base this; do
			[ "$which" = this ] && [ "$round" = "${AB_ROUNDS:-2}" ] && break
			RUN_BIN=$BIN
			[ "$which" = base ] && RUN_BIN=$BIN_BASE
			say "A/B round $round: resync to a new, empty mirror with the $which binary ($RUN_BIN)"
			rm -rf "$BENCH_DIR/m1"
			log=$BENCH_DIR/p1-ab-$round-$which.log
			start_mirror "$BENCH_DIR/m1-ab-$round-$which.log"
			start_primary "$log" --mirror "m1=$M_LISTEN"
			wait_for 600 "resync complete ($which binary)" grep -qs 'msg="resync complete"' "$log"
			AB_ROWS+=("$which-$round" "$(log_field "$log" "resync complete" compared_bytes)" \
				"$(log_field "$log" "resync complete" sent_bytes)" "$(log_field "$log" "resync complete" seconds)")
			stop "$PRIMARY_PID"
			PRIMARY_PID=
			stop "$MIRROR_PID"
			MIRROR_PID=
		done
	done
	rm -rf "$BENCH_DIR/m1"
	RUN_BIN=
fi

# --- different: new empty mirror, every chunk sent
say "resync to a new, empty mirror (every chunk differs)"
start_mirror "$BENCH_DIR/m1-1.log"
start_primary "$BENCH_DIR/p1-1.log" --mirror "m1=$M_LISTEN"
prof_pids=()
if [ -n "${PPROF_DIR:-}" ]; then
	for role in primary:$P_ADMIN mirror:$M_ADMIN; do
		curl -sf -o "$PPROF_DIR/${role%%:*}.pprof" \
			"http://${role#*:}/debug/pprof/profile?seconds=${PPROF_SECONDS:-5}" &
		prof_pids+=($!)
	done
fi
wait_for 600 "resync complete" grep -qs 'msg="resync complete"' "$BENCH_DIR/p1-1.log"
for p in "${prof_pids[@]}"; do wait "$p" || say "a CPU profile failed (pid $p)"; done
if [ -n "${PPROF_DIR:-}" ]; then
	for role in primary mirror; do
		echo "--- $role: go tool pprof -top $PPROF_DIR/$role.pprof"
		go tool pprof -top -nodecount=25 "$BIN" "$PPROF_DIR/$role.pprof" 2>/dev/null | sed -n '1,32p'
	done
fi
DIFF_SECS=$(log_field "$BENCH_DIR/p1-1.log" "resync complete" seconds)
DIFF_SENT=$(log_field "$BENCH_DIR/p1-1.log" "resync complete" sent_bytes)
DIFF_CMP=$(log_field "$BENCH_DIR/p1-1.log" "resync complete" compared_bytes)

# --- verify of the in-sync pair
in_sync() { "$BIN" status --admin "$P_ADMIN" --json 2>/dev/null | grep -q '"state": "in-sync"'; }
wait_for 120 "mirror in sync" in_sync
VERIFY_SECS=
for i in $(seq "$VERIFY_RUNS"); do
	out=$("$BIN" verify --admin "$P_ADMIN" --json) || die "verify failed: $out"
	s=$(printf '%s' "$out" | "$PY" -c '
import json, sys
r = json.load(sys.stdin)["peers"][0]
if r.get("error") or r["differing_bytes"]:
    sys.exit("verify: %s" % r)
print(r["seconds"])')
	say "verify run $i: ${s}s"
	if [ -z "$VERIFY_SECS" ] || "$PY" -c "import sys; sys.exit(0 if $s < $VERIFY_SECS else 1)"; then
		VERIFY_SECS=$s
	fi
done

# --- identical: force a whole-disk compare of the identical pair
say "resync of identical disks (mirror marked inconsistent, no bitmap on the primary)"
stop "$PRIMARY_PID"
PRIMARY_PID=
stop "$MIRROR_PID"
MIRROR_PID=
cmp -s "$BENCH_DIR/p1/disk.img" "$BENCH_DIR/m1/disk.img" || die "images differ after the first resync"
[ ! -e "$BENCH_DIR/p1/peers/m1.dirty" ] || die "the primary still has a dirty bitmap for m1"
"$PY" - "$BENCH_DIR/m1/meta.json" <<'EOF'
import json, sys
p = sys.argv[1]
m = json.load(open(p))
m["inconsistent"] = True
json.dump(m, open(p, "w"), indent=2)
EOF
start_mirror "$BENCH_DIR/m1-2.log"
start_primary "$BENCH_DIR/p1-2.log" --mirror "m1=$M_LISTEN"
wait_for 600 "resync complete" grep -qs 'msg="resync complete"' "$BENCH_DIR/p1-2.log"
SAME_SECS=$(log_field "$BENCH_DIR/p1-2.log" "resync complete" seconds)
SAME_SENT=$(log_field "$BENCH_DIR/p1-2.log" "resync complete" sent_bytes)
SAME_CMP=$(log_field "$BENCH_DIR/p1-2.log" "resync complete" compared_bytes)
stop "$PRIMARY_PID"
PRIMARY_PID=
stop "$MIRROR_PID"
MIRROR_PID=

# --- raw QUIC, one stream
say "transport benchmark (single stream, 1 MiB frames)"
QUIC_OUT=$(cd "$ROOT" && go test ./transport -run '^$' -bench 'Bulk1MiB' -benchtime "$BENCHTIME" -count 1 2>&1) || die "transport benchmark failed: $QUIC_OUT"
printf '%s\n' "$QUIC_OUT" | grep -E '^Benchmark' >&2
QUIC_DEFAULT=$(cd "$ROOT" && grep -o 'DefaultMaxStreamWindow *= *[0-9]* *<< *[0-9]*' transport/*.go | head -1 | sed 's/.*= *//')
QUIC_WIN_MIB=$(( ${QUIC_DEFAULT:-16 << 20} >> 20 ))
QUIC_MBS=$(printf '%s\n' "$QUIC_OUT" | grep "window=${QUIC_WIN_MIB}MiB" | grep -o '[0-9.]* MB/s' | head -1 | cut -d' ' -f1)
[ -n "$QUIC_MBS" ] || die "no MB/s for window=${QUIC_WIN_MIB}MiB in the transport benchmark output"

"$PY" - "$SIZE_BYTES" "$DIFF_CMP" "$DIFF_SENT" "$DIFF_SECS" "$SAME_CMP" "$SAME_SENT" "$SAME_SECS" \
	"$VERIFY_SECS" "$QUIC_MBS" "$QUIC_WIN_MIB" "${OUT:-}" "${AB_ROWS[@]}" <<'EOF'
import sys
size, dcmp, dsent, dsecs, scmp, ssent, ssecs, vsecs, qmbs, qwin, out = sys.argv[1:12]
ab = sys.argv[12:]
size, dcmp, dsent, scmp, ssent = map(int, (size, dcmp, dsent, scmp, ssent))
dsecs, ssecs, vsecs, qmbs = map(float, (dsecs, ssecs, vsecs, qmbs))
G = float(1 << 30)
quic = qmbs * 1e6 / G                     # GiB/s (go test MB/s is 10^6 B/s)
target = ">= 0.8 x QUIC = %.2f" % (0.8 * quic)
# name, compared, sent, seconds, GiB/s (of the disk), target, ok
rows = []
for i in range(0, len(ab), 4):  # the A/B runs (BIN_BASE), in the order run
    which, run = ab[i].split("-")
    c, s, secs = int(ab[i + 1]), int(ab[i + 2]), float(ab[i + 3])
    rows.append(("different, %s binary (run %s)" % (which, run), c, s, secs, c / G / secs,
                 target, c / G / secs >= 0.8 * quic))
name = "different (new mirror)"
if ab:
    name = "different, this binary (run %d)" % (len(ab) // 8 + 1)
rows += [
    (name, dcmp, dsent, dsecs, dcmp / G / dsecs, target, dcmp / G / dsecs >= 0.8 * quic),
    ("identical (hash only)", scmp, ssent, ssecs, scmp / G / ssecs, ">= 1.00", scmp / G / ssecs >= 1.0),
    ("verify (hash both sides)", size, 0, vsecs, size / G / vsecs, "-", None),
    ("QUIC 1 stream (window %s MiB)" % qwin, 0, 0, 0, quic, "-", None),
    ("DRBD-style full copy at QUIC rate", size, size, size / G / quic, quic, "-", None),
]
hdr = ("scenario", "compared", "sent", "seconds", "GiB/s", "target", "result")
fmt = "%-36s %12s %12s %8s %7s %-20s %s"
print(fmt % hdr)
lines = ["\t".join(hdr)]
for name, c, s, secs, rate, target, ok in rows:
    res = "-" if ok is None else ("ok" if ok else "BELOW TARGET")
    print(fmt % (name, c or "-", s if (s or c) else "-", "%.3f" % secs if secs else "-", "%.2f" % rate, target, res))
    lines.append("\t".join(map(str, (name, c, s, secs, rate, target, res))))
print("\nfull copy of %.2f GiB at the QUIC rate: %.2f s; resync of identical disks: %.2f s (%.1fx faster);"
      " of a new mirror: %.2f s" % (size / G, size / G / quic, ssecs, (size / G / quic) / ssecs, dsecs))
if out:
    open(out, "w").write("\n".join(lines) + "\n")
EOF
