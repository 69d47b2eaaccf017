#!/usr/bin/env bash
# run.sh [SEEDS] [PATCH...] — the mutation check of the whole-node
# simulation: for each patch here (default: all), which reverts one of the
# data-integrity fixes of issue 12, copy the repository's tracked files,
# apply the patch, and run the simulation's CI seed set (TestSimNodes,
# seeds 1..SEEDS, default 300, the CI count) on the mutant. Prints one row
# per mutation: whether the simulation found the bug, the first seed that
# failed (= schedules run to find it), how many seeds failed, and the first
# failure. Exits non-zero if a mutation was not found.
#
#   bash mirror/testdata/mutations/run.sh
#   bash mirror/testdata/mutations/run.sh 1000 mirror/testdata/mutations/4-*.patch
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
command -v go >/dev/null 2>&1 || export PATH=/usr/local/go/bin:$PATH

seeds=${1:-300}
shift || true
patches=("$@")
if [ ${#patches[@]} -eq 0 ]; then
	patches=(mirror/testdata/mutations/*.patch)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
missed=0
printf '%-40s %-6s %-10s %-8s %s\n' mutation found first-seed failed "first failure"
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
	out=$(cd "$dir" && go test -count=1 -timeout 30m ./mirror -run 'TestSimNodes$' -sim.n="$seeds" -sim.keepgoing -v 2>&1 || true)
	failing=$(printf '%s\n' "$out" | sed -n 's/.*sim_run_test.go:[0-9]*: seed \([0-9]*\): .*/\1/p')
	if [ -z "$failing" ]; then
		printf '%-40s %-6s %-10s %-8s %s\n' "$name" no - 0 "$(printf '%s\n' "$out" | grep -m1 -E '^(FAIL|ok|---)' || true)"
		missed=1
		continue
	fi
	first=$(printf '%s\n' "$failing" | head -1)
	count=$(printf '%s\n' "$failing" | wc -l)
	msg=$(printf '%s\n' "$out" | sed -n "s/.*sim_run_test.go:[0-9]*: seed $first: \(.*\)/\1/p" | head -1 | cut -c1-150)
	printf '%-40s %-6s %-10s %-8s %s\n' "$name" yes "$first" "$count/$seeds" "$msg"
done
exit "$missed"
