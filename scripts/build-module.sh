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
# The tree's architecture: the one to build for when make was given no
# ARCH, and an error when it was given another.
if grep -q '^CONFIG_X86_64=y' "$kdir/.config"; then
	tree_arch=x86_64
elif grep -q '^CONFIG_ARM64=y' "$kdir/.config"; then
	tree_arch=arm64
else
	vbrs_die "KDIR=$kdir: a kernel for an architecture this driver is not built for (supported: x86_64, arm64)"
fi
if [ "$tree_arch" != "$VBRS_ARCH" ]; then
	[ -z "${VBRS_ARCH_GIVEN:-}" ] \
		|| vbrs_die "KDIR=$kdir: an $tree_arch kernel, but ARCH=$VBRS_ARCH_GIVEN; pass ARCH=$tree_arch, or no ARCH"
	VBRS_ARCH=$tree_arch
fi
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
# modpost checks every symbol the module uses against Module.symvers. A
# tree made ready with `make modules_prepare` has none: kbuild's own
# KBUILD_MODPOST_WARN=1 turns those checks into warnings, at the user's
# explicit request only.
modpost_warn=${KBUILD_MODPOST_WARN:-}
for a in "$@"; do case "$a" in KBUILD_MODPOST_WARN=*) modpost_warn=${a#*=} ;; esac; done
if [ ! -f "$kdir/Module.symvers" ]; then
	[ -n "$modpost_warn" ] \
		|| vbrs_die "KDIR=$kdir: no Module.symvers; finish building the kernel there (make, then make modules), or pass KBUILD_MODPOST_WARN=1 to build against a modules_prepare tree with modpost's symbol checks as warnings"
	vbrs_log "KDIR=$kdir has no Module.symvers: modpost only warns about symbols it cannot check (KBUILD_MODPOST_WARN=1)"
fi

# The KUnit module needs the kernel crate's kunit support, which 6.12 has
# only with CONFIG_KUNIT=y (built in). Most production kernels have no
# KUnit: there the driver builds alone.
driver_only=${VBRS_DRIVER_ONLY:-}
for a in "$@"; do case "$a" in VBRS_DRIVER_ONLY=*) driver_only=${a#*=} ;; esac; done
if ! grep -q '^CONFIG_KUNIT=y' "$kdir/.config"; then
	kunit_why="KDIR=$kdir has $(grep -q '^CONFIG_KUNIT=m' "$kdir/.config" && echo 'CONFIG_KUNIT=m, and the kernel crate has KUnit support only with CONFIG_KUNIT=y' || echo 'no CONFIG_KUNIT')"
	[ "${VBRS_KUNIT:-}" != required ] \
		|| vbrs_die "$kunit_why: the KUnit module (kunit/virtio_balloon_rs_kunit.ko) cannot be built or run against it"
	[ -n "$driver_only" ] || vbrs_log "$kunit_why: the KUnit module is skipped, the driver is built"
fi

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
