#!/usr/bin/env bash
# run.sh [SEEDS] [PATCH...] — the mutation check of the whole-node
# simulation: for each patch here (default: all), which reverts one of the
# data-integrity fixes of issue 12, copy the repository's tracked files,
# apply the patch, and run the simulation's CI seed set (TestSimNodes,
# seeds 1..SEEDS, default 500, the CI count) on the mutant. Prints one row
# per mutation: whether the simulation found the bug, the first seed that
# failed (= schedules run to find it), how many seeds failed, the seconds
# the whole seed set took on the mutant (every seed runs: -sim.keepgoing)
# and the first failure. Exits non-zero if a mutation was not found.
#
#   bash mirror/testdata/mutations/run.sh
#   bash mirror/testdata/mutations/run.sh 1000 mirror/testdata/mutations/4-*.patch
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
command -v go >/dev/null 2>&1 || export PATH=/usr/local/go/bin:$PATH

seeds=${1:-500}
shift || true
patches=("$@")
if [ ${#patches[@]} -eq 0 ]; then
	patches=(mirror/testdata/mutations/*.patch)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
missed=0
printf '%-40s %-6s %-10s %-8s %-6s %s\n' mutation found first-seed failed secs "first failure"
for p in "${patches[@]}"; do
	name=$(basename "$p" .patch)
	dir="$work/$name"
	mkdir -p "$dir"
	git ls-files -z | tar --null -T - -c | tar -x -C "$dir"
	if ! (cd "$dir" && patch -p1 -s <"$OLDPWD/$p"); then
		printf '%-40s %s\n' "$name" "patch does not apply"
		missed=1
		continue
	fi
	# Build first, so the time below is the simulation's, not the compiler's.
	(cd "$dir" && go test -count=1 -run '^$' ./mirror >/dev/null 2>&1) || true
	t0=$SECONDS
	out=$(cd "$dir" && go test -count=1 -timeout 30m ./mirror -run 'TestSimNodes$' -sim.n="$seeds" -sim.keepgoing -v 2>&1 || true)
	secs=$((SECONDS - t0))
	failing=$(printf '%s\n' "$out" | sed -n 's/.*sim_run_test.go:[0-9]*: seed \([0-9]*\): .*/\1/p')
	if [ -z "$failing" ]; then
		printf '%-40s %-6s %-10s %-8s %-6s %s\n' "$name" no - 0 "$secs" "$(printf '%s\n' "$out" | grep -m1 -E '^(FAIL|ok|---)' || true)"
		missed=1
		continue
	fi
	first=$(printf '%s\n' "$failing" | head -1)
	count=$(printf '%s\n' "$failing" | wc -l)
	msg=$(printf '%s\n' "$out" | sed -n "s/.*sim_run_test.go:[0-9]*: seed $first: \(.*\)/\1/p" | head -1 | cut -c1-150)
	printf '%-40s %-6s %-10s %-8s %-6s %s\n' "$name" yes "$first" "$count/$seeds" "$secs" "$msg"
done
exit "$missed"
