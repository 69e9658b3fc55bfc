#!/usr/bin/env bash
# Formats (fix) or checks (check) the Rust sources with the kernel's
# rustfmt settings (.rustfmt.toml of the guest kernel tree).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mode=${1:-check}
kdir=$("$VBRS_ROOT/scripts/kernel/build.sh")
cd "$VBRS_ROOT"
files=$(git ls-files '*.rs' 2>/dev/null || find . -name '*.rs' -not -path './.git/*')
[ -n "$files" ] || files=$(find . -name '*.rs' -not -path './.git/*')
src=$kdir; [ -e "$kdir/source" ] && src=$kdir/source  # an O= build links its source
args=(--config-path "$src/.rustfmt.toml" --edition 2021)
if [ "$mode" = check ]; then
	# shellcheck disable=SC2086
	/usr/bin/rustfmt "${args[@]}" --check $files || vbrs_die "rustfmt: run 'make fmt'"
	echo "rustfmt: clean"
else
	# shellcheck disable=SC2086
	/usr/bin/rustfmt "${args[@]}" $files
fi
