#!/usr/bin/env bash
# Installs, idempotently, every tool the project needs: Debian packages,
# bindgen-cli from crates.io, virtme-ng and pytest from PyPI (in a venv under
# the cache). Prints what it does; does nothing when all is there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

missing=()
while read -r pkg why; do
	[ -n "$pkg" ] || continue
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$pkg")
		vbrs_log "missing Debian package $pkg ($why)"
	fi
done <<<"$VBRS_DEB_PACKAGES"

SUDO=
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then
	SUDO=sudo
fi
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || [ -n "$SUDO" ] \
		|| vbrs_die "need root or sudo to install: ${missing[*]} (apt-get install ${missing[*]})"
	vbrs_log "apt-get install ${missing[*]}"
	$SUDO apt-get update -qq || vbrs_die "apt-get update failed: are Debian's package mirrors reachable?"
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
		|| vbrs_die "apt-get install failed for: ${missing[*]}"
fi

# arm64 guests run Debian's arm64 busybox, unpacked into the cache (the
# package is not installed: it would replace the host's).
arm64_bb=$VBRS_CACHE/arm64/bin/busybox
if [ ! -x "$arm64_bb" ] || ! head -c 4 "$arm64_bb" | grep -q ELF; then
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
		vbrs_log "dpkg --add-architecture arm64 (for the arm64 guests' busybox package)"
		$SUDO dpkg --add-architecture arm64 || vbrs_die "dpkg --add-architecture arm64 failed"
		$SUDO apt-get update -qq || vbrs_die "apt-get update failed: are Debian's package mirrors reachable?"
	fi
	vbrs_log "downloading busybox-static:arm64 into $VBRS_CACHE/arm64"
	dl=$(mktemp -d)
	(cd "$dl" && apt-get download -qq busybox-static:arm64 2>/dev/null) \
		|| vbrs_die "apt-get download busybox-static:arm64 failed"
	mkdir -p "$VBRS_CACHE/arm64/unpacked" "$VBRS_CACHE/arm64/bin"
	dpkg-deb -x "$dl"/busybox-static_*_arm64.deb "$VBRS_CACHE/arm64/unpacked"
	found=
	for f in bin/busybox usr/bin/busybox; do
		[ -x "$VBRS_CACHE/arm64/unpacked/$f" ] && found=$VBRS_CACHE/arm64/unpacked/$f && break
	done
	[ -n "$found" ] || vbrs_die "no bin/busybox in the busybox-static:arm64 package"
	install -m 0755 "$found" "$arm64_bb"
	rm -rf "$dl"
fi

# `deps.sh configs`: Debian's own 6.12 kernel configurations, for the
# build matrix (scripts/kernel/config-tree.sh), at the version of the
# kernel source: amd64 and arm64 packages, downloaded and unpacked into the
# cache, not installed.
if [ "${1:-}" = configs ]; then
	srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
	for darch in amd64 arm64; do
		dir=$(vbrs_debian_config "$darch")
		stamp=$VBRS_CACHE/debian-config/$darch/.version
		[ "$(cat "$stamp" 2>/dev/null)" = "$srcver" ] && [ -d "$dir" ] && continue
		vbrs_log "downloading linux-config-6.12:$darch $srcver into $VBRS_CACHE/debian-config/$darch"
		dl=$(mktemp -d)
		chmod 755 "$dl"
		(cd "$dl" && apt-get download -qq "linux-config-6.12:$darch=$srcver" 2>/dev/null) \
			|| vbrs_die "apt-get download linux-config-6.12:$darch=$srcver failed (the configurations must match linux-source-6.12 $srcver; run apt-get update?)"
		rm -rf "$VBRS_CACHE/debian-config/$darch"
		mkdir -p "$VBRS_CACHE/debian-config/$darch"
		dpkg-deb -x "$dl"/linux-config-6.12_*_"$darch".deb "$VBRS_CACHE/debian-config/$darch"
		echo "$srcver" >"$stamp"
		rm -rf "$dl"
	done
fi

# rustc-web must be the one the kernel uses; check the library source is there.
sysroot=$(/usr/bin/rustc --print sysroot)
[ -f "$sysroot/lib/rustlib/src/rust/library/core/src/lib.rs" ] \
	|| vbrs_die "Rust library source missing under $sysroot (Debian package rust-web-src)"

bindgen=$(vbrs_bindgen)
if ! "$bindgen" --version 2>/dev/null | grep -q "$VBRS_BINDGEN_VERSION"; then
	# The machine's rustup cargo builds bindgen-cli; Debian's own cargo is too old.
	cargo=$(PATH="$HOME/.cargo/bin:$PATH" command -v cargo) \
		|| vbrs_die "cargo not found: needed to build bindgen-cli (install a Rust toolchain with rustup)"
	vbrs_log "installing bindgen-cli $VBRS_BINDGEN_VERSION from crates.io into $VBRS_BINDGEN_ROOT (~1 min)"
	mkdir -p "$VBRS_BINDGEN_ROOT"
	"$cargo" install --quiet --locked "bindgen-cli@$VBRS_BINDGEN_VERSION" --root "$VBRS_BINDGEN_ROOT" \
		|| vbrs_die "cargo install bindgen-cli@$VBRS_BINDGEN_VERSION failed (is crates.io reachable?)"
fi

if ! "$VBRS_VENV/bin/python" -c 'import pytest, virtme_ng' 2>/dev/null; then
	vbrs_log "creating Python venv $VBRS_VENV with virtme-ng $VBRS_VNG_VERSION and pytest"
	rm -rf "$VBRS_VENV"
	python3 -m venv "$VBRS_VENV" || vbrs_die "python3 -m venv failed (Debian package python3-venv)"
	"$VBRS_VENV/bin/pip" install -q "virtme-ng==$VBRS_VNG_VERSION" "pytest>=7,<9" \
		|| vbrs_die "pip install virtme-ng pytest failed (is PyPI reachable?)"
fi
# Two test guests at a time: one TCG guest keeps about one core busy.
if ! "$VBRS_VENV/bin/python" -c 'import xdist' 2>/dev/null; then
	vbrs_log "installing pytest-xdist $VBRS_XDIST_VERSION into $VBRS_VENV"
	"$VBRS_VENV/bin/pip" install -q "pytest-xdist==$VBRS_XDIST_VERSION" \
		|| vbrs_die "pip install pytest-xdist failed (is PyPI reachable?)"
fi
# QMP through QEMU's own Python client library.
if ! "$VBRS_VENV/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
	vbrs_log "installing qemu.qmp $VBRS_QMP_VERSION into $VBRS_VENV"
	"$VBRS_VENV/bin/pip" install -q "qemu.qmp==$VBRS_QMP_VERSION" \
		|| vbrs_die "pip install qemu.qmp failed (is PyPI reachable?)"
fi
# `deps.sh bench`: what `make bench` needs beyond the tests (the plot).
if [ "${1:-}" = bench ] && ! "$VBRS_VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
	vbrs_log "installing matplotlib $VBRS_MATPLOTLIB_VERSION into $VBRS_VENV (for the benchmark's plot)"
	"$VBRS_VENV/bin/pip" install -q "matplotlib==$VBRS_MATPLOTLIB_VERSION" \
		|| vbrs_die "pip install matplotlib failed (is PyPI reachable?)"
fi
exit 0
