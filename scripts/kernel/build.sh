#!/usr/bin/env bash
# Builds (once) a guest kernel for the target (VBRS_ARCH, VBRS_PAGE: see
# lib.sh): Debian's linux-source-6.12 as it comes, unpatched, with the
# target's config fragment merged onto tinyconfig. The result is cached
# under $VBRS_CACHE/kernels/<kind>-<target>-<key>/linux, where the key
# hashes the source version, fragment, architecture, toolchain and this
# script; a second run with the same inputs does nothing.
#
# usage: build.sh [guest|debug]     prints the kernel build directory (O=)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"

frag=$(vbrs_fragment "${1:-guest}")
kdir=$(vbrs_kernel_dir "$frag")
top=$(dirname "$kdir")
image=$(vbrs_kernel_image "$kdir")

if [ -f "$top/done" ] && [ -f "$image" ]; then
	echo "$kdir"
	exit 0
fi

[ -f "$VBRS_LINUX_TARBALL" ] || vbrs_die "$VBRS_LINUX_TARBALL missing (Debian package linux-source-6.12; run scripts/deps.sh)"
mkdir -p "$VBRS_CACHE/kernels"
exec 9>"$VBRS_CACHE/kernels/.lock"
flock 9
if [ -f "$top/done" ]; then echo "$kdir"; exit 0; fi

rm -rf "$top"
mkdir -p "$top"
vbrs_log "unpacking $VBRS_LINUX_TARBALL into $top"
tar -C "$top" -xf "$VBRS_LINUX_TARBALL"
# An O= build, as distributions and most users build: the source stays
# apart ($top/source) and $kdir only holds what the build produces, so the
# module's own build is tried against that layout every time.
mv "$top/linux-source-6.12" "$top/source"
mkdir -p "$kdir"

read -ra KMAKE <<<"$(vbrs_kmake_vars)"
export PATH="$(dirname "$(vbrs_bindgen)"):$PATH"
make -s -C "$top/source" O="$kdir" "${KMAKE[@]}" tinyconfig >/dev/null
cd "$kdir"
"$top/source/scripts/kconfig/merge_config.sh" -m .config "$frag" >/dev/null
make -s "${KMAKE[@]}" olddefconfig >/dev/null

# Every option the fragment asks for must have survived olddefconfig.
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=n) opt=${line%%=*}; grep -q "^$opt=" .config && { vbrs_log "config: $opt should be off"; bad=1; } ;;
	CONFIG_*=*) grep -qx "$line" .config || { vbrs_log "config: $line did not stick (missing dependency?)"; bad=1; } ;;
	esac
done <"$frag"
[ "$bad" = 0 ] || vbrs_die "config fragment $frag does not apply cleanly to this tree"

make -s "${KMAKE[@]}" rustavailable >/dev/null || vbrs_die "Rust toolchain not usable for the kernel (see: make rustavailable in $kdir)"

vbrs_log "building guest kernel ($(basename "$frag" .config)) in $kdir: a few minutes on 2 cores"
start=$(date +%s)
# On a terminal, a status line shows how far the build is (progress.sh,
# which is not part of the cache key); in logs, only the lines around it.
progress=
if [ -t 2 ]; then
	"$VBRS_ROOT/scripts/kernel/progress.sh" "$top/build.log" "$kdir" &
	progress=$!
fi
rc=0
make "${KMAKE[@]}" -j"$(($(nproc) + 1))" "$(basename "$image")" modules >"$top/build.log" 2>&1 || rc=$?
if [ -n "$progress" ]; then
	kill "$progress" 2>/dev/null || true
	wait "$progress" 2>/dev/null || true
	printf '\r\033[K' >&2
fi
if [ "$rc" != 0 ]; then
	tail -n 40 "$top/build.log" >&2
	vbrs_die "kernel build failed; full log: $top/build.log"
fi
vbrs_log "guest kernel built in $(($(date +%s) - start)) s"
touch "$top/done"
echo "$kdir"
