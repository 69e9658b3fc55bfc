// SPDX-License-Identifier: GPL-2.0

//! Fault knobs that make the host side misbehave on purpose (kernels
//! built for fault injection only).

use super::*;

/// Knobs that make the host side misbehave on purpose, for tests of how a
/// driver copes with a hostile or broken host. Compiled in only on kernels
/// built for fault injection (`CONFIG_FAULT_INJECTION_DEBUG_FS`).
#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
#[derive(Default)]
pub(crate) struct HostFaults {
    /// While non-zero: each buffer the device returns is seen with a used
    /// length of 4096 instead of the real one (one per count).
    pub(crate) odd_used_len: core::sync::atomic::AtomicU32,
    /// While non-zero: right after the next kick the device is broken the
    /// way a transport breaks a device that vanished (`virtio_break_device`),
    /// so the sender is already waiting for it (one per count).
    pub(crate) break_device: core::sync::atomic::AtomicU32,
}

/// The fault knobs of a binding: nothing on kernels without fault injection.
#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
pub(crate) type Faults = Arc<HostFaults>;
/// The fault knobs of a binding: nothing on kernels without fault injection.
#[cfg(not(CONFIG_FAULT_INJECTION_DEBUG_FS))]
pub(crate) type Faults = ();

/// New knobs, all 0.
pub(in crate::kapi::virtio) fn new_faults() -> Result<Faults> {
    #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
    return Ok(Arc::new(HostFaults::default(), GFP_KERNEL)?);
    #[cfg(not(CONFIG_FAULT_INJECTION_DEBUG_FS))]
    Ok(())
}

#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
impl HostFaults {
    /// Whether to inject the fault counted by `knob` now (and count it).
    pub(super) fn take(knob: &core::sync::atomic::AtomicU32) -> bool {
        knob.load(Ordering::Relaxed) != 0
            && knob
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
                .is_ok()
    }
}

#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
impl crate::kapi::debugfs::Knobs for HostFaults {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'static CStr, &'a core::sync::atomic::AtomicU32)) {
        f(kernel::c_str!("inject_odd_used_len"), &self.odd_used_len);
        f(kernel::c_str!("inject_break_device"), &self.break_device);
    }
}
