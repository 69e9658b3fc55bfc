#!/usr/bin/env bash
# Prepares (once) a kernel tree configured the way users' kernels are, for
# the build matrix (tests/configs/run.py, `make check-configs`): Debian's
# linux-source-6.12 as it comes, configured from one of Debian's own 6.12
# configurations (package linux-config-6.12) or from a small fragment, with
# Rust turned on, and made ready for external modules only (`make
# modules_prepare`, which also builds the kernel's Rust crates; no vmlinux,
# so no Module.symvers). Cached under
# $VBRS_CACHE/configs/<name>-<key>/build, where the key hashes the source
# and configuration packages' versions, the configuration, the toolchain
# and this script; a second run with the same inputs does nothing.
#
# usage: config-tree.sh NAME     prints the tree's build directory (O=)
#        config-tree.sh --list   prints the names, one per line, with
#                                their architecture
#
# The configurations (README: "Bringing your own kernel"):
#   debian-cloud-amd64      Debian's cloud-amd64 (what cloud guests run)
#   debian-amd64            Debian's amd64
#   debian-cloud-arm64      Debian's cloud-arm64 (4 KiB pages)
#   debian-arm64-16k        Debian's arm64-16k
#   debian-cloud-arm64-64k  Debian's cloud-arm64 with 64 KiB pages (as
#                           RHEL ships arm64 kernels)
#   small-x86_64            tinyconfig plus configs/small-x86_64.config
#   micro-x86_64            tinyconfig plus configs/micro-x86_64.config
#                           (a microVM guest: virtio-mmio, no PCI, no sleep)
#
# Only what 6.12's Rust support rules out is changed in Debian's
# configurations: CONFIG_RUST on; MODVERSIONS, DEBUG_INFO_BTF, randstruct
# and GCC plugins off (the clang build drops the GCC-only options by
# itself); the trusted and revocation key files, which name Debian's
# certificates, emptied. The page size of debian-cloud-arm64-64k is the one
# other change.
set -euo pipefail

CONFIGS="
debian-cloud-amd64 x86_64
debian-amd64 x86_64
debian-cloud-arm64 arm64
debian-arm64-16k arm64
debian-cloud-arm64-64k arm64
small-x86_64 x86_64
micro-x86_64 x86_64
"

name=${1:-}
if [ "$name" = --list ]; then
	echo "$CONFIGS" | sed '/^$/d'
	exit 0
fi
arch=$(echo "$CONFIGS" | awk -v n="$name" '$1 == n { print $2 }')
if [ -z "$arch" ]; then
	printf 'error: configuration "%s": known are %s\n' "$name" \
		"$(echo "$CONFIGS" | awk 'NF { printf "%s%s", s, $1; s = ", " }')" >&2
	exit 1
fi
# lib.sh checks the target; the page size only matters to the guest kernels.
VBRS_ARCH=$arch
VBRS_PAGE=4k
. "$(dirname "$0")/../lib.sh"

here=$VBRS_ROOT/scripts/kernel
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null) \
	|| vbrs_die "Debian package linux-source-6.12 is not installed (run scripts/deps.sh)"
base= frag= deb=
case "$name" in
debian-cloud-amd64) deb=amd64_none_cloud-amd64 ;;
debian-amd64) deb=amd64_none_amd64 ;;
debian-cloud-arm64 | debian-cloud-arm64-64k) deb=arm64_none_cloud-arm64 ;;
debian-arm64-16k) deb=arm64_none_arm64-16k ;;
small-x86_64) base=tinyconfig frag=$here/configs/small-x86_64.config ;;
micro-x86_64) base=tinyconfig frag=$here/configs/micro-x86_64.config ;;
esac
if [ -n "$deb" ]; then
	base=$(vbrs_debian_config "${deb%%_*}")/config.$deb.xz
	[ -f "$base" ] || "$VBRS_ROOT/scripts/deps.sh" configs >&2
	[ -f "$base" ] || vbrs_die "$base missing (Debian package linux-config-6.12 for ${deb%%_*})"
fi

key=$({
	echo "$srcver $name ARCH=$arch"
	if [ -n "$deb" ]; then sha256sum <"$base"; else echo "$base"; cat "$frag"; fi
	/usr/bin/rustc --version 2>/dev/null
	clang$VBRS_LLVM_SUFFIX --version 2>/dev/null | head -n1
	echo "bindgen $VBRS_BINDGEN_VERSION"
	cat "$0"
} | sha256sum | cut -c1-16)
top=$VBRS_CACHE/configs/$name-$key
out=$top/build
if [ -f "$top/done" ]; then
	echo "$out"
	exit 0
fi

[ -f "$VBRS_LINUX_TARBALL" ] || vbrs_die "$VBRS_LINUX_TARBALL missing (Debian package linux-source-6.12; run scripts/deps.sh)"
mkdir -p "$VBRS_CACHE/kernels" "$VBRS_CACHE/configs"
# One kernel build at a time on the machine: the guest kernels take the
# same lock.
exec 9>"$VBRS_CACHE/kernels/.lock"
flock 9
if [ -f "$top/done" ]; then echo "$out"; exit 0; fi

# One pristine source per source version, shared by every configuration
# (O= builds leave the source tree untouched).
src=$VBRS_CACHE/configs/source-$srcver
if [ ! -f "$src/.unpacked" ]; then
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	vbrs_log "unpacking $VBRS_LINUX_TARBALL into $src"
	tar -C "$src.tmp" -xf "$VBRS_LINUX_TARBALL"
	mv "$src.tmp/linux-source-6.12" "$src"
	rmdir "$src.tmp"
	touch "$src/.unpacked"
fi

rm -rf "$top"
mkdir -p "$out"
read -ra KMAKE <<<"$(vbrs_kmake_vars)"
export PATH="$(dirname "$(vbrs_bindgen)"):$PATH"
log=$top/prepare.log
{
	if [ -n "$deb" ]; then
		xzcat "$base" >"$out/.config"
	else
		make -s -C "$src" O="$out" "${KMAKE[@]}" "$base"
		"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$frag"
	fi
	set -- -e RUST -d MODVERSIONS -d DEBUG_INFO_BTF \
		-d RANDSTRUCT_FULL -d RANDSTRUCT_PERFORMANCE -e RANDSTRUCT_NONE -d GCC_PLUGINS \
		--set-str SYSTEM_TRUSTED_KEYS "" --set-str SYSTEM_REVOCATION_KEYS ""
	[ "$name" != debian-cloud-arm64-64k ] || set -- "$@" -d ARM64_4K_PAGES -d ARM64_16K_PAGES -e ARM64_64K_PAGES
	"$src/scripts/config" --file "$out/.config" "$@"
	make -s -C "$src" O="$out" "${KMAKE[@]}" olddefconfig
} >"$log" 2>&1 || { tail -n 20 "$log" >&2; vbrs_die "configuring $name failed; full log: $log"; }

# What the configuration must have kept.
want="CONFIG_RUST=y CONFIG_MODULES=y"
case "$name" in
debian-cloud-arm64-64k) want="$want CONFIG_ARM64_64K_PAGES=y" ;;
debian-arm64-16k) want="$want CONFIG_ARM64_16K_PAGES=y" ;;
esac
if [ -n "$frag" ]; then
	want="$want $(grep '^CONFIG_.*=[ym]$' "$frag" | tr '\n' ' ')"
fi
for w in $want; do
	grep -qx "$w" "$out/.config" || vbrs_die "configuration $name: $w did not survive olddefconfig (see $out/.config)"
done
# And what it must have left out.
if [ -n "$frag" ]; then
	for opt in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=n$/\1/p' "$frag"); do
		! grep -q "^$opt=[ym]$" "$out/.config" || vbrs_die "configuration $name: $opt is on after olddefconfig (something selects it; see $out/.config)"
	done
fi

vbrs_log "preparing the $name tree for external modules (make modules_prepare) in $out"
start=$(date +%s)
make -C "$src" O="$out" "${KMAKE[@]}" -j"$(($(nproc) + 1))" modules_prepare >>"$log" 2>&1 \
	|| { tail -n 30 "$log" >&2; vbrs_die "make modules_prepare failed for $name; full log: $log"; }
vbrs_log "$name prepared in $(($(date +%s) - start)) s"
touch "$top/done"

# Trees of the same configuration under older keys go.
for old in "$VBRS_CACHE/configs/$name"-????????????????; do
	[ "$old" = "$top" ] || [ ! -f "$old/done" ] || { vbrs_log "removing the stale tree $old"; rm -rf "$old"; }
done
for old in "$VBRS_CACHE/configs"/source-*; do
	[ "$old" = "$src" ] || [ ! -f "$old/.unpacked" ] || { vbrs_log "removing the stale source $old"; rm -rf "$old"; }
done
echo "$out"
