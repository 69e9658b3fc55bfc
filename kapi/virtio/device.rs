// SPDX-License-Identifier: GPL-2.0

//! The virtio device, in the contexts a driver sees it in.

use super::*;

/// A context of [`Device`].
pub(crate) trait DeviceContext: private::Sealed {}

/// Any reference to a registered device: identity and messages only.
pub(crate) struct Normal;
/// Inside [`Driver::validate`], before negotiation completes: offered
/// features may be cleared. Not `Send` or `Sync`.
pub(crate) struct Validate(PhantomData<*mut ()>);
/// A bound device, possibly in atomic context: negotiated features only.
pub(crate) struct Bound;
/// Inside probe, ready, remove, freeze and restore: the device lock is held
/// and the driver is bound (or binding).
pub(crate) struct Core;

impl private::Sealed for Normal {}
impl private::Sealed for Validate {}
impl private::Sealed for Bound {}
impl private::Sealed for Core {}
impl DeviceContext for Normal {}
impl DeviceContext for Validate {}
impl DeviceContext for Bound {}
impl DeviceContext for Core {}

/// A virtio device (`struct virtio_device`) seen in context `C`.
///
/// # Invariants
///
/// A `&Device<C>` is only created for a registered device that stays valid
/// for the reference's lifetime, in a situation that matches `C` (see the
/// module documentation). Outside [`Validate`], only the virtio core writes
/// `features`: while no driver is bound, and at restore (rewriting the
/// negotiated value, unchanged, while the driver's freezable work is
/// frozen).
#[repr(transparent)]
pub(crate) struct Device<C: DeviceContext = Normal>(
    Opaque<bindings::virtio_device>,
    PhantomData<C>,
);

// SAFETY: a reference to a registered device may be used and dropped on any
// thread; `Normal` offers nothing that needs more (as `kernel::device`).
unsafe impl Send for Device<Normal> {}
// SAFETY: see `Send`.
unsafe impl Sync for Device<Normal> {}
// SAFETY: `Bound` only reads fields that do not change while bound.
unsafe impl Sync for Device<Bound> {}
// SAFETY: `Core` callbacks run under the device lock; what is shared with
// other threads through `&Device<Core>` is what `Bound` offers.
unsafe impl Sync for Device<Core> {}

impl<C: DeviceContext> Device<C> {
    /// # Safety
    ///
    /// `ptr` must be a registered device that stays valid for `'a`, in a
    /// situation matching `C`.
    pub(super) unsafe fn from_raw<'a>(ptr: *mut bindings::virtio_device) -> &'a Self {
        // SAFETY: transparent wrapper; validity per the contract.
        unsafe { &*ptr.cast::<Self>() }
    }

    pub(super) fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// The embedded generic device, for messages and keep-alive references
    /// (`ARef<kernel::device::Device>`).
    pub(crate) fn as_dev(&self) -> &kernel::device::Device {
        // SAFETY: `dev` is embedded in the valid virtio device (type
        // invariant), so it lives as long as `self`.
        unsafe { kernel::device::Device::as_ref(&raw mut (*self.as_raw()).dev) }
    }

    /// The bus index `N` of `virtioN`.
    pub(crate) fn index(&self) -> i32 {
        // SAFETY: `self` is a registered device, valid while borrowed (type
        // invariant); `index` is set before the device is registered and
        // never changes.
        unsafe { (*self.as_raw()).index }
    }
}

impl<C: DeviceContext> crate::kapi::print::AsDevice for Device<C> {
    fn as_device(&self) -> &kernel::device::Device {
        self.as_dev()
    }
}

// SAFETY: the refcount of a virtio device is that of its embedded `struct
// device`, whose release frees the virtio device.
unsafe impl AlwaysRefCounted for Device<Normal> {
    fn inc_ref(&self) {
        // SAFETY: a shared reference means the count is not zero.
        unsafe { bindings::get_device(&raw mut (*self.as_raw()).dev) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: the caller gives up a reference it holds.
        unsafe {
            bindings::put_device(&raw mut (*obj.as_ptr().cast::<bindings::virtio_device>()).dev)
        };
    }
}

impl Device<Validate> {
    /// Whether the device offers feature `f` (among those the driver lists).
    pub(crate) fn offers(&self, f: Feature) -> bool {
        // SAFETY: `self` is a registered device, valid while borrowed (type
        // invariant); during validate only this thread (the bus, then us)
        // touches `features`.
        unsafe { (*self.as_raw()).features & f.mask() != 0 }
    }

    /// Refuses feature `f`: it will not be negotiated.
    pub(crate) fn clear_feature(&self, f: Feature) {
        // `Device<Validate>` is neither `Send` nor `Sync`, and the bus is
        // waiting for validate to return: nobody else reads or writes the
        // word meanwhile.
        // SAFETY: `self` is valid while borrowed (type invariant); see
        // above for why the plain write races with nothing.
        unsafe { (*self.as_raw()).features &= !f.mask() };
    }
}

impl Device<Bound> {
    /// The negotiated feature bits.
    pub(crate) fn features(&self) -> u64 {
        // SAFETY: `self` is valid while borrowed, and the word does not
        // change while the driver is bound (type invariant).
        unsafe { (*self.as_raw()).features }
    }

    /// Whether feature `f` was negotiated.
    pub(crate) fn has_feature(&self, f: Feature) -> bool {
        self.features() & f.mask() != 0
    }
}

impl Device<Core> {
    pub(super) fn binding(&self) -> &Binding {
        // SAFETY: in a `Core` callback `priv` is the binding (set before the
        // driver sees the device, cleared after its last callback).
        unsafe { &*(*self.as_raw()).priv_.cast::<Binding>() }
    }

    /// A handle on the device's config space with layout `L`, valid while
    /// the driver stays bound (reads and writes fail with `ENODEV` after).
    pub(crate) fn config<L: ConfigLayout>(&self) -> Result<Config<L>> {
        // SAFETY: `self` is valid while borrowed (type invariant); `id` is
        // set before the device is registered and never changes.
        let id = unsafe { (*self.as_raw()).id.device };
        if id != L::DEVICE_ID {
            return Err(EINVAL);
        }
        Ok(Config {
            // SAFETY: in a `Core` callback the device is bound.
            bind: unsafe { Binding::arc_of(self.as_raw()) },
            _l: PhantomData,
        })
    }

    /// The driver's debugfs directory (`/sys/kernel/debug/<driver>/`), for
    /// per-device entries under it (a directory that does not exist when
    /// debugfs is off or refused it: entries under it then do not either).
    pub(crate) fn debugfs_dir(&self) -> Option<Arc<Dir>> {
        self.binding().debugfs.clone()
    }

    /// The fault-injection knobs of this binding's queues (see
    /// [`queue::HostFaults`]), for tests of hostile-host handling.
    #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
    pub(crate) fn fault_knobs(&self) -> Arc<queue::HostFaults> {
        self.binding().faults.clone()
    }
}

impl core::ops::Deref for Device<Core> {
    type Target = Device<Bound>;
    fn deref(&self) -> &Device<Bound> {
        // SAFETY: `Core` allows everything `Bound` does; same layout.
        unsafe { Device::from_raw(self.as_raw()) }
    }
}

impl core::ops::Deref for Device<Bound> {
    type Target = Device<Normal>;
    fn deref(&self) -> &Device<Normal> {
        // SAFETY: any context allows what `Normal` does; same layout.
        unsafe { Device::from_raw(self.as_raw()) }
    }
}

impl core::ops::Deref for Device<Validate> {
    type Target = Device<Normal>;
    fn deref(&self) -> &Device<Normal> {
        // SAFETY: as above.
        unsafe { Device::from_raw(self.as_raw()) }
    }
}
