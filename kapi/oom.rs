// SPDX-License-Identifier: GPL-2.0

//! OOM notifiers (`register_oom_notifier`).
//!
//! When the OOM killer is about to pick a victim it first calls the OOM
//! notifier chain; memory a notifier frees (counted in kernel pages) can
//! spare the victim. An [`OomNotifier`] is registered for its whole life and
//! unregistered on drop, which waits for a notification in progress.

use crate::kapi::bindings;
use core::{
    ffi::c_void,
    marker::PhantomPinned,
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{
    ffi::{c_int, c_ulong},
    prelude::*,
    types::Opaque,
};

/// What a driver does when the system runs out of memory.
pub(crate) trait OomHandler: Send + Sync + 'static {
    /// Frees what it can spare; returns the number of kernel pages freed.
    /// May sleep (the chain is a blocking one).
    fn out_of_memory(&self) -> u64;
}

/// A registered OOM notifier calling `H`.
///
/// # Invariants
///
/// `nb` is pinned, is the first field of this `repr(C)` struct, has
/// `notifier_call` set to `notify_trampoline::<H>`, and is on the OOM
/// notifier chain while `registered` is true.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct OomNotifier<H: OomHandler> {
    #[pin]
    nb: Opaque<bindings::notifier_block>,
    registered: AtomicBool,
    handler: H,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the chain calls the notifier from any thread; `H` is `Send + Sync`
// and the notifier block is only touched by the chain under its rwsem.
unsafe impl<H: OomHandler> Send for OomNotifier<H> {}
// SAFETY: see `Send`.
unsafe impl<H: OomHandler> Sync for OomNotifier<H> {}

impl<H: OomHandler> OomNotifier<H> {
    /// Registers `handler` with the given chain priority (the C balloon
    /// driver uses 80).
    pub(crate) fn register(handler: H, priority: i32) -> Result<Pin<KBox<Self>>> {
        let this = KBox::pin_init(
            pin_init!(Self {
                // SAFETY: `slot` is valid for writes; an all-zero notifier
                // block is valid, and the callback and priority are set.
                nb <- Opaque::ffi_init(|slot: *mut bindings::notifier_block| unsafe {
                    slot.write(bindings::notifier_block::default());
                    (*slot).notifier_call = Some(notify_trampoline::<H>);
                    (*slot).priority = priority as c_int;
                }),
                registered: AtomicBool::new(false),
                handler,
                _pin: PhantomPinned,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: the block is initialised and pinned in the box, which
        // stays alive until `drop` unregisters it.
        let ret = unsafe { bindings::register_oom_notifier(this.nb.get()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: registered above.
        this.registered.store(true, Ordering::Release);
        Ok(this)
    }

    /// Takes the notifier off the chain, waiting for a notification in
    /// progress; from then on the handler is never called. Idempotent.
    pub(crate) fn unregister(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            // SAFETY: `nb` is on the chain (type invariant). Unregistering
            // takes the chain's rwsem for writing, so a running notification
            // finishes first.
            unsafe { bindings::unregister_oom_notifier(self.nb.get()) };
        }
    }
}

#[pinned_drop]
impl<H: OomHandler> PinnedDrop for OomNotifier<H> {
    fn drop(self: Pin<&mut Self>) {
        // The handler must not be called once it is gone.
        self.unregister();
    }
}

/// `notifier_call` of an [`OomNotifier<H>`].
///
/// # Safety
///
/// Called by the OOM notifier chain with the block of a live
/// `OomNotifier<H>` and `data` pointing to the caller's `unsigned long`
/// count of freed pages.
unsafe extern "C" fn notify_trampoline<H: OomHandler>(
    nb: *mut bindings::notifier_block,
    _action: c_ulong,
    data: *mut c_void,
) -> c_int {
    // SAFETY: `nb` is the first field of a live `repr(C)` `OomNotifier<H>`
    // (type invariant and the function's contract).
    let this = unsafe { &*nb.cast::<OomNotifier<H>>() };
    let freed = this.handler.out_of_memory();
    let count = data.cast::<c_ulong>();
    if !count.is_null() {
        // SAFETY: `data` points to the caller's counter, per the contract.
        unsafe { *count = (*count).saturating_add(freed as c_ulong) };
    }
    bindings::NOTIFY_OK as c_int
}
