// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`page_reporting_register`).
//!
//! The page allocator hands a registered device batches of free,
//! high-order page ranges as a scatterlist; the device tells the host,
//! which may discard their contents. A [`PageReporting`] is registered for
//! its whole life and unregistered on drop, which waits for a report in
//! progress.

use super::virtio::queue::LentSg;
use crate::kapi::bindings;
use core::{
    marker::{PhantomData, PhantomPinned},
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{
    ffi::{c_int, c_uint},
    prelude::*,
    types::Opaque,
};

/// Most ranges the allocator reports at once (`PAGE_REPORTING_CAPACITY`).
pub(crate) const CAPACITY: u32 = bindings::PAGE_REPORTING_CAPACITY;

/// A batch of free page ranges being reported, valid for one callback.
///
/// # Invariants
///
/// `sg` is a scatterlist of `nents` entries of free pages that the page
/// allocator keeps isolated for the lifetime `'a` of the callback.
pub(crate) struct ReportedRanges<'a> {
    sg: *mut bindings::scatterlist,
    nents: u32,
    _life: PhantomData<&'a ()>,
}

impl ReportedRanges<'_> {
    /// Number of ranges.
    pub(crate) fn len(&self) -> u32 {
        self.nents
    }
}

// SAFETY: the entries are isolated free pages (direct map) that the page
// allocator keeps away from everyone else for the callback's lifetime `'a`
// (type invariant), which outlives any borrow of `self`; it builds the list
// with `sg_init_table` and marks its end at entry `nents - 1`
// (mm/page_reporting.c).
unsafe impl LentSg for ReportedRanges<'_> {
    fn raw(&self) -> (*mut bindings::scatterlist, u32) {
        (self.sg, self.nents)
    }
}

/// What a driver does with reported free pages.
pub(crate) trait ReportHandler: Send + Sync + 'static {
    /// Tells the host about `ranges`; returns once it has them. An error
    /// makes the allocator stop reporting for a while.
    fn report(&self, ranges: &ReportedRanges<'_>) -> Result;
}

/// A registered free page reporting device calling `H`.
///
/// # Invariants
///
/// `info` is pinned, is the first field of this `repr(C)` struct, has
/// `report` set to `report_trampoline::<H>`, and is registered with the
/// page allocator while `registered` is true.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct PageReporting<H: ReportHandler> {
    #[pin]
    info: Opaque<bindings::page_reporting_dev_info>,
    registered: AtomicBool,
    handler: H,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the allocator calls the device from its own work item; `H` is
// `Send + Sync`, and `info` is only touched by the allocator.
unsafe impl<H: ReportHandler> Send for PageReporting<H> {}
// SAFETY: see `Send`.
unsafe impl<H: ReportHandler> Sync for PageReporting<H> {}

impl<H: ReportHandler> PageReporting<H> {
    /// Registers `handler` (only one device may report at a time: `EBUSY`
    /// otherwise). `order` is the smallest block reported, `None` for the
    /// allocator's default (`pageblock_order`).
    pub(crate) fn register(handler: H, order: Option<u32>) -> Result<Pin<KBox<Self>>> {
        let this = KBox::pin_init(
            pin_init!(Self {
                // SAFETY: `slot` is valid for writes; all-zero is a valid
                // unregistered device (the allocator sets the rest).
                info <- Opaque::ffi_init(|slot: *mut bindings::page_reporting_dev_info| unsafe {
                    core::ptr::write_bytes(slot, 0, 1);
                    (*slot).report = Some(report_trampoline::<H>);
                    (*slot).order = order.unwrap_or(0);
                }),
                registered: AtomicBool::new(false),
                handler,
                _pin: PhantomPinned,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `info` is initialised and pinned in the box, which stays
        // alive until `drop` unregisters it.
        let ret = unsafe { bindings::page_reporting_register(this.info.get()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: registered above.
        this.registered.store(true, Ordering::Release);
        Ok(this)
    }

    /// Stops reporting, waiting for a report in progress. Idempotent.
    pub(crate) fn unregister(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            // SAFETY: registered (type invariant); unregistering cancels the
            // allocator's reporting work and waits for it.
            unsafe { bindings::page_reporting_unregister(self.info.get()) };
        }
    }
}

#[pinned_drop]
impl<H: ReportHandler> PinnedDrop for PageReporting<H> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}

/// `report` of a [`PageReporting<H>`].
///
/// # Safety
///
/// Called by the page allocator with the `info` of a live, registered
/// `PageReporting<H>` and a scatterlist of `nents` isolated free ranges.
unsafe extern "C" fn report_trampoline<H: ReportHandler>(
    prdev: *mut bindings::page_reporting_dev_info,
    sg: *mut bindings::scatterlist,
    nents: c_uint,
) -> c_int {
    // SAFETY: `prdev` is the first field of a live `repr(C)`
    // `PageReporting<H>` (type invariant and the function's contract).
    let this = unsafe { &*prdev.cast::<PageReporting<H>>() };
    // INVARIANT: per the function's contract, for this call.
    let ranges = ReportedRanges {
        sg,
        nents,
        _life: PhantomData,
    };
    match this.handler.report(&ranges) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}
