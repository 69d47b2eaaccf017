#!/usr/bin/env bash
# bench-tls.sh — what NBD over TLS costs: fio 4k random reads at queue
# depth 32 through fio's nbd engine (libnbd), plaintext and TLS in turn
# against the same `blockmirror serve --nbd-tls on` (which serves both),
# with the server's CPU time per read next to IOPS and mean latency.
#
#   bash scripts/bench-tls.sh                  # 3 rounds of 5 s each way
#   ROUNDS=5 RUNTIME=10 bash scripts/bench-tls.sh
#
# Run it alone on the machine (other engineers: under flock /tmp/bm-e2e.lock).
# Environment: QD (default 32), BS (default 4k), RUNTIME seconds (default 5),
# ROUNDS (default 3), SIZE of the region read (default 512M), BIN (default:
# bin/blockmirror, built from this tree). Loopback only (127.0.0.1).
#
# fio's nbd engine hands its URI to libnbd, which refuses a tls-certificates=
# parameter unless the program allows local files (fio does not). So fio
# runs as the user nobody with HOME pointing at a directory whose
# .pki/libnbd holds the client certificate (libnbd's default place for a
# non-root user); the plaintext runs use the same user.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
QD=${QD:-32}
BS=${BS:-4k}
RUNTIME=${RUNTIME:-5}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-512M}
export PATH=/usr/bin:/usr/sbin:$PATH:/usr/local/go/bin
for tool in fio nbdinfo setpriv; do
	command -v "$tool" >/dev/null || { echo "bench-tls: $tool missing (scripts/setup.sh installs fio and libnbd-bin)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-tls: run as root (fio runs as nobody through setpriv)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
	mkdir -p bin
	go build -o bin/blockmirror ./cmd/blockmirror
	BIN=bin/blockmirror
fi
BIN=$(realpath "$BIN")
dir=$(mktemp -d /var/tmp/blockmirror-tls.XXXXXX)
chmod 755 "$dir"
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

"$BIN" certs init --out "$dir/certs" p1 >/dev/null
"$BIN" certs server --certs "$dir/certs" --out "$dir/server" --host 127.0.0.1 p1 >/dev/null
"$BIN" certs client --certs "$dir/certs" --out "$dir/home/.pki/libnbd" bench >/dev/null
mkdir -p "$dir/work"
chown -R nobody "$dir/home" "$dir/work"

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --data "$dir/p1" --size 1G --nbd "127.0.0.1:$port" --admin '' --control '' --log-level debug \
	--nbd-tls on --nbd-tls-cert "$dir/server/server-cert.pem" --nbd-tls-key "$dir/server/server-key.pem" \
	--certs "$dir/certs" --nbd-tls-client-ca cluster >"$dir/p1.log" 2>&1 &
pid=$!
plain="nbd://127.0.0.1:$port/disk"
tls="nbds://127.0.0.1:$port/disk"
for _ in $(seq 100); do
	nbdinfo "$plain" >/dev/null 2>&1 && break
	kill -0 "$pid" 2>/dev/null || { tail -5 "$dir/p1.log"; echo "bench-tls: the server exited" >&2; exit 1; }
	sleep 0.1
done

# fio_as_nobody URI ARGS...: fio's nbd engine on URI, terse output.
fio_as_nobody() {
	local uri=$1
	shift
	(cd "$dir/work" && HOME="$dir/home" setpriv --reuid=nobody --regid=nogroup --clear-groups \
		fio --name=bench --ioengine=nbd --uri="$uri" --output-format=terse --terse-version=3 "$@") | grep '^3;'
}
# Prefill the region so reads hit written blocks (over TLS, which also checks it works).
fio_as_nobody "$tls" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null
echo "TLS handshake: $(grep -m1 'nbd: TLS started' "$dir/p1.log" | grep -o 'version="[^"]*" cipher=[^ ]*')"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
printf '%-6s %-5s %10s %12s %14s\n' run mode IOPS "mean µs" "server µs CPU/read"
declare -A all
for r in $(seq "$ROUNDS"); do
	for mode in plain tls; do
		uri=$plain
		[ "$mode" = tls ] && uri=$tls
		c0=$(cpu_ticks)
		line=$(fio_as_nobody "$uri" --rw=randread --bs="$BS" --iodepth="$QD" --size="$SIZE" \
			--runtime="$RUNTIME" --time_based --norandommap --randrepeat=0)
		c1=$(cpu_ticks)
		# terse v3: field 8 read IOPS, 40 mean completion latency (µs), 6 read KiB.
		read -r iops lat kib <<<"$(printf '%s\n' "$line" | awk -F';' '{print $8, $40, $6}')"
		cpu=$(awk -v t=$((c1 - c0)) -v hz="$hz" -v kib="$kib" -v bs="$BS" 'BEGIN {
			b = bs; m = 1; if (b ~ /k$/) { m = 1; sub(/k$/, "", b) } else if (b ~ /m$/) { m = 1024; sub(/m$/, "", b) }
			ops = kib / (b * m); if (ops > 0) printf "%.1f", t / hz * 1e6 / ops; else print "-" }')
		printf '%-6s %-5s %10s %12.1f %14s\n' "$r" "$mode" "$iops" "$lat" "$cpu"
		all[$mode]+="$iops "
	done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
mp=$(printf '%s' "${all[plain]}" | median)
mt=$(printf '%s' "${all[tls]}" | median)
awk -v p="$mp" -v t="$mt" -v qd="$QD" -v bs="$BS" 'BEGIN {
	printf "median %s randread qd%s IOPS: plaintext %d, TLS %d (TLS/plaintext %.2f)\n", bs, qd, p, t, t / p }'
