// SPDX-License-Identifier: GPL-2.0

//! The C declarations kapi uses: `kernel::bindings`, and what it lacks.
//!
//! The 6.12 `bindings` crate covers only the headers its own abstractions
//! need. The rest (virtio, balloon compaction, OOM notifiers, free page
//! reporting, shrinkers, vm events, debugfs, wakeup sources) is generated
//! at module build time by `scripts/kbuild-bindgen.sh` into
//! `bindings_generated.rs`, with the kernel's own bindgen options and C
//! flags. Items `kernel::bindings` already has are left out of it and come
//! from the glob import below, so each C type has one Rust type. The
//! functions named after static inline ones call the module's C helpers
//! (`helpers.c`).

#![allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]

pub(crate) use kernel::bindings::*;

// The kernel's bindgen options map these to `usize`/`isize` by hand; the
// kernel crate's definitions are private to it.
type __kernel_size_t = usize;
type __kernel_ssize_t = isize;
type __kernel_ptrdiff_t = isize;

use kernel::ffi;

include!("bindings_generated.rs");
