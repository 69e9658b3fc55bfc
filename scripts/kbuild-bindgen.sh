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
# usage: kbuild-bindgen.sh RUSTC BINDGEN HEADER HELPERS_O_CMD OUTPUT DEPFILE
set -eu

rustc=$1 given_bindgen=$2 header=$3 helpers_cmd=$4 out=$5 depfile=$6
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

# The bindgen: the kernel's own if it is still there, else the one given
# (BINDGEN=, by default the first on PATH), which must be the same version:
# names and derives differ between bindgen releases.
bindgen=$kbindgen
if ! command -v "$bindgen" >/dev/null 2>&1; then
	bindgen=$given_bindgen
	command -v "$bindgen" >/dev/null 2>&1 \
		|| die "no bindgen: neither BINDGEN=$given_bindgen nor the kernel's $kbindgen runs"
	want=$(sed -n 's/^CONFIG_BINDGEN_VERSION_TEXT=//p' include/config/auto.conf 2>/dev/null | sed 's/^"\(.*\)"$/\1/')
	have=$("$bindgen" --version 2>/dev/null | head -n1)
	[ -z "$want" ] || [ "$want" = "$have" ] \
		|| die "the kernel's bindings were made by '$want', but BINDGEN=$bindgen is '$have': pass BINDGEN= (that version) to make"
fi

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
# Only the compiler's part: kbuild appends other commands (objtool) after
# " ; ", and the eval in layout_flags must not run them.
hflags=${hflags%% ; *}
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
allow_files='.*/include/(uapi/)?linux/(balloon_compaction|debugfs|migrate|oom|page_reporting|pm_wakeup|shrinker|virtio|virtio_balloon|virtio_config|virtio_ids|virtio_ring)\.h'

# The kernel's dependency file option becomes ours, so that kbuild
# (if_changed_dep) regenerates the bindings when any header they come from
# changes.
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
kflags_bg="-Wp,-MMD,$depfile $kflags_bg"

# The items a bindings file declares: top-level types, constants and
# statics, and the functions of its extern blocks (not methods of impls).
names() {
	awk '/^(pub )?(unsafe )?extern "C" \{/ { ext = 1; next }
		/^\}/ { ext = 0 }
		match($0, /^pub (struct|union|enum|type|const|static mut|static) [A-Za-z_0-9]+/) ||
		(ext && match($0, /^    pub fn [A-Za-z_0-9]+/)) {
			n = split(substr($0, RSTART, RLENGTH), w, " "); print w[n]
		}' "$@" | sort -u
}
names rust/bindings/bindings_generated.rs rust/bindings/bindings_helpers_generated.rs >"$tmp/kernel.names"
names "$tmp/pass1.rs" >"$tmp/ours.names"
# Blocklisted: what the kernel crate has, and the helpers and constants whose
# final names it has (a function that is a real symbol in this
# configuration, say). Anonymous types (_bindgen_ty_N) are numbered per
# bindgen run, so equal names need not be equal types: ours keep their own.
{
	comm -12 "$tmp/kernel.names" "$tmp/ours.names" | grep -v '^_bindgen_ty_' || true
	sed -n 's/^vbrs_helper_//p; s/^VBRS_CONST_//p' "$tmp/ours.names" | sort -u \
		| comm -12 "$tmp/kernel.names" - | sed 's/.*/vbrs_helper_&\nVBRS_CONST_&/'
} | sed 's/.*/--blocklist-item\n&/' >"$tmp/block.args"
set --
while IFS= read -r a; do set -- "$@" "$a"; done <"$tmp/block.args"
run_bindgen "$tmp/pass2.rs" "$@"

# The helpers are called by the names of what they wrap; the constants
# lose their prefix the same way.
sed -E 's/^( *)pub fn vbrs_helper_([A-Za-z0-9_]*)/\1#[link_name = "vbrs_helper_\2"]\n\1pub fn \2/; s/pub const VBRS_CONST_([A-Za-z0-9_]*)/pub const \1/' \
	"$tmp/pass2.rs" >"$tmp/out.rs"

# One Rust type per C type: no generated type or function may shadow one
# the kernel crate declares, but bindgen's own generic helper types and
# anonymous types. (The constants of an anonymous enum both reach, which
# bindgen cannot leave out one by one, have the C enumerators' values.)
grep -v '^pub const ' "$tmp/out.rs" | names | comm -12 "$tmp/kernel.names" - \
	| grep -v '^_bindgen_ty_\|^__IncompleteArrayField$\|^__BindgenUnionField$\|^__BindgenBitfieldUnit$' \
	>"$tmp/dup.names" || true
[ ! -s "$tmp/dup.names" ] || die "generated bindings redeclare what kernel::bindings has: $(tr '\n' ' ' <"$tmp/dup.names")"
mv "$tmp/out.rs" "$out"
