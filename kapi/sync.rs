// SPDX-License-Identifier: GPL-2.0

//! Synchronisation primitives the 6.12 `kernel` crate lacks.

use kernel::{bindings, prelude::*, types::Opaque};

/// A `struct completion`: one side waits until the other signals.
///
/// Signals are counted: each [`Completion::complete`] lets one
/// [`Completion::wait`] return, also when it came first.
///
/// # Invariants
///
/// `inner` was initialised by `init_completion` and is pinned, so the wait
/// queue inside it never moves.
#[pin_data]
pub(crate) struct Completion {
    #[pin]
    inner: Opaque<bindings::completion>,
}

// SAFETY: a completion is designed to be signalled and waited on from any
// context and thread; its state is protected by its own spinlock.
unsafe impl Send for Completion {}
// SAFETY: see `Send`; all methods take `&self` and the C side synchronises.
unsafe impl Sync for Completion {}

impl Completion {
    /// Returns an initialiser for a fresh completion.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `init_completion` fully initialises the completion at
            // `slot`, which is valid for writes and pinned.
            // INVARIANT: the completion is initialised and pinned.
            inner <- Opaque::ffi_init(|slot| unsafe { bindings::init_completion(slot) }),
        })
    }

    /// Signals one waiter. Safe in any context, hard interrupts included.
    pub(crate) fn complete(&self) {
        // SAFETY: `inner` is an initialised completion (type invariant).
        unsafe { bindings::complete(self.inner.get()) }
    }

    /// Sleeps until signalled.
    pub(crate) fn wait(&self) {
        // SAFETY: `inner` is an initialised completion (type invariant).
        unsafe { bindings::wait_for_completion(self.inner.get()) }
    }
}
