#!/usr/bin/env bash
# install.sh — build blockmirror and install it with its systemd units,
# sysctl drop-in and an example configuration.
#
#   sudo scripts/install.sh                 # build and install on this machine
#   scripts/install.sh --dry-run            # only print what would be done
#   scripts/install.sh --root /tmp/pkgroot  # install into a staging root
#
# Options:
#   --prefix DIR   binary goes to DIR/bin (default /usr/local); the units'
#                  ExecStart lines are rewritten to match
#   --root DIR     install everything under DIR (DESTDIR-style); nothing on
#                  the running system is touched (no sysctl, no systemctl)
#   --binary FILE  install FILE instead of building (e.g. a CI artifact)
#   --dry-run      print the actions without doing them
#   -h, --help     this text
#
# Installs:
#   PREFIX/bin/blockmirror
#   /etc/systemd/system/blockmirror-primary@.service, blockmirror-mirror@.service
#   /etc/sysctl.d/60-blockmirror.conf          (applied with sysctl -p)
#   /etc/blockmirror/blockmirror.example.toml  (never overwrites a file)
#   /var/lib/blockmirror/                      (mode 0700)
#   the system group blockmirror               (may use the control sockets
#                                              in /run/blockmirror; add
#                                              operators: usermod -aG blockmirror USER)
#
# Idempotent: files whose content is already in place are left alone and
# reported as unchanged. systemctl daemon-reload runs only when systemd is
# the running init (/run/systemd/system exists) and --root is not used.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

prefix=/usr/local
root=
binary=
dry=0
while [ $# -gt 0 ]; do
	case "$1" in
	--prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
	--prefix=*) prefix=${1#*=}; shift ;;
	--root) root=${2:?--root needs a directory}; shift 2 ;;
	--root=*) root=${1#*=}; shift ;;
	--binary) binary=${2:?--binary needs a file}; shift 2 ;;
	--binary=*) binary=${1#*=}; shift ;;
	--dry-run|-n) dry=1; shift ;;
	-h|--help) usage; exit 0 ;;
	*) echo "install.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
	esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be an absolute path, got '$prefix'" >&2; exit 2 ;; esac
if [ -n "$root" ]; then
	case "$root" in /*) ;; *) root=$(pwd)/$root ;; esac
	root=${root%/}
fi

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist=$src/dist

# say prints an action; run performs it unless --dry-run.
say() { if [ "$dry" = 1 ]; then echo "would: $*"; else echo "install: $*"; fi; }
run() { if [ "$dry" = 0 ]; then "$@"; fi; }

if [ -z "$root" ] && [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
	echo "install.sh: installing into / needs root (use sudo, --root DIR or --dry-run)" >&2
	exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ensure_dir DIR MODE
ensure_dir() {
	if [ -d "$root$1" ]; then
		echo "unchanged: $1/"
	else
		say "mkdir -m $2 $root$1"
		run mkdir -p -m "$2" "$root$1"
	fi
}

# put SRC DEST MODE: install SRC as DEST unless DEST already has that content.
put() {
	local dest=$root$2
	if [ -f "$dest" ] && cmp -s "$1" "$dest"; then
		echo "unchanged: $2"
		return 0
	fi
	ensure_dir "$(dirname "$2")" 0755 >/dev/null
	say "install -m $3 $(basename "$1") $dest"
	run mkdir -p "$(dirname "$dest")"
	run install -m "$3" "$1" "$dest"
	changed=1
}

# put_new SRC DEST MODE: like put, but never replaces an existing file.
put_new() {
	if [ -e "$root$2" ]; then
		if cmp -s "$1" "$root$2"; then
			echo "unchanged: $2"
		else
			echo "kept: $2 exists and differs; not overwriting it (the new version is $1)"
		fi
		return 0
	fi
	put "$@"
}

# 1. The binary.
if [ -z "$binary" ]; then
	go=${GO:-}
	if [ -z "$go" ]; then
		if [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go
		elif command -v go >/dev/null 2>&1; then go=$(command -v go)
		else echo "install.sh: no Go toolchain (install Go, set GO=..., or pass --binary FILE)" >&2; exit 1
		fi
	fi
	version=$(git -C "$src" describe --always --dirty 2>/dev/null || echo dev)
	binary=$tmp/blockmirror
	say "build blockmirror $version with $go"
	if [ "$dry" = 0 ]; then
		(cd "$src" && CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w -X main.version=$version" -o "$binary" ./cmd/blockmirror)
	fi
elif [ ! -f "$binary" ]; then
	echo "install.sh: --binary $binary: no such file" >&2
	exit 1
fi
changed=0
if [ "$dry" = 1 ] && [ ! -f "$binary" ]; then
	say "install -m 0755 blockmirror $root$prefix/bin/blockmirror"
else
	put "$binary" "$prefix/bin/blockmirror" 0755
fi

# 2. systemd units, pointing at the installed binary.
unit_changed=0
for unit in blockmirror-primary@.service blockmirror-mirror@.service; do
	sed "s#/usr/local/bin/blockmirror#$prefix/bin/blockmirror#g" "$dist/systemd/$unit" >"$tmp/$unit"
	changed=0
	put "$tmp/$unit" "/etc/systemd/system/$unit" 0644
	if [ "$changed" = 1 ]; then unit_changed=1; fi
done

# 3. sysctl drop-in (socket buffers for QUIC), applied right away.
changed=0
put "$dist/sysctl.d/60-blockmirror.conf" /etc/sysctl.d/60-blockmirror.conf 0644
if [ -n "$root" ]; then
	echo "skip: sysctl (installing into --root $root)"
elif [ "$changed" = 1 ] || [ "$dry" = 1 ]; then
	say "sysctl -p /etc/sysctl.d/60-blockmirror.conf"
	if [ "$dry" = 0 ] && ! sysctl -q -p /etc/sysctl.d/60-blockmirror.conf; then
		echo "warning: sysctl -p failed (read-only /proc/sys in a container?); the settings apply at next boot" >&2
	fi
else
	echo "unchanged: sysctl settings"
fi

# 4. Configuration directory and example; state directory.
ensure_dir /etc/blockmirror 0755
put_new "$dist/blockmirror.example.toml" /etc/blockmirror/blockmirror.example.toml 0644
ensure_dir /var/lib/blockmirror 0700

# 5. The control group: members may promote, demote and verify through the
# daemons' control sockets (and the units run with Group=blockmirror).
if [ -n "$root" ]; then
	echo "skip: groupadd blockmirror (installing into --root $root)"
elif getent group blockmirror >/dev/null 2>&1; then
	echo "unchanged: group blockmirror"
else
	say "groupadd --system blockmirror"
	run groupadd --system blockmirror
fi

# 6. Tell systemd about the units.
if [ -n "$root" ]; then
	echo "skip: systemctl daemon-reload (installing into --root $root)"
elif [ ! -d /run/systemd/system ]; then
	echo "skip: systemctl daemon-reload (systemd is not running)"
elif [ "$unit_changed" = 1 ] || [ "$dry" = 1 ]; then
	say "systemctl daemon-reload"
	run systemctl daemon-reload
else
	echo "unchanged: systemd units (no daemon-reload needed)"
fi

if [ "$dry" = 1 ]; then
	echo "dry run: nothing was changed"
else
	echo "done. Next: write /etc/blockmirror/NAME.toml (see the example), check it with"
	echo "  $prefix/bin/blockmirror config check /etc/blockmirror/NAME.toml"
	echo "and start it with: systemctl enable --now blockmirror-primary@NAME (or blockmirror-mirror@NAME)"
	echo "Operators who promote, demote or verify without root: usermod -aG blockmirror USER"
fi
