// SPDX-License-Identifier: GPL-2.0

//! Virtio drivers: registration with an ID table, the device in the states
//! a driver sees it in, its config space, and (in [`queue`]) its
//! virtqueues.
//!
//! A driver implements [`Driver`] and keeps a [`Registration`] for as long as
//! it wants to be bound. The bus calls back through [`Adapter`]; each
//! callback is handed the device in a context that says what may be done
//! with it:
//!
//! | context | where | allows |
//! | --- | --- | --- |
//! | [`Normal`] | any reference ([`ARef`]) | identity, messages |
//! | [`Validate`] | [`Driver::validate`], one thread | offered features, clearing them |
//! | [`Bound`] | [`Driver::config_changed`] (a spinlock is held) | negotiated features; nothing that sleeps |
//! | [`Core`] | probe, ready, remove, freeze, restore (device lock held) | config-space handles, debugfs, queue set-up |
//!
//! The virtqueues and config space of a binding are reached through handles
//! ([`queue::SyncQueue`], [`Config`], ...) that stay valid, but fail, once
//! the binding has gone: the layer owns the queues, resets the device and
//! deletes them itself after `remove` (or a failed `probe`, or `freeze`).
//!
//! One concept per file: `id.rs` (feature bits, ID tables), `device.rs`
//! (the device and its contexts), `config.rs` (config space),
//! `binding.rs` (a bound device's lifecycle, queues and teardown),
//! `driver.rs` (the [`Driver`] trait, [`Registration`], the [`Adapter`]
//! trampolines) and `queue.rs` with `queue/` (the virtqueues). They share
//! this module's namespace (each starts with `use super::*`).

#[macro_use]
mod id;
mod binding;
#[macro_use]
mod config;
mod device;
mod driver;
pub(crate) mod queue;

use self::binding::*;
pub(crate) use self::{config::*, device::*, driver::*, id::*};

use super::{
    debugfs::Dir,
    sync::{RwSem, RwSemRead, RwSemWrite},
    sysfs,
};
use crate::kapi::bindings;
use core::{
    cell::UnsafeCell,
    ffi::c_void,
    marker::PhantomData,
    ptr::NonNull,
    sync::atomic::{AtomicBool, AtomicPtr, Ordering},
};
use kernel::{
    error::{from_result, to_result},
    prelude::*,
    sync::{Arc, ArcBorrow},
    types::{ARef, AlwaysRefCounted, ForeignOwnable, Opaque},
    ThisModule,
};

/// Device contexts: what a `&Device<C>` lets its holder do.
mod private {
    pub(crate) trait Sealed {}
}
