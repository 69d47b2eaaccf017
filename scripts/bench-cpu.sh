#!/usr/bin/env bash
# bench-cpu.sh — CPU time each blockmirror process spends per 4 KiB random
# write, next to fio's IOPS and mean latency: the figure to compare when a
# change is meant to make replication cheaper (IOPS alone is noisy on a
# small shared machine; CPU per write is much steadier).
#
#   bash scripts/bench-cpu.sh                 # sync, one mirror, qd32
#   QD=1 MODE=async bash scripts/bench-cpu.sh
#   NOMIRROR=1 bash scripts/bench-cpu.sh      # serve alone
#
# It also prints fio's own CPU per write and the whole machine's (every
# process and kernel thread: busy time from /proc/stat over the run, so
# anything else running at the time counts too), with how busy the
# machine was: what is left of the CPU budget.
#
# Environment: QD (default 32), RUNTIME seconds (default 5), MODE sync|async
# (default sync), NOMIRROR=1, BM_ENV (environment for both daemons, e.g.
# GOMAXPROCS=2), BIN (default: bin/blockmirror, built from this tree).
# RW (fio --rw, default randwrite), BS (default 4k), SIZE (region, default
# 256M), FSYNC (fio --fsync=N: a FLUSH every N writes; default none): e.g.
# the large-write job of issue 15 is
#
#   RW=write BS=1M QD=8 SIZE=2G [FSYNC=256] bash scripts/bench-cpu.sh
#
# PPROF=DIR also takes a CPU profile of each daemon over the run (its admin
# endpoint with --pprof) into DIR/primary.pprof and DIR/mirror.pprof and
# prints the top of each (go tool pprof -top; TOP entries, default 30).
# Loopback only: the mirror listens on 127.0.0.2, NBD on 127.0.0.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
QD=${QD:-32}
RUNTIME=${RUNTIME:-5}
MODE=${MODE:-sync}
RW=${RW:-randwrite}
BS=${BS:-4k}
SIZE=${SIZE:-256M}
TOP=${TOP:-30}
fsync=()
[ -z "${FSYNC:-}" ] || fsync=(--fsync="$FSYNC")
export PATH=/usr/bin:$PATH:/usr/local/go/bin
command -v fio >/dev/null || { echo "bench-cpu: fio missing (scripts/setup.sh installs it)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
	mkdir -p bin
	go build -o bin/blockmirror ./cmd/blockmirror
	BIN=bin/blockmirror
fi
BIN=$(realpath "$BIN")
dir=$(mktemp -d /var/tmp/blockmirror-cpu.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
nbd_port=$(free_port tcp)
# admin ROLE: the admin flags of a daemon (an endpoint with the profiler
# when PPROF is set, none otherwise); the address goes to $dir/ROLE.admin.
admin() {
	if [ -z "${PPROF:-}" ]; then
		echo "--admin="
		return
	fi
	local a
	a=127.0.0.1:$(free_port tcp)
	echo "$a" >"$dir/$1.admin"
	echo "--admin=$a --pprof"
}
repl=()
mpid=
if [ -z "${NOMIRROR:-}" ]; then
	"$BIN" certs init --out "$dir/certs" p1 m1 >/dev/null
	mport=$(free_port udp)
	# shellcheck disable=SC2046
	env ${BM_ENV:-} "$BIN" mirror --data "$dir/m1" --listen "127.0.0.2:$mport" --certs "$dir/certs" \
		--node m1 $(admin mirror) >"$dir/m1.log" 2>&1 &
	mpid=$!
	pids+=("$mpid")
	repl=(--mirror "m1=127.0.0.2:$mport" --certs "$dir/certs" --node p1 --mode "$MODE")
fi
disk=$(numfmt --from=iec "$SIZE")
disk=$(((disk + (1 << 30) - 1) / (1 << 30) * (1 << 30)))
# shellcheck disable=SC2046
env ${BM_ENV:-} "$BIN" serve --data "$dir/p1" --size "$disk" --nbd "127.0.0.1:$nbd_port" $(admin primary) \
	"${repl[@]}" >"$dir/p1.log" 2>&1 &
ppid=$!
pids+=("$ppid")
uri="nbd://127.0.0.1:$nbd_port/disk"
for _ in $(seq 100); do
	nbdinfo "$uri" >/dev/null 2>&1 && break
	sleep 0.1
done
if [ -n "$mpid" ]; then
	for _ in $(seq 100); do
		grep -q 'mirror connected' "$dir/p1.log" && break
		sleep 0.1
	done
fi
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null
find "$dir" -type f -size +1M -exec sync {} + 2>/dev/null || true # files may go meanwhile
cpu() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
# Whole machine: busy ticks (user, nice, system, irq, softirq) of all CPUs,
# kernel threads (writeback, softirq) included.
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
profs=()
if [ -n "${PPROF:-}" ]; then
	mkdir -p "$PPROF"
	for role in primary mirror; do
		[ -f "$dir/$role.admin" ] || continue
		curl -sf -o "$PPROF/$role.pprof" "http://$(cat "$dir/$role.admin")/debug/pprof/profile?seconds=$RUNTIME" &
		profs+=($!)
	done
fi
p0=$(cpu "$ppid"); m0=$(cpu "$mpid"); b0=$(busy)
read -r iops kbps lat fiocpu < <(fio --name=t --ioengine=nbd --uri="$uri" --rw="$RW" --bs="$BS" --iodepth="$QD" \
	--size="$SIZE" "${fsync[@]}" --runtime="$RUNTIME" --time_based --output-format=terse |
	awk -F';' 'NF > 50 {print $49, $48, $81, $88 + $89}')
p1=$(cpu "$ppid"); m1=$(cpu "$mpid"); b1=$(busy)
for p in "${profs[@]}"; do wait "$p" || echo "bench-cpu: a profile download failed" >&2; done
tck=$(getconf CLK_TCK)
writes=$((iops * RUNTIME))
[ "$writes" -gt 0 ] || { echo "bench-cpu: fio did no writes; logs in $dir" >&2; trap - EXIT; exit 1; }
label=$MODE
[ -z "${NOMIRROR:-}" ] || label=none
printf 'rw=%s bs=%s qd=%s fsync=%s mode=%s iops=%s MB/s=%.1f mean_lat_us=%.1f cpu_us_per_write: primary=%d mirror=%d fio=%d machine=%d (machine busy %d%% of %d CPUs)\n' \
	"$RW" "$BS" "$QD" "${FSYNC:-0}" "$label" "$iops" "$(awk -v k="$kbps" 'BEGIN {print k * 1024 / 1e6}')" "$lat" \
	$(((p1 - p0) * 1000000 / tck / writes)) $(((m1 - m0) * 1000000 / tck / writes)) \
	"$(awk -v c="$fiocpu" -v w="$writes" -v r="$RUNTIME" 'BEGIN {printf "%d", c / 100 * r * 1e6 / w}')" \
	$(((b1 - b0) * 1000000 / tck / writes)) $(((b1 - b0) * 100 / tck / RUNTIME / $(nproc))) "$(nproc)"
if [ -n "${PPROF:-}" ]; then
	for role in primary mirror; do
		[ -s "$PPROF/$role.pprof" ] || continue
		echo "--- $role: go tool pprof -top $PPROF/$role.pprof"
		go tool pprof -top -nodecount="$TOP" "$BIN" "$PPROF/$role.pprof" 2>/dev/null
	done
fi
