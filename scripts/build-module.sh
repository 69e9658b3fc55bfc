#!/usr/bin/env bash
# Builds virtio_balloon_rs.ko (and the KUnit module, and the benchmark's
# oom_stopwatch.ko) against a kernel tree.
#
# usage: build-module.sh [KDIR] [make variables and targets...]
#   Without KDIR (or with an empty one), against the project's guest kernel,
#   installing and building whatever is missing first.
#   With KDIR, against that Rust-enabled 6.12 build tree (in-tree or O=;
#   no patches needed).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

kdir=${1:-}
shift || true

if [ -z "$kdir" ]; then
	"$VBRS_ROOT/scripts/deps.sh"
	kdir=$("$VBRS_ROOT/scripts/kernel/build.sh")
fi

# Check the tree before handing it to kbuild, whose own errors are cryptic.
# Only what a build produces is read, so an in-tree build, an O= build tree
# and a headers-style tree (build directory apart from the source) all work.
[ -d "$kdir" ] || vbrs_die "KDIR=$kdir: no such directory"
[ -f "$kdir/Makefile" ] || vbrs_die "KDIR=$kdir: not a kernel build tree (no Makefile)"
[ -f "$kdir/.config" ] || vbrs_die "KDIR=$kdir: not configured (no .config); build the kernel there first"
grep -q '^CONFIG_RUST=y' "$kdir/.config" \
	|| vbrs_die "KDIR=$kdir: kernel built without Rust (CONFIG_RUST is not set); enable CONFIG_RUST and rebuild it"
grep -q '^CONFIG_MODULES=y' "$kdir/.config" || vbrs_die "KDIR=$kdir: kernel built without module support (CONFIG_MODULES)"
grep -q '^CONFIG_VIRTIO=y\|^CONFIG_VIRTIO=m' "$kdir/.config" || vbrs_die "KDIR=$kdir: kernel built without CONFIG_VIRTIO"
release=$(cat "$kdir/include/config/kernel.release" 2>/dev/null) \
	|| vbrs_die "KDIR=$kdir: configured but not built (no include/config/kernel.release); run make there first"
case "$release" in
6.12 | 6.12.* | 6.12-* | 6.12+*) ;;
*) vbrs_die "KDIR=$kdir: kernel release '$release', this driver targets 6.12" ;;
esac
[ -f "$kdir/rust/libkernel.rmeta" ] \
	|| vbrs_die "KDIR=$kdir: the Rust support of the tree is not built (no rust/libkernel.rmeta); run make there first"
read -ra KMAKE <<<"${VBRS_KMAKE_VARS:-$(vbrs_kmake_vars)}"
# The rustc used now must be the one the tree was built with: crate
# metadata is tied to one compiler ("incompatible version" errors).
rustc=/usr/bin/rustc
for v in "${KMAKE[@]}"; do case "$v" in RUSTC=*) rustc=${v#RUSTC=} ;; esac; done
built_with=$(sed -n 's/^CONFIG_RUSTC_VERSION_TEXT="\(.*\)"$/\1/p' "$kdir/.config")
using=$("$rustc" --version 2>/dev/null) || vbrs_die "cannot run $rustc (set RUSTC=... in VBRS_KMAKE_VARS)"
[ -z "$built_with" ] || [ "$built_with" = "$using" ] \
	|| vbrs_die "KDIR=$kdir: built with '$built_with', but this build would use '$using' ($rustc); set VBRS_KMAKE_VARS (RUSTC=...) to the rustc the tree was built with"
# The module generates the bindings the kernel crate lacks the way the
# kernel generated its own (scripts/kbuild-bindgen.sh), from its record.
[ -f "$kdir/rust/bindings/.bindings_generated.rs.cmd" ] && [ -f "$kdir/rust/bindings/bindings_generated.rs" ] \
	|| vbrs_die "KDIR=$kdir: the tree has no record of how its Rust bindings were generated (rust/bindings/.bindings_generated.rs.cmd); the module needs the build directory of a Rust-enabled kernel, not a headers-only copy"
[ -f "$kdir/Module.symvers" ] || vbrs_die "KDIR=$kdir: no Module.symvers; finish building the kernel there (make, then make modules)"

vbrs_prune_stale_kernels "$kdir"

# One kbuild at a time in this directory (parallel test workers each make
# sure the modules are built).
mkdir -p "$VBRS_CACHE"
exec 9>"$VBRS_CACHE/module-build.lock"
flock 9
# Objects built against another tree are cleaned first: kbuild does not
# notice a switch between two trees of the same architecture (arm64 16k
# and 64k, say), whose Rust cfgs differ but whose command lines do not, and
# would keep a module built for the other page size.
stamp=$VBRS_ROOT/.kdir-built-against
real=$(cd "$kdir" && pwd -P)
if [ "$(cat "$stamp" 2>/dev/null)" != "$real" ]; then
	make -s -C "$kdir" M="$VBRS_ROOT" "${KMAKE[@]}" clean >/dev/null 2>&1 || true
	echo "$real" >"$stamp"
fi
# Extra arguments: variables, and targets (default: modules).
target=modules
for a in "$@"; do case "$a" in *=*) ;; *) target= ;; esac; done
exec make -C "$kdir" M="$VBRS_ROOT" "${KMAKE[@]}" "$@" $target
