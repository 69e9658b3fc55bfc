// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over the kernel C interfaces the driver uses.
//!
//! Every `unsafe` block and every use of `kernel::bindings` in this module
//! lives below this point; the balloon logic in `balloon.rs` is written
//! against these safe types only and forbids `unsafe`.

// The layer is built ahead of the balloon logic that uses all of it
// (inflate/deflate messages, feature checks, delayed retries).
#![allow(dead_code)]

#[macro_use]
pub(crate) mod print;
pub(crate) mod balloon;
pub(crate) mod debugfs;
pub(crate) mod hint;
pub(crate) mod mm;
pub(crate) mod oom;
pub(crate) mod reporting;
pub(crate) mod shrinker;
pub(crate) mod sync;
pub(crate) mod virtio;
pub(crate) mod wakeup;
pub(crate) mod work;
