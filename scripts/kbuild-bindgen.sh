#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Generates kapi/bindings_generated.rs: Rust declarations for the kernel
# interfaces the driver needs and the 6.12 `bindings` crate lacks, and for
# the module's C helpers. Kbuild runs it (see ./Kbuild), from the kernel's
# build directory, so it works for DKMS and `make KDIR=` alike.
#
# bindgen is run the way the kernel ran it for its own bindings: the
# options and C flags are read from the kernel's record of that command
# (rust/bindings/.bindings_generated.rs.cmd). Every item the kernel crate
# already declares is left out, so that the module's code sees one Rust
# type per C type, kernel::bindings' own. Before generating, the C flags are
# compared with the ones kbuild compiled kapi/helpers.c with: a -D, -U or
# -include that differs changes struct layouts behind bindgen's back, so the
# build stops there.
#
# It also makes sure that the rustc about to compile the crate is the one
# the kernel was built with (DKMS runs the first rustc on PATH), which rustc
# itself would only report as hundreds of "incompatible version" errors.
#
# usage: kbuild-bindgen.sh RUSTC BINDGEN HEADER HELPERS_O_CMD OUTPUT
set -eu

rustc=$1 bindgen=$2 header=$3 helpers_cmd=$4 out=$5
kcmd=rust/bindings/.bindings_generated.rs.cmd

die() {
	echo "virtio_balloon_rs: $*" >&2
	exit 1
}

built_with=$(sed -n 's/^CONFIG_RUSTC_VERSION_TEXT=//p' include/config/auto.conf 2>/dev/null | sed 's/^"\(.*\)"$/\1/')
using=$("$rustc" --version 2>/dev/null) || die "cannot run RUSTC=$rustc"
[ -z "$built_with" ] || [ "$built_with" = "$using" ] \
	|| die "the kernel was built with '$built_with', but RUSTC=$rustc is '$using': pass RUSTC= (the kernel's rustc) to make, or put that rustc first on PATH"

[ -f "$kcmd" ] || die "$(pwd)/$kcmd is missing: the kernel tree has no record of how its Rust bindings were generated (build the kernel there with CONFIG_RUST=y first)"
[ -f "$helpers_cmd" ] || die "$helpers_cmd is missing (kapi/helpers.o not built?)"

# The kernel's command: "savedcmd_<target> := BINDGEN HEADER OPTIONS -o
# OUT -- CFLAGS ; sed ...". Make escapes $ as $$ in these files.
saved=$(sed -n 's/^savedcmd_[^ ]* := //p' "$kcmd" | sed 's/\$\$/$/g')
kopts=${saved%% -o rust/bindings/bindings_generated.rs -- *}
kflags=${saved#* -o rust/bindings/bindings_generated.rs -- }
kflags=${kflags%% ; *}
[ "$kopts" != "$saved" ] && [ "$kflags" != "$saved" ] || die "cannot read the bindgen command in $(pwd)/$kcmd"
eval "set -- $kopts"
kbindgen=$1
shift 2
# $@: the kernel's bindgen options (its bindgen_parameters and the Rust
# target, derive and ctypes options).

# The bindgen: the one given (BINDGEN=) if it runs, else the kernel's own.
command -v "$bindgen" >/dev/null 2>&1 || bindgen=$kbindgen
command -v "$bindgen" >/dev/null 2>&1 || die "no bindgen: neither '$1' nor the kernel's '$kbindgen' runs (set BINDGEN=)"

# C flags that change what a header means: macros, forced includes, the C
# standard, and the few options that change type sizes. Names kbuild sets
# per file (KBUILD_*) and bindgen's own markers are not compared.
layout_flags() {
	eval "set -- $1"
	while [ $# -gt 0 ]; do
		case "$1" in
		-DKBUILD_* | -D__KBUILD_MODNAME* | -D__BINDGEN__) ;;
		-D* | -U* | -std=* | -fshort-wchar | -funsigned-char | -fsigned-char | \
			-fpack-struct* | -fshort-enums | -m32 | -m64 | -mx32) echo "$1" ;;
		-include) echo "-include $2"; shift ;;
		esac
		shift
	done | sort -u
}
hflags=$(sed -n 's/^savedcmd_[^ ]* := //p' "$helpers_cmd" | sed 's/\$\$/$/g')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
layout_flags "$kflags" >"$tmp/kernel.flags"
layout_flags "$hflags" >"$tmp/helpers.flags"
if ! cmp -s "$tmp/kernel.flags" "$tmp/helpers.flags"; then
	echo "virtio_balloon_rs: the C flags differ between the kernel's bindings and this module's C code:" >&2
	diff "$tmp/kernel.flags" "$tmp/helpers.flags" | sed -n 's/^< /  kernel bindgen only: /p; s/^> /  module C code only:  /p' >&2
	die "refusing to generate bindings whose struct layouts may not match the C code (extra KCFLAGS or ccflags?)"
fi

# Only the headers with what the driver uses are allowlisted; what they
# reach that the kernel crate has is then blocklisted.
allow_files='.*/include/(uapi/)?linux/(balloon_compaction|completion|debugfs|delay|err|migrate|migrate_mode|mmzone|mm|mod_devicetable|notifier|oom|page_reporting|pm_wakeup|poison|scatterlist|shrinker|sysinfo|virtio|virtio_balloon|virtio_config|virtio_ids|virtio_ring|vm_event_item|vmstat)\.h'

kflags_bg=$(echo "$kflags" | sed 's/-Wp,-MMD,[^ ]*//')
run_bindgen() {
	# $1: output; the rest: extra bindgen options
	o=$1
	shift
	eval "set -- \"\$@\" $kopts_rest"
	eval "\"\$bindgen\" \"\$header\" \"\$@\" \
		--allowlist-file '$allow_files' \
		--allowlist-function 'vbrs_helper_.*' --allowlist-var 'VBRS_CONST_.*' \
		-o \"\$o\" -- $kflags_bg -DMODULE"
}
# The kernel's options, re-quoted for the eval in run_bindgen.
kopts_rest=
for a in "$@"; do
	kopts_rest="$kopts_rest '$a'"
done

run_bindgen "$tmp/pass1.rs"

names() {
	grep -oE 'pub (struct|union|enum|type|const|static mut|static|fn) [A-Za-z_0-9]+' "$@" \
		| awk '{print $NF}' | sort -u
}
names rust/bindings/bindings_generated.rs rust/bindings/bindings_helpers_generated.rs >"$tmp/kernel.names"
names "$tmp/pass1.rs" >"$tmp/ours.names"
comm -12 "$tmp/kernel.names" "$tmp/ours.names" | sed 's/.*/--blocklist-item\n&/' >"$tmp/block.args"
set --
while IFS= read -r a; do set -- "$@" "$a"; done <"$tmp/block.args"
run_bindgen "$tmp/pass2.rs" "$@"

# The helpers are called by the names of what they wrap; the constants
# lose their prefix the same way.
sed -E 's/^( *)pub fn vbrs_helper_([A-Za-z0-9_]*)/\1#[link_name = "vbrs_helper_\2"]\n\1pub fn \2/; s/pub const VBRS_CONST_([A-Za-z0-9_]*)/pub const \1/' \
	"$tmp/pass2.rs" >"$tmp/out.rs"
mv "$tmp/out.rs" "$out"
