#!/usr/bin/env bash
# run.sh — the main job on one machine: build blockmirror, create a CA and
# node certificates, start a mirror daemon and a primary that replicates to
# it synchronously, write to the disk with a real NBD client, show that both
# copies are in sync, then keep serving until Ctrl-C (which stops both).
#
#   sudo bash scripts/run.sh
#
# Environment (all optional):
#   VAR_DIR     where certificates, data and logs go    (default ./var)
#   SIZE        size of the volume when created         (default 1G)
#   NBD_ADDR    the primary's NBD address                (default 127.0.0.1:10809)
#   MIRROR_ADDR the mirror's QUIC address                (default 127.0.0.2:7001)
#   MODE        sync or async                            (default sync)
#               auto: automatic failover instead — a primary and two mirrors,
#               each running an embedded etcd member; the primary is killed,
#               a mirror takes over with no command, and the old primary,
#               restarted with its usual command, rejoins as a mirror
#   EXIT        1 = stop after the demonstration instead of serving on
#   SKIP_SETUP  1 = do not run scripts/setup.sh first
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

VAR_DIR=${VAR_DIR:-./var}
SIZE=${SIZE:-1G}
NBD_ADDR=${NBD_ADDR:-127.0.0.1:10809}
MIRROR_ADDR=${MIRROR_ADDR:-127.0.0.2:7001}
MODE=${MODE:-sync}
P_ADMIN=127.0.0.1:7480
M_ADMIN=127.0.0.1:7481
EXPORT=disk

say() { printf 'run: %s\n' "$*"; }
die() { say "error: $*"; exit 1; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
	bash scripts/setup.sh </dev/null
fi
command -v go >/dev/null 2>&1 || export PATH=/usr/local/go/bin:$PATH
export PATH=/usr/bin:/usr/sbin:$PATH

say "go build -o bin/blockmirror ./cmd/blockmirror"
mkdir -p bin "$VAR_DIR"
go build -o bin/blockmirror ./cmd/blockmirror
B=$ROOT/bin/blockmirror

# Certificates: a cluster CA and one key pair per node (kept on re-runs).
"$B" certs init --out "$VAR_DIR/certs" primary mirror1 >/dev/null
say "certificates in $VAR_DIR/certs (CA + primary, mirror1)"

pids=()
cleanup() {
	trap - INT TERM EXIT
	if [ ${#pids[@]} -gt 0 ]; then
		say "stopping (SIGTERM: each node checkpoints and exits)"
		kill -TERM "${pids[@]}" 2>/dev/null || true
		wait "${pids[@]}" 2>/dev/null || true
	fi
}
trap cleanup INT TERM EXIT

size_args=()
[ -e "$VAR_DIR/primary/meta.json" ] || size_args=(--size "$SIZE")

if [ "$MODE" = auto ]; then
	# Automatic failover: n1 (127.0.0.1), n2 (127.0.0.2), n3 (127.0.0.3),
	# each with an etcd member of one three-member cluster.
	"$B" certs init --out "$VAR_DIR/auto/certs" n1 n2 n3 >/dev/null
	A=$VAR_DIR/auto
	[ -e "$A/n1/meta.json" ] || size_args=(--size "$SIZE")
	cluster="n1=http://127.0.0.1:2380,n2=http://127.0.0.2:2380,n3=http://127.0.0.3:2380"
	etcd="http://127.0.0.1:2379,http://127.0.0.2:2379,http://127.0.0.3:2379"
	mirrors=(--mirror n1=127.0.0.1:7101 --mirror n2=127.0.0.2:7101 --mirror n3=127.0.0.3:7101)
	declare -A pid
	start() { # NAME CMD [ARGS]
		local n=$1 cmd=$2 i=${1#n}
		shift 2
		"$B" "$cmd" --data "$A/$n" --listen "127.0.0.$i:7101" --nbd "127.0.0.$i:10809" --export "$EXPORT" \
			--admin "127.0.0.$i:7480" --control "$A/$n.sock" --certs "$A/certs" --node "$n" "${mirrors[@]}" \
			--etcd "$etcd" --etcd-embed "$A/etcd-$n" --etcd-embed-client "http://127.0.0.$i:2379" \
			--etcd-embed-peer "http://127.0.0.$i:2380" --etcd-embed-cluster "$cluster" \
			--failover-ttl 2s --failover-min-interval -1s "$@" >>"$A/$n.log" 2>&1 &
		pid[$n]=$!
		pids+=($!)
	}
	leader() { # prints the node serving as primary
		for i in 1 2 3; do
			"$B" status --admin "127.0.0.$i:7480" --json 2>/dev/null | grep -q '"leader": true' && { echo "n$i"; return; }
		done
		return 1
	}
	say "automatic failover: n1 (primary), n2 and n3 (mirrors), each with an embedded etcd member; logs in $A/*.log"
	start n2 mirror
	start n3 mirror
	start n1 serve "${size_args[@]}"
	for _ in $(seq 300); do
		[ "$(leader)" = n1 ] && "$B" status --admin 127.0.0.1:7480 --json | grep -q '"writes_until_ns": [1-9]' && break
		sleep 0.1
	done
	[ "$(leader)" = n1 ] || die "n1 did not become the leader (see $A/n1.log)"
	say "n1 holds the leader key and serves nbd://127.0.0.1:10809/$EXPORT"
	qemu-io -f raw -c 'write -P 0x5a 0 32M' -c flush "nbd://127.0.0.1:10809/$EXPORT" | grep -E '^wrote' | sed 's/^/run:   /'
	"$B" cluster status --etcd "$etcd" --volume "$EXPORT" | sed 's/^/run:   /'
	say "kill -9 n1 (pid ${pid[n1]}) — nobody runs a command"
	t0=$(date +%s.%N)
	kill -9 "${pid[n1]}"
	new=""
	for _ in $(seq 200); do
		new=$(leader || true)
		if [ -n "$new" ] && [ "$new" != n1 ]; then
			i=${new#n}
			nbdinfo "nbd://127.0.0.$i:10809/$EXPORT" >/dev/null 2>&1 && break
		fi
		sleep 0.05
	done
	[ -n "$new" ] && [ "$new" != n1 ] || die "no mirror took over (see $A/n2.log, $A/n3.log)"
	t1=$(date +%s.%N)
	say "$new took over: NBD served at nbd://127.0.0.${new#n}:10809/$EXPORT $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s after the kill"
	qemu-io -f raw -c 'read -P 0x5a 0 32M' "nbd://127.0.0.${new#n}:10809/$EXPORT" | grep -E '^read' | sed 's/^/run:   /'
	say "restarting n1 with its usual command: it finds a newer epoch in etcd and rejoins as a mirror"
	start n1 serve
	for _ in $(seq 300); do
		"$B" status --admin 127.0.0.1:7480 --json 2>/dev/null | grep -q '"mirror"' && break
		sleep 0.1
	done
	"$B" status --admin 127.0.0.1:7480 | sed 's/^/run:   /'
	"$B" cluster status --etcd "$etcd" --volume "$EXPORT" | sed 's/^/run:   /'
	say "done: $new is the primary, n1 its mirror again. Try: bin/blockmirror cluster status --etcd $etcd --volume $EXPORT"
	[ "${EXIT:-0}" = 1 ] && exit 0
	wait -n "${pids[@]}" || true
	say "a node exited; see $A/*.log"
	exit 0
fi

say "starting the mirror daemon: QUIC $MIRROR_ADDR, data $VAR_DIR/mirror1, log $VAR_DIR/mirror1.log"
"$B" mirror --data "$VAR_DIR/mirror1" --listen "$MIRROR_ADDR" --certs "$VAR_DIR/certs" --node mirror1 \
	--admin "$M_ADMIN" --nbd 127.0.0.2:10809 --mirror "primary=127.0.0.1:7001" --allow-degraded \
	>"$VAR_DIR/mirror1.log" 2>&1 &
pids+=($!)

say "starting the primary: NBD $NBD_ADDR, $MODE replication to mirror1, data $VAR_DIR/primary, log $VAR_DIR/primary.log"
"$B" serve --data "$VAR_DIR/primary" "${size_args[@]}" --nbd "$NBD_ADDR" --export "$EXPORT" \
	--admin "$P_ADMIN" --mirror "mirror1=$MIRROR_ADDR" --mode "$MODE" --listen 127.0.0.1:7001 \
	--certs "$VAR_DIR/certs" --node primary >"$VAR_DIR/primary.log" 2>&1 &
pids+=($!)

uri="nbd://$NBD_ADDR/$EXPORT"
for _ in $(seq 100); do
	nbdinfo "$uri" >/dev/null 2>&1 && break
	kill -0 "${pids[1]}" 2>/dev/null || { tail -5 "$VAR_DIR/primary.log"; die "the primary exited"; }
	sleep 0.1
done
nbdinfo "$uri" >/dev/null 2>&1 || die "no NBD server at $uri (see $VAR_DIR/primary.log)"
say "serving $uri"

say "a client writes: qemu-io writes 64 MiB of patterns, fio 5 s of verified random writes"
qemu-io -f raw -c 'write -P 0x5a 0 32M' -c 'write -P 0xa5 32M 32M' -c flush "$uri" | grep -E '^wrote' | sed 's/^/run:   /'
( cd "$VAR_DIR" && fio --name=demo --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=16 \
	--offset=64M --size=64M --runtime=5 --time_based --verify=crc32c --verify_fatal=1 \
	--output-format=terse --terse-version=3 >fio-demo.txt 2>&1 ) || die "fio failed (see $VAR_DIR/fio-demo.txt)"
awk -F';' 'NF>80 {printf "run:   fio: %s write IOPS, mean latency %.0f µs, verify ok\n", $49, $81}' "$VAR_DIR/fio-demo.txt"
qemu-io -f raw -c 'read -P 0x5a 0 32M' -c 'read -P 0xa5 32M 32M' "$uri" | grep -E '^read' | sed 's/^/run:   /'

# Wait until the mirror has applied everything, then show both nodes.
for _ in $(seq 100); do
	st=$("$B" status --admin "$P_ADMIN" --json)
	if printf '%s' "$st" | grep -q '"state": "in-sync"' &&
		printf '%s' "$st" | grep -q '"lag_records": 0'; then
		break
	fi
	sleep 0.1
done
echo
"$B" status --admin "$P_ADMIN"
echo
"$B" status --admin "$M_ADMIN"
echo
"$B" verify --admin "$P_ADMIN" || die "verify found differences"

cat <<EOM

run: the primary serves $uri; mirror1 holds a synchronous copy.
run: try, from another shell:
run:   nbdinfo '$uri'
run:   bin/blockmirror status --admin $P_ADMIN --watch
run:   bin/blockmirror verify --admin $P_ADMIN   (control goes over the node's unix socket,
run:      /run/blockmirror/primary.sock: root or group blockmirror; the admin endpoint is read-only)
run:   curl -s http://$P_ADMIN/metrics | grep ^blockmirror_
run: failover: kill the primary, then  scripts/failover.sh --admin $M_ADMIN --primary $NBD_ADDR
run:   (the mirror then serves NBD at nbd://127.0.0.2:10809/$EXPORT)
run: see README.md and docs/operations.md. Ctrl-C stops both nodes.
EOM
if [ "${EXIT:-0}" = 1 ]; then
	exit 0
fi
wait -n "${pids[@]}" || true
say "a node exited; see $VAR_DIR/*.log"
