#!/usr/bin/env bash
# Builds virtio_balloon_rs.ko (and the KUnit module, and the benchmark's
# oom_stopwatch.ko) against a kernel tree.
#
# usage: build-module.sh [KDIR] [extra make args...]
#   Without KDIR (or with an empty one), against the project's guest kernel,
#   installing and building whatever is missing first.
#   With KDIR, against that Rust-enabled 6.12 build tree, which must carry
#   the patches in scripts/kernel/patches/.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

kdir=${1:-}
shift || true

if [ -z "$kdir" ]; then
	"$VBRS_ROOT/scripts/deps.sh"
	kdir=$("$VBRS_ROOT/scripts/kernel/build.sh")
fi

# Check the tree before handing it to kbuild, whose own errors are cryptic.
[ -d "$kdir" ] || vbrs_die "KDIR=$kdir: no such directory"
[ -f "$kdir/Makefile" ] || vbrs_die "KDIR=$kdir: not a kernel build tree (no Makefile)"
[ -f "$kdir/.config" ] || vbrs_die "KDIR=$kdir: not configured (no .config); build the kernel there first"
grep -q '^CONFIG_RUST=y' "$kdir/.config" \
	|| vbrs_die "KDIR=$kdir: kernel built without Rust (CONFIG_RUST is not set); enable CONFIG_RUST and rebuild it"
grep -q '^CONFIG_MODULES=y' "$kdir/.config" || vbrs_die "KDIR=$kdir: kernel built without module support (CONFIG_MODULES)"
grep -q '^CONFIG_VIRTIO=y\|^CONFIG_VIRTIO=m' "$kdir/.config" || vbrs_die "KDIR=$kdir: kernel built without CONFIG_VIRTIO"
version=$(awk -F' *= *' '$1=="VERSION"{v=$2} $1=="PATCHLEVEL"{p=$2} END{if (v != "") print v "." p}' "$kdir/Makefile")
case "$version" in
6.12*) ;;
*) vbrs_die "KDIR=$kdir: kernel version '${version:-unknown}', this driver targets 6.12" ;;
esac
[ -f "$kdir/rust/helpers/virtio.c" ] && grep -q rust_helper_virtio_find_vqs "$kdir/rust/helpers/virtio.c" \
	|| vbrs_die "KDIR=$kdir: the tree lacks this project's Rust bindings; apply scripts/kernel/patches/*.patch (patch -p1, in name order) and rebuild it"
[ -f "$kdir/rust/libkernel.rmeta" ] || [ -f "$kdir/rust/kernel.o" ] \
	|| vbrs_die "KDIR=$kdir: the Rust support of the tree is not built; run make there first"

read -ra KMAKE <<<"${VBRS_KMAKE_VARS:-$(vbrs_kmake_vars)}"
exec make -C "$kdir" M="$VBRS_ROOT" "${KMAKE[@]}" "$@" modules
