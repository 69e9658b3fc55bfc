// SPDX-License-Identifier: GPL-2.0

//! Wakeup events: the device's wakeup source stays active (the system does
//! not suspend) from the moment the host asks for something until the
//! driver's work has dealt with it, as the C driver does.
//!
//! The source only exists once user space enables wakeup for the device
//! (`power/wakeup` in sysfs); until then `pm_stay_awake` and `pm_relax` do
//! nothing, as for every driver.

use super::{sync::LockKey, virtio::DeviceRef};
use core::cell::UnsafeCell;
use kernel::{bindings, prelude::*, str::CStr, types::Opaque};

/// Pending events and whether the source is held.
struct State {
    /// One bit per kind of event still to be processed.
    pending: u32,
    /// Whether this value holds the device's wakeup source active.
    awake: bool,
}

/// The wakeup events of one device.
///
/// # Invariants
///
/// `lock` is an initialised, pinned spinlock; `state` is only accessed
/// with it held and interrupts off. `awake` is true exactly when this value
/// owes the device one `pm_relax`.
#[pin_data(PinnedDrop)]
pub(crate) struct WakeupEvents {
    dev: DeviceRef,
    #[pin]
    lock: Opaque<bindings::spinlock_t>,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only reached under the irq-safe spinlock; the device
// reference may be used from any context the PM calls allow.
unsafe impl Send for WakeupEvents {}
// SAFETY: see `Send`.
unsafe impl Sync for WakeupEvents {}

impl WakeupEvents {
    /// Marks `dev` as able to take part in wakeups (user space may then
    /// enable its wakeup source) and returns its event tracker.
    pub(crate) fn new(
        dev: DeviceRef,
        name: &'static CStr,
        key: &'static LockKey,
    ) -> impl PinInit<Self> {
        // SAFETY: the device is live (we hold a reference); this only sets
        // a flag and adds the sysfs attributes.
        unsafe { bindings::device_set_wakeup_capable(dev.raw_dev(), true) };
        pin_init!(Self {
            dev,
            // SAFETY: `slot` is valid for writes and pinned; `name` and
            // `key` are static, as lockdep requires.
            lock <- Opaque::ffi_init(|slot| unsafe {
                bindings::__spin_lock_init(slot, name.as_char_ptr(), key.as_ptr())
            }),
            state: UnsafeCell::new(State {
                pending: 0,
                awake: false,
            }),
        })
    }

    /// Runs `f` on the state under the lock, interrupts off.
    fn with<R>(&self, f: impl FnOnce(&mut State, &DeviceRef) -> R) -> R {
        // SAFETY: initialised lock (type invariant).
        let flags = unsafe { bindings::spin_lock_irqsave(self.lock.get()) };
        // SAFETY: the lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.state.get() }, &self.dev);
        // SAFETY: taken above with these flags.
        unsafe { bindings::spin_unlock_irqrestore(self.lock.get(), flags) };
        r
    }

    /// An event of kind `bit` arrived (any context, interrupts included):
    /// keep the system awake until it is processed.
    pub(crate) fn start(&self, bit: u32) {
        self.with(|s, dev| {
            s.pending |= bit;
            if !s.awake {
                s.awake = true;
                // SAFETY: live device; `pm_stay_awake` takes an irq-safe
                // lock of its own and may be called from any context.
                unsafe { bindings::pm_stay_awake(dev.raw_dev()) };
            }
        })
    }

    /// The work began processing events of kind `bit`.
    pub(crate) fn process(&self, bit: u32) {
        self.with(|s, _| s.pending &= !bit);
    }

    /// The driver is going: drop every pending event and let the system
    /// sleep again.
    pub(crate) fn clear(&self) {
        self.with(|s, dev| {
            s.pending = 0;
            Self::relax_if_idle(s, dev);
        })
    }

    /// The work is done: if no event arrived meanwhile, let the system
    /// sleep again.
    pub(crate) fn finish(&self) {
        self.with(Self::relax_if_idle)
    }

    /// With the lock held: lets the system sleep if nothing is pending.
    fn relax_if_idle(s: &mut State, dev: &DeviceRef) {
        if s.pending == 0 && s.awake {
            s.awake = false;
            // SAFETY: live device; pairs with the `pm_stay_awake` that set
            // `awake` (type invariant).
            unsafe { bindings::pm_relax(dev.raw_dev()) };
        }
    }
}

#[pinned_drop]
impl PinnedDrop for WakeupEvents {
    fn drop(self: Pin<&mut Self>) {
        // Never leave the system held awake by a device that went.
        self.clear();
    }
}
