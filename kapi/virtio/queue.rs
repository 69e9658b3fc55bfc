// SPDX-License-Identifier: GPL-2.0

//! Virtqueues, in four disciplines, each its own type so that they cannot
//! be mixed on one queue:
//!
//! - [`SyncQueue`]: the driver lends buffers and sleeps until the device
//!   has returned every one. When the call returns, the device holds
//!   nothing of what was lent: it gave it back, or (after a failure) the
//!   device was reset.
//! - [`PostedQueue`]: the driver hands over an owned buffer and the device
//!   returns it when it likes; the driver hears of it through
//!   [`super::Driver::buffers_used`] and takes it back.
//! - [`PolledQueue`]: as posted, without interrupts; the driver reaps.
//! - [`WaitedQueue`]: as posted, but the driver sleeps until the device
//!   returns a buffer ([`WaitedQueue::wait`]): it can hand over several,
//!   go on with other work while the device has them, and collect them
//!   later.
//!
//! A buffer handed over is owned by the queue (the ring's token) until the
//! device returns it or the layer resets the device and drops it. Handles
//! are made with the [`QueueSetup`] the layer passes to probe and restore,
//! and fail with `ENODEV` once their queues are torn down.
//!
//! One concept per file: `buffers.rs` (what a queue carries),
//! `queue_core.rs` (a queue's shared state and its interrupt callback),
//! `setup.rs` ([`QueueSetup`]), `sync_queue.rs` ([`SyncQueue`]), `owned.rs`
//! (the owned-buffer disciplines) and `faults.rs` (fault knobs). They share
//! this module's namespace (each starts with `use super::*`).

use super::{Binding, Bound, Device};
use crate::kapi::bindings;
use crate::kapi::sync::Completion;
use crate::kapi::sync::{RwSemRead, RwSemWrite, SpinLockIrq};
use core::{
    ffi::c_void, marker::PhantomData, mem::MaybeUninit, ptr::NonNull, sync::atomic::Ordering,
};
use kernel::{error::to_result, prelude::*, str::CStr, sync::Arc};

/// Most virtqueues a device may have with this layer.
pub(crate) const MAX_VQS: usize = 8;

/// Identifies a queue in [`super::Driver::buffers_used`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct QueueId(u16);

mod buffers;
mod faults;
mod owned;
mod queue_core;
mod setup;
mod sync_queue;

pub(in crate::kapi::virtio) use self::faults::*;
pub(in crate::kapi::virtio) use self::queue_core::*;
pub(crate) use self::{buffers::*, owned::*, setup::*, sync_queue::*};
