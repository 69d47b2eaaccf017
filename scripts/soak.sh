#!/usr/bin/env bash
# soak.sh [DURATION] — the whole-node simulation's soak run: random seeds
# (TestSimSoak in mirror/) until DURATION (a Go duration, default 10m) is
# up. Prints the schedules run, the speed and every failing seed with the
# command that replays it; exits non-zero if any seed failed.
#
#   bash scripts/soak.sh 30m
#   bash scripts/soak.sh 8h  >soak.log
#
# A failing seed replays (and shrinks) with
#   go test ./mirror -run 'TestSimNodes$' -sim.seed=N -sim.v
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null 2>&1 || export PATH=/usr/local/go/bin:$PATH

duration=${1:-10m}
case "$duration" in
-h | --help)
	sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
esac
# -timeout 0: the run ends when DURATION is up, not at go test's default 10m.
exec go test -count=1 -timeout 0 ./mirror -run '^TestSimSoak$' -sim.soak="$duration" -v
