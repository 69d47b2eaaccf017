#!/usr/bin/env bash
# setup.sh — prepare a Debian 12 machine to build, test and benchmark
# blockmirror. Idempotent and non-interactive; run as root:
#
#   sudo bash scripts/setup.sh
#
# It installs the NBD clients and tools the end-to-end tests and the
# benchmark use, raises the socket buffer limits, and downloads the Go
# modules. It does not install Go itself: Go >= the version in go.mod must be
# on PATH or at /usr/local/go/bin.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*"; }

SUDO=
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo -n"
	else
		say "not root and no sudo: skipping package installation and sysctl"
		SUDO=skip
	fi
fi

# Debian 12 package -> what the project uses from it.
#   qemu-utils          qemu-img, qemu-io, qemu-nbd   (e2e tests)
#   libnbd-bin          nbdinfo, nbdsh, nbdcopy, nbdfuse (e2e tests)
#   python3-libnbd      libnbd bindings for /usr/bin/python3 (e2e tests)
#   nbdkit              reference NBD server (bench baseline, test targets)
#   fio                 nbd ioengine (e2e verify test, bench)
#   fuse3               fusermount3, /dev/fuse user space (nbdfuse)
#   e2fsprogs           mkfs.ext4, fsck.ext4 (filesystem e2e test)
#   util-linux          losetup, mount (filesystem e2e test)
#   qemu-system-common  qemu-storage-daemon (bench comparison target)
#   nbd-server          optional extra reference server
#   python3, git, ca-certificates, procps (sysctl, pgrep)
PACKAGES=(
	qemu-utils libnbd-bin python3-libnbd nbdkit fio fuse3 e2fsprogs
	util-linux qemu-system-common nbd-server python3 git ca-certificates
	procps
)

if [ "$SUDO" != skip ]; then
	missing=()
	for p in "${PACKAGES[@]}"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	if [ "${#missing[@]}" -eq 0 ]; then
		say "all packages already installed: ${PACKAGES[*]}"
	else
		say "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		$SUDO apt-get update -q </dev/null
		$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
	fi

	# Socket buffers: the replication transport (QUIC over UDP) and large
	# NBD transfers want >= 8 MiB buffers. Not persistent; to keep them
	# across reboots put the two lines into /etc/sysctl.d/90-blockmirror.conf.
	want=$((8 * 1024 * 1024))
	for key in net.core.rmem_max net.core.wmem_max; do
		cur=$(sysctl -n "$key" 2>/dev/null || echo 0)
		if [ "$cur" -lt "$want" ]; then
			say "sysctl -w $key=$want (was $cur)"
			$SUDO sysctl -q -w "$key=$want" || say "warning: could not set $key (container without net sysctl access?)"
		else
			say "$key=$cur (>= $want, unchanged)"
		fi
	done
	say "to persist: printf 'net.core.rmem_max=$want\\nnet.core.wmem_max=$want\\n' > /etc/sysctl.d/90-blockmirror.conf"

	# The filesystem e2e test needs /dev/fuse and loop devices.
	if [ ! -e /dev/fuse ]; then
		$SUDO modprobe fuse 2>/dev/null || say "note: /dev/fuse absent; the filesystem e2e test will skip"
	fi
	if [ ! -e /dev/loop-control ]; then
		$SUDO modprobe loop 2>/dev/null || say "note: no loop devices; the filesystem e2e test will skip"
	fi
fi

if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH=/usr/local/go/bin:$PATH
	else
		say "error: go not found on PATH nor at /usr/local/go/bin/go; install Go $(awk '/^go /{print $2}' go.mod)"
		exit 1
	fi
fi
say "using $(go version) at $(command -v go)"
say "go mod download"
go mod download
say "done"
