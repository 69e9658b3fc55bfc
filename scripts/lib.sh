# shellcheck shell=bash
# Common settings for the project's scripts. Source it; do not run it.
#
# Heavy outputs live outside the clone, in $VBRS_CACHE
# (default: ${XDG_CACHE_HOME:-$HOME/.cache}/virtio-balloon-rs).

VBRS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VBRS_CACHE=${VBRS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-balloon-rs}
VBRS_BINDGEN_VERSION=0.69.5
VBRS_VNG_VERSION=1.42
VBRS_LLVM_SUFFIX=-19
VBRS_BINDGEN_ROOT=$VBRS_CACHE/tools/bindgen-$VBRS_BINDGEN_VERSION
VBRS_VENV=$VBRS_CACHE/venv-vng-$VBRS_VNG_VERSION
VBRS_LINUX_TARBALL=/usr/src/linux-source-6.12.tar.xz

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
qemu-system-x86 guests
busybox-static guest userland
gcc static test programs for the guest (tests/guest/)
libc6-dev static libc for those
udev /dev/virtio-ports links that virtme-ng's init needs for the exit status
python3-venv virtme-ng and pytest venv
"

vbrs_log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
vbrs_die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

vbrs_bindgen() { echo "$VBRS_BINDGEN_ROOT/bin/bindgen"; }

# Make variables for building the kernel and the module with Debian's Rust.
vbrs_kmake_vars() {
	echo "LLVM=$VBRS_LLVM_SUFFIX RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc" \
		"RUSTDOC=/usr/bin/rustdoc RUSTFMT=/usr/bin/rustfmt" \
		"CLIPPY_DRIVER=/usr/bin/clippy-driver BINDGEN=$(vbrs_bindgen)"
}

# The cache key of the guest kernel: everything that changes its build.
# $1: config fragment (default scripts/kernel/guest.config)
vbrs_kernel_key() {
	local frag=${1:-$VBRS_ROOT/scripts/kernel/guest.config}
	{
		dpkg-query -W -f='${Version}\n' linux-source-6.12 2>/dev/null || echo none
		cat "$VBRS_ROOT"/scripts/kernel/patches/*.patch
		cat "$frag"
		/usr/bin/rustc --version 2>/dev/null
		clang$VBRS_LLVM_SUFFIX --version 2>/dev/null | head -n1
		echo "bindgen $VBRS_BINDGEN_VERSION"
		cat "$VBRS_ROOT/scripts/kernel/build.sh"
	} | sha256sum | cut -c1-16
}

# Directory of the built guest kernel for a config fragment.
vbrs_kernel_dir() {
	local frag=${1:-$VBRS_ROOT/scripts/kernel/guest.config}
	echo "$VBRS_CACHE/kernels/$(basename "$frag" .config)-$(vbrs_kernel_key "$frag")/linux"
}
