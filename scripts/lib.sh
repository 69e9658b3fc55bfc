# shellcheck shell=bash
# Common settings for the project's scripts. Source it; do not run it.
#
# Heavy outputs live outside the clone, in $VBRS_CACHE
# (default: ${XDG_CACHE_HOME:-$HOME/.cache}/virtio-balloon-rs).

VBRS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VBRS_CACHE=${VBRS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-balloon-rs}
VBRS_BINDGEN_VERSION=0.69.5
VBRS_VNG_VERSION=1.42
VBRS_XDIST_VERSION=3.6.1
VBRS_QMP_VERSION=0.0.6
# `make bench` only: the plot.
VBRS_MATPLOTLIB_VERSION=3.9.2
VBRS_LLVM_SUFFIX=-19
VBRS_BINDGEN_ROOT=$VBRS_CACHE/tools/bindgen-$VBRS_BINDGEN_VERSION
VBRS_VENV=$VBRS_CACHE/venv-vng-$VBRS_VNG_VERSION
VBRS_LINUX_TARBALL=/usr/src/linux-source-6.12.tar.xz

# The target: the guest's architecture and kernel page size (make ARCH=...
# PAGE=..., or VBRS_ARCH/VBRS_PAGE). x86_64 has 4k pages; arm64 has 4k, 16k
# or 64k (default 64k, the page size of most arm64 distributions' servers).
VBRS_ARCH=${VBRS_ARCH:-x86_64}
case "$VBRS_ARCH" in
x86_64) VBRS_PAGE=${VBRS_PAGE:-4k} ;;
arm64) VBRS_PAGE=${VBRS_PAGE:-64k} ;;
*) printf 'error: ARCH=%s: supported are x86_64 and arm64\n' "$VBRS_ARCH" >&2; exit 1 ;;
esac
case "$VBRS_ARCH-$VBRS_PAGE" in
x86_64-4k | arm64-4k | arm64-16k | arm64-64k) ;;
*) printf 'error: PAGE=%s: %s supports %s\n' "$VBRS_PAGE" "$VBRS_ARCH" \
	"$([ "$VBRS_ARCH" = x86_64 ] && echo 4k || echo '4k, 16k and 64k')" >&2; exit 1 ;;
esac
VBRS_TARGET=$VBRS_ARCH-$VBRS_PAGE
export VBRS_ARCH VBRS_PAGE

# Debian packages the project needs, one per line: package and what for.
VBRS_DEB_PACKAGES="
linux-source-6.12 guest kernel source
rustc-web rustc matching the 6.12 Rust support
rust-web-src Rust library source for the kernel's core/alloc build
rust-web-clippy clippy-driver for CLIPPY=1
rustfmt-web rustfmt for make rustfmt
clang-19 C compiler for LLVM=-19
lld-19 linker for LLVM=-19
llvm-19 binutils replacements for LLVM=-19
libclang-19-dev libclang for bindgen
flex kernel build
bison kernel build
bc kernel build
libelf-dev kernel build (objtool)
libssl-dev kernel build
cpio initramfs images
kmod modinfo
xz-utils unpacking the kernel source
qemu-system-x86 x86_64 guests
qemu-system-arm arm64 guests (qemu-system-aarch64)
busybox-static guest userland
gcc-aarch64-linux-gnu static test programs for arm64 guests
libc6-dev-arm64-cross static libc for those
gcc static test programs for the guest (tests/guest/)
libc6-dev static libc for those
udev /dev/virtio-ports links that virtme-ng's init needs for the exit status
dkms the DKMS build and install test (tests/test_install.py)
python3-venv virtme-ng and pytest venv
"

vbrs_log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
vbrs_die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

vbrs_bindgen() { echo "$VBRS_BINDGEN_ROOT/bin/bindgen"; }
# The directory with Debian's 6.12 kernel configurations for Debian
# architecture $1 (amd64, arm64): package linux-config-6.12 of that
# architecture, at the linux-source-6.12 version, unpacked into the cache
# by `deps.sh configs` (not installed: one architecture's package would
# replace the other's).
vbrs_debian_config() {
	echo "$VBRS_CACHE/debian-config/$1/usr/src/linux-config-6.12"
}


# Make variables for building the kernel and the module with Debian's Rust,
# for the target's architecture (clang cross-compiles by itself).
vbrs_kmake_vars() {
	echo "ARCH=$VBRS_ARCH LLVM=$VBRS_LLVM_SUFFIX RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc" \
		"RUSTDOC=/usr/bin/rustdoc RUSTFMT=/usr/bin/rustfmt" \
		"CLIPPY_DRIVER=/usr/bin/clippy-driver BINDGEN=$(vbrs_bindgen)"
}

# The kernel image of a build directory, for the target's architecture.
vbrs_kernel_image() {
	case "$VBRS_ARCH" in
	x86_64) echo "$1/arch/x86/boot/bzImage" ;;
	arm64) echo "$1/arch/arm64/boot/Image" ;;
	esac
}

# The static busybox for the target's guests (arm64's comes from Debian's
# arm64 package, unpacked by deps.sh).
vbrs_busybox() {
	case "$VBRS_ARCH" in
	x86_64) echo /bin/busybox ;;
	arm64) echo "$VBRS_CACHE/arm64/bin/busybox" ;;
	esac
}

# Writes the config fragment of kernel kind $1 (guest, or debug: guest plus
# KASAN, lockdep, kmemleak and fault injection) for the target into the
# cache, and prints its path: its name and contents key the kernel build.
vbrs_fragment() {
	local kind=${1:-guest} k=$VBRS_ROOT/scripts/kernel
	local out=$VBRS_CACHE/fragments/$kind-$VBRS_TARGET.config tmp
	case "$kind" in
	guest | debug | lean) ;;
	*) vbrs_die "kernel kind '$kind': guest, debug or lean" ;;
	esac
	mkdir -p "$VBRS_CACHE/fragments"
	# A file of its own: the test workers may write the fragment at once.
	tmp=$(mktemp "$out.XXXXXX")
	{
		if [ "$kind" = lean ]; then
			# The guest fragments without the lines of the options
			# lean.config turns off (whole names: ^CONFIG_X=).
			cat "$k/guest.config" "$k/$VBRS_ARCH.config" \
				| grep -v -f <(sed -n 's/^\(CONFIG_[A-Z0-9_]*=\)n$/^\1/p' "$k/lean.config")
		else
			cat "$k/guest.config" "$k/$VBRS_ARCH.config"
		fi
		if [ "$VBRS_ARCH" = arm64 ]; then
			echo "CONFIG_ARM64_$(echo "$VBRS_PAGE" | tr k K)_PAGES=y"
		fi
		case "$kind" in
		debug) cat "$k/debug.config" ;;
		lean) cat "$k/lean.config" ;;
		esac
	} >"$tmp"
	chmod 644 "$tmp"
	mv "$tmp" "$out"
	echo "$out"
}

# The cache key of a guest kernel: everything that changes its build.
# $1: config fragment (from vbrs_fragment)
vbrs_kernel_key() {
	{
		dpkg-query -W -f='${Version}\n' linux-source-6.12 2>/dev/null || echo none
		cat "$1"
		echo "ARCH=$VBRS_ARCH"
		/usr/bin/rustc --version 2>/dev/null
		clang$VBRS_LLVM_SUFFIX --version 2>/dev/null | head -n1
		echo "bindgen $VBRS_BINDGEN_VERSION"
		cat "$VBRS_ROOT/scripts/kernel/build.sh"
	} | sha256sum | cut -c1-16
}

# Directory of the built guest kernel for a config fragment.
vbrs_kernel_dir() {
	echo "$VBRS_CACHE/kernels/$(basename "$1" .config)-$(vbrs_kernel_key "$1")/linux"
}

# Removes builds of the same kind and target as kernel build directory $1
# under older keys (each holds a few GB); other trees are left alone.
vbrs_prune_stale_kernels() {
	local top name old
	top=$(dirname "$1")
	case "$top" in "$VBRS_CACHE"/kernels/*) ;; *) return 0 ;; esac
	name=$(basename "$top")
	name=${name%-*}
	for old in "$VBRS_CACHE/kernels/$name"-*; do
		[ "$old" = "$top" ] || [ ! -f "$old/done" ] || { vbrs_log "removing the stale kernel build $old"; rm -rf "$old"; }
	done
}
