#!/usr/bin/env bash
# run.sh — the main job: build bin/blockmirror and serve a local disk over
# NBD on this machine. Runs in the foreground; Ctrl-C (SIGINT) stops it
# gracefully.
#
#   sudo bash scripts/run.sh
#
# Environment (all optional):
#   DATA_DIR    node state directory            (default ./var/primary)
#   SIZE        size when the volume is created (default 1G; ignored later)
#   NBD_ADDR    HOST:PORT or unix:PATH          (default 127.0.0.1:10809)
#   EXPORT      NBD export name                 (default disk)
#   SKIP_SETUP  1 = do not run scripts/setup.sh first
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA_DIR=${DATA_DIR:-./var/primary}
SIZE=${SIZE:-1G}
NBD_ADDR=${NBD_ADDR:-127.0.0.1:10809}
EXPORT=${EXPORT:-disk}

say() { printf 'run: %s\n' "$*"; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
	bash scripts/setup.sh </dev/null
fi
command -v go >/dev/null 2>&1 || export PATH=/usr/local/go/bin:$PATH

say "go build -o bin/blockmirror ./cmd/blockmirror"
mkdir -p bin
go build -o bin/blockmirror ./cmd/blockmirror

mkdir -p "$DATA_DIR"
args=(serve --data "$DATA_DIR" --nbd "$NBD_ADDR" --export "$EXPORT")
if [ -z "$(ls -A "$DATA_DIR")" ]; then
	args+=(--size "$SIZE") # a new volume
	say "creating a $SIZE volume in $DATA_DIR"
else
	say "reopening the volume in $DATA_DIR"
fi

case "$NBD_ADDR" in
unix:*) uri="nbd+unix:///$EXPORT?socket=${NBD_ADDR#unix:}" ;;
*) uri="nbd://$NBD_ADDR/$EXPORT" ;;
esac

# --- primary -----------------------------------------------------------
# (Mirrors on this machine will be started here: `blockmirror mirror ...`
# processes in the background, and --mirror NAME=HOST:PORT flags added to
# the primary's args below.)

cat <<EOM
run: NBD URI: $uri
run: try, from another shell:
run:   nbdinfo '$uri'
run:   qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '$uri'
run:   fio --name=t --ioengine=nbd --uri='$uri' --rw=randwrite --bs=4k --iodepth=32 --size=256M --runtime=10 --time_based
run: Ctrl-C stops the server.
EOM
say "bin/blockmirror ${args[*]}"
exec bin/blockmirror "${args[@]}"
