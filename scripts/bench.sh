#!/usr/bin/env bash
# bench.sh — fio (nbd ioengine) against blockmirror and reference NBD
# servers in the same run, on the same kind of backing file, with one
# comparison table at the end.
#
#   sudo bash scripts/bench.sh
#   RUNTIME=20 TARGETS="blockmirror nbdkit qsd-mirror" bash scripts/bench.sh
#   # issue 15's large-write table (with the quic-go one-stream bulk figure):
#   TARGETS="blockmirror nbdkit bm-sync1 bm-async1 qsd-mirror" \
#       JOBS="seqwrite-1M-qd8 seqwrite-1M-qd8-flush256" bash scripts/bench.sh
#
# Run it alone on the machine (flock /tmp/bm-e2e.lock on shared hosts).
#
# Environment (all optional):
#   TARGETS    space-separated targets (default "blockmirror nbdkit");
#              available: blockmirror nbdkit qsd-mirror, and blockmirror
#              replicating to mirror processes on this machine: bm-async1
#              (async, 1 mirror), bm-sync1 (sync, 1 mirror), bm-sync1of2 (sync,
#              2 mirrors, the first of them to ack suffices), bm-sync2 (sync,
#              2 mirrors, both must ack)
#   JOBS       space-separated job names to run (default: all, see JOB LIST)
#   RUNTIME    seconds per job (default 7)      RAMP  ramp seconds (default 1)
#   REGION     bytes of the export the 4 KiB jobs touch (default 512M)
#   LARGE_REGION bytes the 1 MiB sequential jobs sweep (default 2G)
#              The export is prefilled over the largest region first.
#   DISK_SIZE  size of every backing file (default 4G, sparse)
#   BENCH_DIR  where the backing files go (default: a new dir in /var/tmp;
#              must be a real disk, not tmpfs)
#   BASELINE   target the ratio column divides by (default nbdkit)
#   BIN_LABEL  another blockmirror binary (e.g. built from main): a target
#              NAME@LABEL (blockmirror@base, bm-sync1@base, ...) runs the
#              binary in $BIN_LABEL (BIN_base; BASE_BIN is the same as
#              BIN_base), so a change is measured side by side with the code
#              before it (mkdir /tmp/src && git archive main | tar -x -C
#              /tmp/src && (cd /tmp/src && go build -o /tmp/bm-main
#              ./cmd/blockmirror); BIN_base=/tmp/bm-main)
#   OUT        also write the raw results (TSV) to this file
#   BM_ARGS    extra arguments for every blockmirror process (e.g.
#              "--log-level debug")
#   BM_ENV     environment for every blockmirror process (e.g.
#              "GOMAXPROCS=1", see docs/tuning.md)
#   SKIP_SETUP 1 = do not run scripts/setup.sh first
#
# Adding a target NAME: write target_NAME_start (starts it in the
# background, sets URI, appends pids to PIDS) — target_stop_all stops
# everything started — and add NAME to TARGETS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

TARGETS=${TARGETS:-"blockmirror nbdkit"}
RUNTIME=${RUNTIME:-7}
RAMP=${RAMP:-1}
REGION=${REGION:-512M}
LARGE_REGION=${LARGE_REGION:-2G}
DISK_SIZE=${DISK_SIZE:-4G}
BASELINE=${BASELINE:-nbdkit}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
	bash scripts/setup.sh </dev/null >&2
fi
command -v go >/dev/null 2>&1 || export PATH=/usr/local/go/bin:$PATH
export PATH=/usr/bin:/usr/sbin:$PATH
for t in fio nbdinfo nbdkit; do
	command -v "$t" >/dev/null || die "$t not installed (scripts/setup.sh installs it)"
done

if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /var/tmp/blockmirror-bench.XXXXXX)
	CLEAN_DIR=1
else
	mkdir -p "$BENCH_DIR"
	CLEAN_DIR=0
fi
fstype=$(stat -f -c %T "$BENCH_DIR")
[ "$fstype" != tmpfs ] || die "BENCH_DIR $BENCH_DIR is on tmpfs; use a real disk"
say "backing files in $BENCH_DIR ($fstype); runtime ${RUNTIME}s + ramp ${RAMP}s per job; region $REGION"

RESULTS=$BENCH_DIR/results.tsv
FAILED=0
: >"$RESULTS"
PIDS=()
URI=

target_stop_all() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		# wait up to 10 s, then SIGKILL
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
}

cleanup() {
	target_stop_all
	if [ "$CLEAN_DIR" = 1 ]; then rm -rf "$BENCH_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port [udp] prints a TCP (or UDP) port that is free on 127.0.0.1.
free_port() {
	"$PY" -c 'import socket, sys
s = socket.socket(type=socket.SOCK_DGRAM if sys.argv[1:] == ["udp"] else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$@"
}

# wait_nbd URI LOG: wait until URI answers, or die showing LOG.
wait_nbd() {
	for _ in $(seq 150); do
		if nbdinfo --size "$1" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	tail -20 "$2" >&2 || true
	die "no NBD server at $1"
}

# ---- targets ---------------------------------------------------------------

# blockmirror serve, backing file DIR/disk.img created by blockmirror.
target_blockmirror_start() {
	local dir=$1 port
	[ -x "$BM" ] || die "$BM missing"
	port=$(free_port)
	env ${BM_ENV:-} "$BM" serve --data "$dir/data" --size "$DISK_SIZE" \
		--nbd "127.0.0.1:$port" ${BM_ARGS:-} >"$dir/server.log" 2>&1 &
	PIDS+=($!)
	URI="nbd://127.0.0.1:$port/disk"
	wait_nbd "$URI" "$dir/server.log"
}

# blockmirror serve replicating over QUIC (loopback) to N mirror processes on
# this machine: bm_repl_start DIR MODE N ACKS.
bm_repl_start() {
	local dir=$1 mode=$2 n=$3 acks=$4 port i mport names=() margs=()
	[ -x "$BM" ] || die "$BM missing"
	for i in $(seq "$n"); do names+=("m$i"); done
	"$BM" certs init --out "$dir/certs" p1 "${names[@]}" >"$dir/certs.log" 2>&1 ||
		die "certs init failed: $(cat "$dir/certs.log")"
	for name in "${names[@]}"; do
		mport=$(free_port udp)
		env ${BM_ENV:-} "$BM" mirror --data "$dir/$name" --listen "127.0.0.1:$mport" \
			--certs "$dir/certs" --node "$name" --admin "" ${BM_ARGS:-} >"$dir/$name.log" 2>&1 &
		PIDS+=($!)
		margs+=(--mirror "$name=127.0.0.1:$mport")
	done
	port=$(free_port)
	env ${BM_ENV:-} "$BM" serve --data "$dir/p1" --size "$DISK_SIZE" \
		--nbd "127.0.0.1:$port" --admin "" --control "$dir/p1.sock" --certs "$dir/certs" --node p1 \
		--mode "$mode" --sync-acks "$acks" "${margs[@]}" ${BM_ARGS:-} >"$dir/server.log" 2>&1 &
	PIDS+=($!)
	URI="nbd://127.0.0.1:$port/disk"
	CONTROL="$dir/p1.sock"
	wait_nbd "$URI" "$dir/server.log"
	for _ in $(seq 150); do
		[ "$(grep -c 'mirror connected' "$dir/server.log")" -ge "$n" ] && return 0
		sleep 0.1
	done
	tail -20 "$dir/server.log" >&2
	die "only $(grep -c 'mirror connected' "$dir/server.log") of $n mirrors connected"
}
target_bm-async1_start() { bm_repl_start "$1" async 1 1; }
target_bm-sync1_start() { bm_repl_start "$1" sync 1 1; }
target_bm-sync2_start() { bm_repl_start "$1" sync 2 2; }
target_bm-sync1of2_start() { bm_repl_start "$1" sync 2 1; }

# wait_mirrors_caught_up waits (up to 10 minutes) until every mirror of the
# primary at $CONTROL has made durable every write the primary has: async
# acknowledges the prefill (and an earlier job) before the mirror holds it,
# and a job started then would begin seconds behind, held by --max-lag for
# that backlog instead of measuring its own writes.
wait_mirrors_caught_up() {
	local i
	for i in $(seq 6000); do
		"$BM" status --control "$CONTROL" --json 2>/dev/null | "$PY" -c '
import json, sys
r = json.load(sys.stdin)["primary"]["replication"]
sys.exit(0 if r["peers"] and all(p["durable_seq"] >= r["last_seq"] for p in r["peers"]) else 1)
' && return 0
		sleep 0.1
	done
	die "the mirrors did not catch up with the earlier writes within 10 minutes (status: $("$BM" status --control "$CONTROL" 2>&1 | tail -5))"
}

# nbdkit's file plugin on a sparse file of the same size.
target_nbdkit_start() {
	local dir=$1 port
	port=$(free_port)
	truncate -s "$DISK_SIZE" "$dir/disk.img"
	nbdkit -f -i 127.0.0.1 -p "$port" file file="$dir/disk.img" >"$dir/server.log" 2>&1 &
	PIDS+=($!)
	URI="nbd://127.0.0.1:$port/"
	wait_nbd "$URI" "$dir/server.log"
}

# qemu-storage-daemon exporting a raw file over NBD, with a blockdev-mirror
# job in write-blocking mode to an nbdkit file target (synchronous
# replication done by QEMU), started through QMP and waited for
# BLOCK_JOB_READY before the benchmark starts.
target_qsd-mirror_start() {
	local dir=$1 port tport
	command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not installed (qemu-system-common)"
	port=$(free_port)
	tport=$(free_port)
	truncate -s "$DISK_SIZE" "$dir/disk.img" "$dir/mirror.img"
	nbdkit -f -i 127.0.0.1 -p "$tport" file file="$dir/mirror.img" >"$dir/mirror.log" 2>&1 &
	PIDS+=($!)
	wait_nbd "nbd://127.0.0.1:$tport/" "$dir/mirror.log"
	qemu-storage-daemon \
		--blockdev driver=file,node-name=file0,filename="$dir/disk.img",cache.direct=off,aio=threads \
		--blockdev driver=raw,node-name=src,file=file0 \
		--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="$port" \
		--export type=nbd,id=exp0,node-name=src,name=disk,writable=on \
		--chardev socket,id=qmp0,path="$dir/qmp.sock",server=on,wait=off \
		--monitor chardev=qmp0 >"$dir/server.log" 2>&1 &
	PIDS+=($!)
	URI="nbd://127.0.0.1:$port/disk"
	wait_nbd "$URI" "$dir/server.log"
	"$PY" - "$dir/qmp.sock" "$tport" <<'PYEOF' >&2
import json, socket, sys, time
path, tport = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rw")
def recv():
    line = f.readline()
    if not line:
        sys.exit("qmp: connection closed")
    return json.loads(line)
def cmd(name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}) + "\n"); f.flush()
    while True:
        m = recv()
        if "return" in m: return m["return"]
        if "error" in m: sys.exit("qmp %s: %s" % (name, m["error"]))
        events.append(m)
events = []
recv()  # greeting
cmd("qmp_capabilities")
cmd("blockdev-add", **{"driver": "nbd", "node-name": "tgt",
    "server": {"type": "inet", "host": "127.0.0.1", "port": str(tport)}})
cmd("blockdev-mirror", **{"job-id": "m0", "device": "src", "target": "tgt",
    "sync": "full", "copy-mode": "write-blocking"})
deadline = time.time() + 300
while time.time() < deadline:
    for m in events:
        if m.get("event") == "BLOCK_JOB_READY":
            print("qmp: mirror job ready")
            sys.exit(0)
        if m.get("event") in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"):
            sys.exit("qmp: mirror job failed: %s" % m)
    events.clear()
    events.append(recv())
sys.exit("qmp: no BLOCK_JOB_READY in 300 s")
PYEOF
}

# ---- jobs ------------------------------------------------------------------
# name|fio options (size, runtime, ramp and engine are added; a --size in
# the options replaces REGION). Latency columns are per write/read (fio's
# lat_ns); with fsync=N fio's nbd engine sends NBD_CMD_FLUSH every N writes
# and its latency is in "flush mean/p99". The 1 MiB jobs sweep LARGE_REGION
# (issue 15's large-write measurement: a VM image copied in, a restore),
# without flushes and with one every 256 MiB; the 256 KiB and 128 KiB ones
# place --indirect-min (a write at or above it takes the indirect path).
JOB_LIST="
randwrite-4k-qd1|--rw=randwrite --bs=4k --iodepth=1
randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32
randread-4k-qd32|--rw=randread --bs=4k --iodepth=32
seqwrite-1M-qd8|--rw=write --bs=1M --iodepth=8 --size=$LARGE_REGION
seqwrite-1M-qd8-flush256|--rw=write --bs=1M --iodepth=8 --size=$LARGE_REGION --fsync=256
seqwrite-256k-qd8|--rw=write --bs=256k --iodepth=8 --size=$LARGE_REGION
seqwrite-128k-qd8|--rw=write --bs=128k --iodepth=8 --size=$LARGE_REGION
randwrite-4k-qd32-fsync32|--rw=randwrite --bs=4k --iodepth=32 --fsync=32
randwrite-4k-qd1-fsync1|--rw=randwrite --bs=4k --iodepth=1 --fsync=1
"
JOBS=${JOBS:-$(echo "$JOB_LIST" | sed -n 's/|.*//p' | tr '\n' ' ')}

# bytes SIZE: SIZE (e.g. 512M, 2G) in bytes.
bytes() { numfmt --from=iec "$1"; }

# The prefill covers the largest region any selected job touches.
PREFILL=$REGION
for job in $JOBS; do
	case $(echo "$JOB_LIST" | sed -n "s/^$job|//p") in
	*"--size=$LARGE_REGION"*)
		[ "$(bytes "$LARGE_REGION")" -le "$(bytes "$PREFILL")" ] || PREFILL=$LARGE_REGION
		;;
	esac
done
[ "$(bytes "$PREFILL")" -le "$(bytes "$DISK_SIZE")" ] || die "DISK_SIZE $DISK_SIZE is smaller than the region $PREFILL"

# The block device under BENCH_DIR, for the bytes each job made it write
# (/sys/block/DEV/stat, field 7: 512-byte sectors written); empty if it
# cannot be told (then the column is left out).
DISK_STAT=
dev=$(df --output=source "$BENCH_DIR" 2>/dev/null | tail -1)
dev=$(basename "$(realpath "$dev" 2>/dev/null)" 2>/dev/null || true)
for d in "$dev" "$(basename "$(dirname "$(realpath "/sys/class/block/$dev" 2>/dev/null)")")"; do
	[ -n "$d" ] && [ -r "/sys/block/$d/stat" ] && { DISK_STAT=/sys/block/$d/stat; break; }
done
disk_written() { [ -n "$DISK_STAT" ] && awk '{printf "%.0f\n", $7 * 512}' "$DISK_STAT" || echo 0; }

# While a job runs: the peaks of the machine's dirty and under-writeback
# page cache (/proc/vmstat nr_dirty, nr_writeback, in MiB), every 0.2 s,
# as "dirty writeback" into $1 — what tells the kernel's dirty throttling
# (balance_dirty_pages) and a sync writing back a large backlog apart from
# a CPU limit. Other work on the machine counts too.
vm_peaks() {
	local d=0 w=0 nd nw
	while :; do
		read -r nd nw < <(awk '/^nr_dirty /{d=$2} /^nr_writeback /{w=$2} END{print int(d*4/1024), int(w*4/1024)}' /proc/vmstat)
		[ "$nd" -le "$d" ] || d=$nd
		[ "$nw" -le "$w" ] || w=$nw
		echo "$d $w" >"$1.tmp" && mv -f "$1.tmp" "$1" # whole lines only: the reader may come at any moment
		sleep 0.2
	done
}
VM=$BENCH_DIR/vm.tsv
: >"$VM"

# run_job TARGET NAME OPTS...: one fio run, one TSV line in $RESULTS (and
# one in $VM: dirty/writeback peaks and the bytes the disk wrote).
run_job() {
	local target=$1 name=$2 json vmpid disk0
	shift 2
	json=$BENCH_DIR/$target-$name.json
	disk0=$(disk_written)
	vm_peaks "$BENCH_DIR/vm.now" &
	vmpid=$!
	# shellcheck disable=SC2068
	fio --name="$name" --ioengine=nbd --uri="$URI" --size="$REGION" \
		--time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
		--lat_percentiles=1 --randrepeat=0 --norandommap \
		--output-format=json --output="$json" $@ >"$json.out" 2>&1 || {
		kill "$vmpid" 2>/dev/null || true
		wait "$vmpid" 2>/dev/null || true
		CLEAN_DIR=0 # keep the evidence
		tail -5 "$json.out" >&2
		for f in "$BENCH_DIR/$target"/*.log; do
			say "--- tail of $f"
			tail -5 "$f" >&2
		done
		say "error: fio $name on $target failed; files kept in $BENCH_DIR"
		FAILED=1
		printf '%s\t%s\tFAILED\n' "$target" "$name" >>"$RESULTS"
		return 0
	}
	kill "$vmpid" 2>/dev/null || true
	wait "$vmpid" 2>/dev/null || true
	printf '%s\t%s\t%s\t%s\n' "$target" "$name" "$(cat "$BENCH_DIR/vm.now" 2>/dev/null || echo "0 0")" \
		$(($(disk_written) - disk0)) | tr ' ' '\t' >>"$VM"
	"$PY" - "$json" "$target" "$name" >>"$RESULTS" <<'PYEOF'
import json, sys
path, target, name = sys.argv[1:4]
j = json.load(open(path))["jobs"][0]
if j["error"]:
    sys.exit("fio error %d" % j["error"])
d = j["write"] if j["write"]["io_bytes"] else j["read"]
lat = d["lat_ns"]
p99 = lat.get("percentile", {}).get("99.000000", 0)
# fsync=N jobs: NBD_CMD_FLUSH latency is reported apart from write latency
sync = j.get("sync", {}).get("lat_ns", {})
print("\t".join([target, name, "%.0f" % d["iops"], "%.1f" % (d["bw_bytes"] / 1e6),
                 "%.1f" % (lat["mean"] / 1e3), "%.1f" % (p99 / 1e3),
                 "%.1f" % (sync.get("mean", 0) / 1e3),
                 "%.1f" % (sync.get("percentile", {}).get("99.000000", 0) / 1e3)]))
PYEOF
	say "$(tail -1 "$RESULTS" | tr '\t' ' ')"
}

# record_rss TARGET: the peak resident set (VmHWM) of every blockmirror
# process of TARGET, one "TARGET<TAB>role<TAB>MiB" line each in $RSS.
RSS=$BENCH_DIR/rss.tsv
: >"$RSS"
record_rss() {
	local pid role kb
	for pid in "${PIDS[@]}"; do
		[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(realpath -m "$BM")" ] || continue
		role=$(tr '\0' ' ' <"/proc/$pid/cmdline" | awk '{print $2}')
		[ "$role" != mirror ] || role=$(tr '\0' ' ' <"/proc/$pid/cmdline" | sed -n 's/.*--node \([^ ]*\).*/mirror-\1/p')
		kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
		printf '%s\t%s\t%d\n' "$1" "$role" $((kb / 1024)) >>"$RSS"
	done
}

# ---- main ------------------------------------------------------------------
if [[ " $TARGETS " == *" blockmirror "* || " $TARGETS " == *" bm-"* ]]; then
	say "go build -o bin/blockmirror ./cmd/blockmirror"
	mkdir -p bin
	go build -o bin/blockmirror ./cmd/blockmirror
fi

for target in $TARGETS; do
	kind=${target%@*}
	BM=$ROOT/bin/blockmirror
	if [ "$kind" != "$target" ]; then
		label=${target##*@}
		[[ $label =~ ^[A-Za-z0-9_]+$ ]] || die "target $target: the label after @ must be letters, digits or _"
		var=BIN_$label
		[ "$label" != base ] || [ -n "${!var:-}" ] || var=BASE_BIN
		[ -n "${!var:-}" ] || die "target $target needs $var (a blockmirror binary)"
		BM=$(realpath "${!var}")
	fi
	declare -F "target_${kind}_start" >/dev/null || die "unknown target $target"
	dir=$BENCH_DIR/$target
	mkdir -p "$dir"
	say "== $target: starting"
	CONTROL=
	"target_${kind}_start" "$dir"
	say "$target: $URI; prefilling $PREFILL"
	fio --name=prefill --ioengine=nbd --uri="$URI" --size="$PREFILL" --rw=write \
		--bs=1M --iodepth=8 --output="$dir/prefill.txt" >/dev/null ||
		die "prefill of $target failed"
	# The prefill's dirty pages reach the disk now, not in the first job.
	find "$dir" -type f -size +1M -exec sync {} + 2>/dev/null || true # files may go meanwhile
	for job in $JOBS; do
		opts=$(echo "$JOB_LIST" | sed -n "s/^$job|//p")
		[ -n "$opts" ] || die "unknown job $job"
		# Each job starts with the mirrors holding everything before it.
		[ -z "$CONTROL" ] || wait_mirrors_caught_up
		# shellcheck disable=SC2086
		run_job "$target" "$job" $opts
	done
	record_rss "$target"
	target_stop_all
done

[ -z "${OUT:-}" ] || cp "$RESULTS" "$OUT"

# With replication targets: the raw quic-go loopback figures the
# replication numbers stand on (4 KiB round trip on one stream; bulk
# throughput of one stream, in-process and to another process — the
# latter is the figure a replicated large write is held against; CPU per
# 4 KiB record streamed to another process that acks each frame, the
# transport's floor under every replicated write), from transport's Go
# benchmarks.
if [[ " $TARGETS " == *" bm-"* ]]; then
	say "quic-go loopback: go test -bench 'RTT4K|Bulk1MiB|RecordsProcess' ./transport"
	env ${BM_ENV:-} go test -run '^$' -bench 'RTT4K|Bulk1MiB|RecordsProcess' -benchtime 2s ./transport \
		>"$BENCH_DIR/quic.txt" 2>&1 || say "transport benchmarks failed"
	grep '^Benchmark' "$BENCH_DIR/quic.txt" | sed 's/^/quic: /' >&2 || true
	# The one-stream process-to-process bulk figure joins the table.
	awk '$1 ~ /^BenchmarkBulk1MiBProcess/ {for (i = 1; i < NF; i++) if ($(i + 1) == "MB/s")
		printf "quic-go\tbulk-1M-1stream\t%.0f\t%s\t0\t0\t0\t0\n", $i, $i}' "$BENCH_DIR/quic.txt" >>"$RESULTS"
	[ -z "${OUT:-}" ] || cp "$RESULTS" "$OUT"
fi

"$PY" - "$RESULTS" "$BASELINE" "$TARGETS" "$JOBS" "$RSS" "$VM" $((RUNTIME + RAMP)) <<'PYEOF'
import sys
path, base, targets, jobs, rss_path = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split(), sys.argv[5]
vm_path, secs = sys.argv[6], float(sys.argv[7])
res = {}
for line in open(path):
    t, j, *v = line.rstrip("\n").split("\t")
    res[(t, j)] = None if v == ["FAILED"] else tuple(float(x) for x in v)
hdr = "%-26s %-12s %9s %9s %10s %10s %17s" % ("job", "target", "IOPS", "MB/s", "mean us", "p99 us",
                                               "flush mean/p99 us")
if base in targets:
    hdr += "  %10s %9s" % ("IOPS/" + base, "p99/" + base)
print()
print(hdr)
print("-" * len(hdr))
for j in jobs:
    for t in targets:
        if (t, j) not in res:
            continue
        r = res[(t, j)]
        if r is None:
            print("%-26s %-12s %9s" % (j, t, "FAILED"))
            continue
        flush = "%.0f/%.0f" % r[4:6] if r[4] else "-"
        row = "%-26s %-12s %9.0f %9.1f %10.1f %10.1f %17s" % ((j, t) + r[:4] + (flush,))
        b = res.get((base, j))  # None if the baseline failed
        if b and t != base:
            row += "  %10.2f %9.2f" % (r[0] / b[0] if b[0] else 0, r[3] / b[3] if b[3] else 0)
        print(row)
q = res.get(("quic-go", "bulk-1M-1stream"))
if q:
    print("%-26s %-12s %9s %9.1f   (quic-go, 1 MiB frames on one stream to another process)" % (
        "bulk-1M-1stream", "quic-go", "-", q[1]))
# Issue 15's goals for large writes, as ratios of figures of this run.
one = lambda t, j: (res.get((t, j)) or (None, None))[1]
goals = [("blockmirror", "nbdkit", 0.8), ("bm-sync1", "blockmirror", 0.8),
         ("bm-sync1", "quic-go", 0.7), ("bm-async1", "blockmirror", 0.9)]
lines = []
sfxs = [""] + sorted({"@" + t.split("@", 1)[1] for t in targets if "@" in t})
for j in ("seqwrite-1M-qd8", "seqwrite-1M-qd8-flush256"):
    for (t, b, goal), sfx in [(g, sfx) for sfx in sfxs for g in goals]:
        t = t + sfx
        if b.startswith(("blockmirror", "bm-")):
            b = b + sfx
        bj = "bulk-1M-1stream" if b == "quic-go" else j
        a, d = one(t, j), one(b, bj)
        if a is not None and d:
            lines.append("%-26s %-17s / %-17s %5.2f  (goal >= %.1f)%s" % (
                j, t, b, a / d, goal, "" if a / d >= goal else "  NOT MET"))
if lines:
    print()
    print("large writes, MB/s ratios (issue 15 goals)")
    print("\n".join(lines))
vm = {}
for line in open(vm_path):
    f = line.split()
    if len(f) != 5:  # a job whose sampler had not written yet
        continue
    t, j, d, w, disk = f
    vm[(t, j)] = (int(d), int(w), int(disk))
if vm:
    print()
    print("page cache and disk during each job (peaks of /proc/vmstat nr_dirty and nr_writeback, whole machine;")
    print("disk MB/s: bytes the disk under BENCH_DIR wrote over ramp + runtime, per byte the job wrote)")
    print("%-26s %-17s %10s %14s %10s %8s" % ("job", "target", "dirty MiB", "writeback MiB", "disk MB/s", "x job"))
    for j in jobs:
        for t in targets:
            if (t, j) in vm and res.get((t, j)):
                d, w, disk = vm[(t, j)]
                mbs = disk / secs / 1e6
                r = res[(t, j)][1]
                print("%-26s %-17s %10d %14d %10.1f %8s" % (j, t, d, w, mbs, "%.2f" % (mbs / r) if r else "-"))
rss = {}
for line in open(rss_path):
    t, role, mib = line.split()
    rss.setdefault(t, []).append("%s %s MiB" % (role, mib))
if rss:
    print()
    print("peak RSS of the blockmirror processes (VmHWM, whole run of the target; goal <= 256 MiB)")
    for t in targets:
        if t in rss:
            print("%-12s %s" % (t, ", ".join(rss[t])))
PYEOF
exit "$FAILED"
