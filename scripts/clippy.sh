#!/usr/bin/env bash
# Builds the modules with the kernel's CLIPPY=1 and fails on any warning.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
kdir=$("$VBRS_ROOT/scripts/kernel/build.sh")
cd "$VBRS_ROOT"
# Force a rebuild of the Rust objects so clippy sees every crate.
rm -f virtio_balloon_rs.o kunit/virtio_balloon_rs_kunit.o
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$VBRS_ROOT/scripts/build-module.sh" "$kdir" CLIPPY=1 2>&1 | tee "$log"
if grep -E '^(warning|error)' "$log"; then
	vbrs_die "clippy reported the findings above"
fi
echo "clippy: clean"
