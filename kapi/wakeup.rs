// SPDX-License-Identifier: GPL-2.0

//! Wakeup events: a device's wakeup source stays active (the system does
//! not suspend) from the moment an event arrives until the driver has dealt
//! with it.
//!
//! The source only exists once user space enables wakeup for the device
//! (`power/wakeup` in sysfs); until then `pm_stay_awake` and `pm_relax` do
//! nothing, as for every driver.

use super::sync::SpinLockIrq;
use crate::kapi::bindings;
use kernel::{device::Device, prelude::*, types::ARef};

use super::print::raw_device as raw;

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
/// `awake` is true exactly when this value owes the device one `pm_relax`.
#[pin_data(PinnedDrop)]
pub(crate) struct WakeupEvents {
    dev: ARef<Device>,
    #[pin]
    state: SpinLockIrq<State>,
}

impl WakeupEvents {
    /// Marks `dev` as able to take part in wakeups (user space may then
    /// enable its wakeup source) and returns its event tracker.
    pub(crate) fn new(dev: ARef<Device>) -> impl PinInit<Self> {
        // SAFETY: the device is live (we hold a reference); this only sets
        // a flag and adds the sysfs attributes.
        unsafe { bindings::device_set_wakeup_capable(raw(&dev), true) };
        pin_init!(Self {
            dev,
            state <- new_spinlock_irq!(
                State {
                    pending: 0,
                    awake: false,
                },
                "WakeupEvents::state"
            ),
        })
    }

    /// An event of kind `bit` arrived (any context, interrupts included):
    /// keep the system awake until it is processed.
    pub(crate) fn start(&self, bit: u32) {
        self.state.with(|s| {
            s.pending |= bit;
            if !s.awake {
                s.awake = true;
                // SAFETY: live device; `pm_stay_awake` takes an irq-safe
                // lock of its own and may be called from any context.
                unsafe { bindings::pm_stay_awake(raw(&self.dev)) };
            }
        })
    }

    /// The driver began processing events of kind `bit`.
    pub(crate) fn process(&self, bit: u32) {
        self.state.with(|s| s.pending &= !bit)
    }

    /// The driver is going: drop every pending event and let the system
    /// sleep again.
    pub(crate) fn clear(&self) {
        self.state.with(|s| {
            s.pending = 0;
            self.relax_if_idle(s);
        })
    }

    /// The driver is done: if no event arrived meanwhile, let the system
    /// sleep again.
    pub(crate) fn finish(&self) {
        self.state.with(|s| self.relax_if_idle(s))
    }

    /// With the lock held: lets the system sleep if nothing is pending.
    fn relax_if_idle(&self, s: &mut State) {
        if s.pending == 0 && s.awake {
            s.awake = false;
            // SAFETY: live device; pairs with the `pm_stay_awake` that set
            // `awake` (type invariant).
            unsafe { bindings::pm_relax(raw(&self.dev)) };
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
