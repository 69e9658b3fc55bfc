// SPDX-License-Identifier: GPL-2.0

//! Shrinkers (`shrinker_alloc`/`shrinker_register`/`shrinker_free`): memory
//! reclaim asks a registered shrinker how much it could give back and then
//! asks it to give some back.

use crate::kapi::bindings;
use core::{
    ptr::NonNull,
    sync::atomic::{AtomicPtr, Ordering},
};
use kernel::{c_str, ffi::c_ulong, prelude::*};

/// What a shrinker does. Both methods may be called from memory reclaim in
/// any task that allocates: they must not allocate memory with reclaim or
/// wait for anything that might.
pub(crate) trait ShrinkHandler: Send + Sync + 'static {
    /// Objects (kernel pages, for this driver) that could be freed now.
    fn count(&self) -> u64;
    /// Frees about `nr_to_scan` objects; returns how many were freed.
    fn scan(&self, nr_to_scan: u64) -> u64;
}

/// A registered shrinker calling `H`; unregistered (waiting for calls in
/// progress) by [`Shrinker::unregister`] or on drop.
///
/// # Invariants
///
/// `raw` is null once unregistered; otherwise it is a registered shrinker
/// whose `private_data` points to `*handler` and whose callbacks are
/// [`count_trampoline::<H>`] and [`scan_trampoline::<H>`].
pub(crate) struct Shrinker<H: ShrinkHandler> {
    raw: AtomicPtr<bindings::shrinker>,
    /// Reached only through `private_data`; owned here so that it outlives
    /// the registration.
    _handler: KBox<H>,
}

// SAFETY: the shrinker core calls from any task; `H` is `Send + Sync`.
unsafe impl<H: ShrinkHandler> Send for Shrinker<H> {}
// SAFETY: see `Send`; `&self` only reaches `&H` and the atomic pointer.
unsafe impl<H: ShrinkHandler> Sync for Shrinker<H> {}

impl<H: ShrinkHandler> Shrinker<H> {
    /// Registers `handler` as a shrinker named `name` (for
    /// `/sys/kernel/debug/shrinker` with `CONFIG_SHRINKER_DEBUG`).
    pub(crate) fn register(name: &'static CStr, handler: H) -> Result<Self> {
        let handler = KBox::new(handler, GFP_KERNEL)?;
        // SAFETY: `"%s"` takes exactly the one static string passed.
        let raw =
            unsafe { bindings::shrinker_alloc(0, c_str!("%s").as_char_ptr(), name.as_char_ptr()) };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        let data = core::ptr::from_ref::<H>(&handler).cast_mut();
        // `shrinker_alloc` set the defaults, `DEFAULT_SEEKS` among them. The
        // handler lives in its own allocation until after `shrinker_free`
        // (see `unregister`), which waits for callbacks in progress.
        // SAFETY: `raw` is a fresh, not yet registered shrinker that we own,
        // and `data` outlives its registration (see above).
        unsafe {
            let s = raw.as_ptr();
            (*s).count_objects = Some(count_trampoline::<H>);
            (*s).scan_objects = Some(scan_trampoline::<H>);
            (*s).private_data = data.cast();
            bindings::shrinker_register(s);
        }
        // INVARIANT: registered above with this handler and these callbacks.
        Ok(Self {
            raw: AtomicPtr::new(raw.as_ptr()),
            _handler: handler,
        })
    }

    /// Unregisters the shrinker and waits for calls in progress. Idempotent.
    pub(crate) fn unregister(&self) {
        let raw = self.raw.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !raw.is_null() {
            // SAFETY: registered (type invariant); `shrinker_free` takes it
            // off the list, waits until no callback runs, and frees it.
            unsafe { bindings::shrinker_free(raw) };
        }
    }
}

impl<H: ShrinkHandler> Drop for Shrinker<H> {
    fn drop(&mut self) {
        // The handler is freed after this, when no callback can run.
        self.unregister();
    }
}

/// # Safety
///
/// Called by the shrinker core with a shrinker registered by
/// [`Shrinker::register`] for handler type `H`.
unsafe extern "C" fn count_trampoline<H: ShrinkHandler>(
    s: *mut bindings::shrinker,
    _sc: *mut bindings::shrink_control,
) -> c_ulong {
    // SAFETY: `private_data` points to the live handler (type invariant of
    // `Shrinker`): it is freed only after `shrinker_free` returned.
    let h = unsafe { &*(*s).private_data.cast::<H>() };
    h.count() as c_ulong
}

/// # Safety
///
/// As [`count_trampoline`]; `sc` is the core's valid shrink control.
unsafe extern "C" fn scan_trampoline<H: ShrinkHandler>(
    s: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> c_ulong {
    // SAFETY: as in `count_trampoline`; `sc` is valid for the call.
    let (h, nr) = unsafe { (&*(*s).private_data.cast::<H>(), (*sc).nr_to_scan) };
    h.scan(nr as u64) as c_ulong
}
