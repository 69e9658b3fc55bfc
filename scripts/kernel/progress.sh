#!/usr/bin/env bash
# The status line of a guest kernel build on a terminal: time so far,
# objects built (against the count of the last build of the same kind and
# architecture, when there is one) and the stage kbuild is at.
#
# usage: progress.sh BUILD_LOG KDIR      (build.sh runs it; killed at the end)
set -uo pipefail
log=$1
kdir=$2
start=$(date +%s)
# A previous build of this kind for this target, if any, gives the total.
total=
kind=$(basename "$(dirname "$kdir")")
for old in "$(dirname "$(dirname "$kdir")")"/"${kind%-*}"-*/build.log; do
	[ -f "$old" ] && [ "$old" != "$log" ] || continue
	total=$(grep -c '^  [A-Z]' "$old" 2>/dev/null) && break
done
while sleep 1; do
	[ -f "$log" ] || continue
	done_=$(grep -c '^  [A-Z]' "$log" 2>/dev/null)
	stage=$(grep '^  [A-Z]' "$log" 2>/dev/null | tail -n1 | sed 's/^  *//; s/  */ /g' | cut -c1-50)
	t=$(($(date +%s) - start))
	if [ -n "$total" ] && [ "$total" -gt 0 ]; then
		count="$done_/~$total ($((done_ * 100 / total))%)"
	else
		count="$done_ objects"
	fi
	printf '\r\033[K   %d:%02d  %s  %s' $((t / 60)) $((t % 60)) "$count" "$stage" >&2
done
