// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over the kernel C interfaces the driver uses.
//!
//! Every `unsafe` block and every use of the C bindings (`bindings`:
//! `kernel::bindings` and what the module generates itself) in this crate
//! lives below this point; the balloon logic in `balloon.rs` is written
//! against these safe types only and forbids `unsafe`. Each module is a
//! generic abstraction; nothing here knows the balloon driver.

// Macros first: later modules use them.
#[macro_use]
pub(crate) mod print;
pub(crate) mod bindings;
#[macro_use]
pub(crate) mod sync;
#[macro_use]
pub(crate) mod debugfs;
#[macro_use]
pub(crate) mod virtio;
pub(crate) mod balloon;
pub(crate) mod batch;
pub(crate) mod mm;
pub(crate) mod oom;
pub(crate) mod pages;
#[macro_use]
pub(crate) mod param;
pub(crate) mod reporting;
pub(crate) mod shrinker;
pub(crate) mod sysfs;
pub(crate) mod virtio_balloon;
pub(crate) mod wakeup;
#[macro_use]
pub(crate) mod work;
