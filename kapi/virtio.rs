// SPDX-License-Identifier: GPL-2.0

//! Virtio drivers: registration, the device, its config space and its
//! virtqueues.
//!
//! A driver implements [`Driver`] and keeps a [`Registration`] for as long as
//! it wants to be bound. The bus calls `probe` for each matching device; the
//! data it returns is owned by the binding until `remove` has run.

use super::sync::Completion;
use core::{
    ffi::c_void,
    marker::PhantomData,
    ptr::NonNull,
    sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering},
};
use kernel::{
    bindings,
    error::{from_result, to_result},
    prelude::*,
    sync::{Arc, ArcBorrow},
    types::Opaque,
    ThisModule,
};

/// Device IDs (`include/uapi/linux/virtio_ids.h`).
pub(crate) mod id {
    use kernel::bindings;
    /// The memory balloon.
    pub(crate) const BALLOON: u32 = bindings::VIRTIO_ID_BALLOON;
}

/// Feature bits (`include/uapi/linux/virtio_balloon.h`,
/// `virtio_config.h`, `virtio_ring.h`).
pub(crate) mod feature {
    use kernel::bindings;
    pub(crate) const BALLOON_MUST_TELL_HOST: u32 = bindings::VIRTIO_BALLOON_F_MUST_TELL_HOST;
    pub(crate) const BALLOON_STATS_VQ: u32 = bindings::VIRTIO_BALLOON_F_STATS_VQ;
    pub(crate) const BALLOON_DEFLATE_ON_OOM: u32 = bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
    pub(crate) const BALLOON_FREE_PAGE_HINT: u32 = bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT;
    pub(crate) const BALLOON_PAGE_POISON: u32 = bindings::VIRTIO_BALLOON_F_PAGE_POISON;
    pub(crate) const BALLOON_REPORTING: u32 = bindings::VIRTIO_BALLOON_F_REPORTING;
    /// `VIRTIO_RING_F_INDIRECT_DESC` (uapi/linux/virtio_ring.h, not in the
    /// 6.12 bindings).
    pub(crate) const RING_INDIRECT_DESC: u32 = 28;
    pub(crate) const ACCESS_PLATFORM: u32 = bindings::VIRTIO_F_ACCESS_PLATFORM;
}

/// A virtio device (`struct virtio_device`).
///
/// # Invariants
///
/// A `&Device` is only created for a device that is registered with the
/// virtio bus and stays valid for the reference's lifetime: the bus holds it
/// while a driver callback runs, and [`DeviceRef`] holds a reference count.
#[repr(transparent)]
pub(crate) struct Device(Opaque<bindings::virtio_device>);

// SAFETY: the C side synchronises access to a virtio device; the methods
// here are the kind the C drivers call from any thread.
unsafe impl Send for Device {}
// SAFETY: see `Send`.
unsafe impl Sync for Device {}

impl Device {
    /// # Safety
    ///
    /// `ptr` must point to a registered virtio device that stays valid for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::virtio_device) -> &'a Self {
        // SAFETY: `Device` is a transparent wrapper of `virtio_device`; the
        // caller guarantees validity for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// The embedded `struct device`, for messages.
    pub(crate) fn raw_dev(&self) -> *mut bindings::device {
        // SAFETY: `as_raw` is valid (type invariant); this only computes the
        // address of a field.
        unsafe { core::ptr::addr_of_mut!((*self.as_raw()).dev) }
    }

    /// The bus index `N` of `virtioN`.
    pub(crate) fn index(&self) -> i32 {
        // SAFETY: valid device (type invariant); `index` is set before the
        // device is registered and never changes.
        unsafe { (*self.as_raw()).index }
    }

    /// Whether feature `bit` was negotiated (or, during `validate`, offered).
    ///
    /// Reads the feature word directly: C's `virtio_has_feature` BUG()s on
    /// a device bit the driver does not list, and asking must never crash.
    pub(crate) fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features() & (1u64 << bit) != 0
    }

    /// The negotiated feature bits.
    pub(crate) fn features(&self) -> u64 {
        // SAFETY: valid device (type invariant); the bus writes `features`
        // only before `probe`.
        unsafe { (*self.as_raw()).features }
    }

    /// Reads a little-endian `u32` field of the device's config space, with
    /// one 32-bit access (as the spec asks for 32-bit fields), retried until
    /// the config generation is stable.
    pub(crate) fn read_config_le32(&self, offset: usize) -> u32 {
        let vdev = self.as_raw();
        let mut bytes = [0u8; 4];
        // SAFETY: valid device (type invariant) whose `config` ops are set by
        // the transport; `get` exists (checked in `probe_callback` before the
        // driver sees the device). `bytes` is valid for 4 bytes of writes.
        unsafe {
            let ops = (*vdev).config;
            let Some(get) = (*ops).get else {
                return 0;
            };
            let generation = (*ops).generation;
            loop {
                let before = generation.map_or(0, |g| g(vdev));
                get(vdev, offset as u32, bytes.as_mut_ptr().cast(), 4);
                if generation.map_or(0, |g| g(vdev)) == before {
                    break;
                }
            }
        }
        u32::from_le_bytes(bytes)
    }

    /// Writes a little-endian `u32` field of the device's config space, with
    /// one 32-bit access.
    pub(crate) fn write_config_le32(&self, offset: usize, value: u32) {
        let vdev = self.as_raw();
        let bytes = value.to_le_bytes();
        // SAFETY: valid device with config ops (see `read_config_le32`);
        // `bytes` is valid for 4 bytes of reads. Transports without `set`
        // have a read-only config space: nothing to write then.
        unsafe {
            if let Some(set) = (*(*vdev).config).set {
                set(vdev, offset as u32, bytes.as_ptr().cast(), 4);
            }
        }
    }

    /// Makes the device live (`DRIVER_OK`): its virtqueues may be used and
    /// it may raise config interrupts from now on.
    pub(crate) fn ready(&self) {
        // SAFETY: valid device; callers set the virtqueues up first.
        unsafe { bindings::virtio_device_ready(self.as_raw()) };
    }

    /// Clears feature `bit` from the features offered to the driver. Only
    /// meaningful in [`Driver::validate`], before negotiation completes.
    pub(crate) fn clear_feature(&self, bit: u32) {
        // SAFETY: valid device (type invariant); during `validate` the bus
        // expects drivers to clear bits they cannot accept.
        unsafe { bindings::__virtio_clear_bit(self.as_raw(), bit) }
    }

    /// A counted reference to this device.
    pub(crate) fn get_ref(&self) -> DeviceRef {
        // SAFETY: the device is valid (type invariant); `get_device` takes a
        // reference that `DeviceRef::drop` releases.
        unsafe { bindings::get_device(self.raw_dev()) };
        // INVARIANT: a reference was just taken.
        DeviceRef(NonNull::from(self))
    }
}

/// A reference-counted handle on a virtio device: the `struct virtio_device`
/// stays in memory for as long as the handle exists.
///
/// # Invariants
///
/// Holds one reference on the device's `struct device` (`get_device`).
pub(crate) struct DeviceRef(NonNull<Device>);

// SAFETY: device references may be taken and dropped on any thread.
unsafe impl Send for DeviceRef {}
// SAFETY: `Device` is `Sync`.
unsafe impl Sync for DeviceRef {}

impl core::ops::Deref for DeviceRef {
    type Target = Device;
    fn deref(&self) -> &Device {
        // SAFETY: the held reference keeps the device valid (type invariant).
        unsafe { self.0.as_ref() }
    }
}

impl Drop for DeviceRef {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `Device::get_ref`.
        unsafe { bindings::put_device(self.raw_dev()) };
    }
}

/// A virtio driver.
pub(crate) trait Driver: Sized + Send + Sync + 'static {
    /// Driver name, as in `/sys/bus/virtio/drivers/<NAME>`.
    const NAME: &'static CStr;
    /// Device ID this driver binds to (`VIRTIO_ID_*`).
    const DEVICE_ID: u32;
    /// Feature bits the driver understands.
    const FEATURES: &'static [u32];

    /// Called before feature negotiation completes: may clear offered bits.
    fn validate(_dev: &Device) -> Result {
        Ok(())
    }

    /// Binds to `dev`: negotiated features are known, the device is not yet
    /// live (`DRIVER_OK` is set right after `probe` returns).
    fn probe(dev: &Device) -> Result<KBox<Self>>;

    /// Called once the device is live, right after `probe`.
    fn ready(&self, _dev: &Device) {}

    /// The device's config space changed. Runs in interrupt context.
    fn config_changed(&self, dev: &Device);

    /// Unbinds from `dev`. The data is dropped when this returns.
    fn remove(&self, dev: &Device);

    /// The system is going to sleep: the driver's freezable work is already
    /// frozen. Give resources back and let go of the virtqueues; the device
    /// is reset afterwards.
    fn freeze(&self, _dev: &Device) -> Result {
        Ok(())
    }

    /// The system woke up: set the virtqueues up again. The device is made
    /// live after this returns (unless the driver did it), so a driver that
    /// needs the device live right away calls [`Device::ready`].
    fn restore(&self, _dev: &Device) -> Result {
        Ok(())
    }
}

/// Storage the bus points into while the driver is registered.
///
/// # Invariants
///
/// `drv` points into `ids` and `T::FEATURES` (static); the whole struct is
/// pinned, so these pointers stay valid while it is registered.
#[pin_data]
struct DriverStorage {
    #[pin]
    drv: Opaque<bindings::virtio_driver>,
    ids: [bindings::virtio_device_id; 2],
}

/// Registration of driver `T` with the virtio bus; unregisters on drop.
///
/// # Invariants
///
/// `storage.drv` is registered with the bus for the lifetime of `self`.
pub(crate) struct Registration<T: Driver> {
    storage: Pin<KBox<DriverStorage>>,
    _t: PhantomData<T>,
}

// SAFETY: the registration is only touched at creation and drop; the bus
// serialises its own accesses to the driver struct.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: no `&self` methods.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers `T` with the virtio bus on behalf of `module`.
    pub(crate) fn new(module: &'static ThisModule) -> Result<Self> {
        let storage = KBox::pin(
            DriverStorage {
                drv: Opaque::uninit(),
                ids: [
                    bindings::virtio_device_id {
                        device: T::DEVICE_ID,
                        vendor: bindings::VIRTIO_DEV_ANY_ID,
                    },
                    bindings::virtio_device_id {
                        device: 0,
                        vendor: 0,
                    },
                ],
            },
            GFP_KERNEL,
        )?;
        // The struct is pinned; only plain data is written through this
        // reference, nothing is moved out.
        let ids = storage.ids.as_ptr();
        let drv = storage.drv.get();
        // SAFETY: `drv` is valid for writes and not yet shared with C; an
        // all-zero `virtio_driver` is valid (null pointers and `None`s).
        unsafe {
            drv.write(core::mem::zeroed());
            (*drv).driver.name = T::NAME.as_char_ptr();
            (*drv).id_table = ids;
            (*drv).feature_table = T::FEATURES.as_ptr();
            (*drv).feature_table_size = T::FEATURES.len() as u32;
            (*drv).validate = Some(validate_callback::<T>);
            (*drv).probe = Some(probe_callback::<T>);
            (*drv).remove = Some(remove_callback::<T>);
            (*drv).config_changed = Some(config_changed_callback::<T>);
            #[cfg(CONFIG_PM_SLEEP)]
            {
                (*drv).freeze = Some(freeze_callback::<T>);
                (*drv).restore = Some(restore_callback::<T>);
            }
        }
        // SAFETY: `drv` is fully initialised and pinned; `module` is this
        // module. On success the bus may call the callbacks at once.
        to_result(unsafe { bindings::__register_virtio_driver(drv, module.as_ptr()) })?;
        // INVARIANT: registered just above.
        Ok(Self {
            storage,
            _t: PhantomData,
        })
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered (type invariant); unregistering unbinds every
        // device (running `remove`) before it returns.
        unsafe { bindings::unregister_virtio_driver(self.storage.drv.get()) };
    }
}

/// # Safety
///
/// Called by the virtio bus with a valid device.
unsafe extern "C" fn validate_callback<T: Driver>(
    vdev: *mut bindings::virtio_device,
) -> core::ffi::c_int {
    // SAFETY: the bus passes a registered device valid for the call.
    let dev = unsafe { Device::from_raw(vdev) };
    from_result(|| {
        T::validate(dev)?;
        Ok(0)
    })
}

/// Most virtqueues a device may have with this layer.
const MAX_VQS: usize = 8;

/// What `vdev->priv` points to while a driver is bound: the driver data and
/// the per-queue state the interrupt callbacks reach. (`vq->priv` is not
/// ours: the transport keeps its notification address there.)
///
/// # Invariants
///
/// `data` is null or a `KBox<T>` of the bound driver, turned into a raw
/// pointer; `queues[i]` is null or the pinned `QueueShared` of the live
/// virtqueue with index `i`.
struct DevPriv {
    data: AtomicPtr<c_void>,
    queues: [AtomicPtr<QueueShared>; MAX_VQS],
    /// Set once the driver gave up on a device that asked to be reset.
    gave_up: AtomicBool,
    faults: Arc<HostFaults>,
}

impl DevPriv {
    fn new() -> Result<Self> {
        Ok(Self {
            data: AtomicPtr::new(core::ptr::null_mut()),
            queues: Default::default(),
            gave_up: AtomicBool::new(false),
            faults: Arc::new(HostFaults::default(), GFP_KERNEL)?,
        })
    }
}

/// Knobs that make the host side misbehave on purpose, for the tests of
/// how the driver copes with a hostile or broken host
/// (`tests/test_e2e_hostile.py`). The driver shows them in debugfs only on
/// kernels with `CONFIG_FAULT_INJECTION_DEBUG_FS`; elsewhere they stay 0.
#[derive(Default)]
pub(crate) struct HostFaults {
    /// While non-zero: each buffer the device returns is seen with a used
    /// length of 4096 instead of the real one (one per count).
    pub(crate) odd_used_len: AtomicU32,
    /// While non-zero: right after the next kick the device is broken the
    /// way a transport breaks a device that vanished (`virtio_break_device`),
    /// so the sender is already waiting for it (one per count).
    pub(crate) break_device: AtomicU32,
    /// While non-zero: the next free page hint command id goes out 2 bytes
    /// long instead of 4. QEMU answers that by marking its device broken
    /// (`DEVICE_NEEDS_RESET`) and answering nothing any more.
    pub(crate) short_hint_cmd: AtomicU32,
}

impl HostFaults {
    /// Whether to inject the fault counted by `knob` now (and count it).
    fn take(knob: &AtomicU32) -> bool {
        knob.load(Ordering::Relaxed) != 0
            && knob
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
                .is_ok()
    }
}

impl super::debugfs::Knobs for HostFaults {
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &AtomicU32)) {
        f(kernel::c_str!("inject_odd_used_len"), &self.odd_used_len);
        f(kernel::c_str!("inject_break_device"), &self.break_device);
        f(
            kernel::c_str!("inject_short_hint_cmd"),
            &self.short_hint_cmd,
        );
    }
}

impl Device {
    /// The device's fault-injection knobs (see [`HostFaults`]), while bound.
    pub(crate) fn host_faults(&self) -> Option<Arc<HostFaults>> {
        self.dev_priv().map(|dp| dp.faults.clone())
    }

    /// The bound driver's [`DevPriv`], with a new reference.
    fn dev_priv(&self) -> Option<Arc<DevPriv>> {
        // SAFETY: valid device; `priv` is null or an `Arc<DevPriv>` turned
        // into a raw pointer by `probe_callback`, alive while bound.
        let ptr = unsafe { (*self.as_raw()).priv_ }.cast::<DevPriv>();
        if ptr.is_null() {
            return None;
        }
        // SAFETY: `ptr` came from `Arc::into_raw` and the reference that
        // `priv` holds is still counted: borrow it and take a new one.
        let borrowed = unsafe { ArcBorrow::from_raw(ptr) };
        Some(borrowed.into())
    }
}

/// The driver data of a bound device, if `probe` has returned.
///
/// # Safety
///
/// `vdev` must be valid; the result may only be used while the device
/// stays bound and `remove` has not started.
unsafe fn driver_data<'a, T: Driver>(vdev: *mut bindings::virtio_device) -> Option<&'a T> {
    // SAFETY: per the function's contract `priv` is null or our `DevPriv`.
    let dp = unsafe { (*vdev).priv_ }.cast::<DevPriv>();
    if dp.is_null() {
        return None;
    }
    // SAFETY: `dp` is live while bound; `data` is null or a `KBox<T>`.
    let data = unsafe { (*dp).data.load(Ordering::Acquire) }.cast::<T>();
    // SAFETY: freed only after `remove`, per the function's contract.
    (!data.is_null()).then(|| unsafe { &*data })
}

/// # Safety
///
/// Called by the virtio bus with a valid device that has no driver data yet.
unsafe extern "C" fn probe_callback<T: Driver>(
    vdev: *mut bindings::virtio_device,
) -> core::ffi::c_int {
    // SAFETY: the bus passes a registered device valid for the call.
    let dev = unsafe { Device::from_raw(vdev) };
    from_result(|| {
        // SAFETY: valid device; reading a field.
        if !unsafe { bindings::virtio_config_has_get(vdev) } {
            dev_err!(dev, "config space access is not available\n");
            return Err(EINVAL);
        }
        let dp = Arc::new(DevPriv::new()?, GFP_KERNEL)?;
        let dp_raw = Arc::into_raw(dp.clone());
        // SAFETY: `priv` belongs to the driver; from here to `remove` it
        // holds one reference to `dp` (see `Device::dev_priv`).
        unsafe { (*vdev).priv_ = dp_raw.cast_mut().cast::<c_void>() };
        let data = match T::probe(dev) {
            Ok(data) => data,
            Err(e) => {
                // SAFETY: undo the above; `probe` failed, so nothing else
                // (no queue, no callback) uses `priv` any more.
                unsafe {
                    (*vdev).priv_ = core::ptr::null_mut();
                    drop(Arc::from_raw(dp_raw));
                }
                return Err(e);
            }
        };
        let ptr = KBox::into_raw(data);
        dp.data.store(ptr.cast::<c_void>(), Ordering::Release);
        // SAFETY: valid device with its virtqueues set up by `probe`.
        unsafe { bindings::virtio_device_ready(vdev) };
        // SAFETY: `ptr` came from `KBox::into_raw` just above and is freed
        // only in `remove_callback`, which the bus cannot run concurrently
        // with `probe`.
        let data = unsafe { &*ptr };
        data.ready(dev);
        Ok(0)
    })
}

/// # Safety
///
/// Called by the virtio bus for a device whose `probe` succeeded.
unsafe extern "C" fn remove_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: the bus passes a bound device valid for the call.
    let dev = unsafe { Device::from_raw(vdev) };
    let Some(dp) = dev.dev_priv() else {
        return;
    };
    // Config callbacks are disabled by the core before `remove`; nothing
    // else reads `data` once it is null.
    let ptr = dp
        .data
        .swap(core::ptr::null_mut(), Ordering::AcqRel)
        .cast::<T>();
    if !ptr.is_null() {
        // SAFETY: `ptr` came from `KBox::into_raw` in `probe_callback` and
        // is live until the `from_raw` below.
        T::remove(unsafe { &*ptr }, dev);
        // SAFETY: as above; dropping the data deletes its virtqueues.
        drop(unsafe { KBox::from_raw(ptr) });
    }
    // SAFETY: drop the reference `priv` held (see `probe_callback`).
    unsafe {
        let raw = (*vdev).priv_.cast::<DevPriv>();
        (*vdev).priv_ = core::ptr::null_mut();
        drop(Arc::from_raw(raw));
    }
}

/// # Safety
///
/// Called by the virtio core, in interrupt context, for a bound device.
unsafe extern "C" fn config_changed_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: the core passes a bound device valid for the call.
    let dev = unsafe { Device::from_raw(vdev) };
    // SAFETY: config callbacks are disabled by the core before `remove`
    // frees the data. Before `probe` returned there is no data yet: the
    // driver reads the config in `ready` anyway.
    if let Some(data) = unsafe { driver_data::<T>(vdev) } {
        T::config_changed(data, dev);
    }
}

/// # Safety
///
/// Called by the virtio core for a bound device while the system suspends.
#[cfg(CONFIG_PM_SLEEP)]
unsafe extern "C" fn freeze_callback<T: Driver>(
    vdev: *mut bindings::virtio_device,
) -> core::ffi::c_int {
    // SAFETY: per this function's contract.
    unsafe { pm_callback::<T>(vdev, T::freeze) }
}

/// # Safety
///
/// Called by the virtio core for a bound device while the system resumes.
#[cfg(CONFIG_PM_SLEEP)]
unsafe extern "C" fn restore_callback<T: Driver>(
    vdev: *mut bindings::virtio_device,
) -> core::ffi::c_int {
    // SAFETY: per this function's contract.
    unsafe { pm_callback::<T>(vdev, T::restore) }
}

/// Runs a system-sleep step `step` of the driver bound to `vdev`.
///
/// # Safety
///
/// `vdev` must be a bound device, and the call must come from the virtio
/// core's freeze or restore, which the device lock serialises with remove.
#[cfg(CONFIG_PM_SLEEP)]
unsafe fn pm_callback<T: Driver>(
    vdev: *mut bindings::virtio_device,
    step: fn(&T, &Device) -> Result,
) -> core::ffi::c_int {
    // SAFETY: the core passes a bound device valid for the call.
    let dev = unsafe { Device::from_raw(vdev) };
    // SAFETY: the data is not freed while the device lock is held.
    match unsafe { driver_data::<T>(vdev) } {
        Some(data) => from_result(|| step(data, dev).map(|()| 0)),
        None => 0,
    }
}

/// Called, in interrupt context, when the device returns buffers on a
/// queue; for queues the host drives (like the balloon's stats queue).
pub(crate) trait UsedHandler: Send + Sync {
    /// Must not sleep.
    fn used(&self);
}

/// How the driver wants a virtqueue set up.
pub(crate) struct QueueSpec {
    /// Queue name, for `/proc/interrupts` and debugging.
    pub(crate) name: &'static CStr,
    /// Called when the device returns buffers (besides waking a sender).
    pub(crate) on_used: Option<Arc<dyn UsedHandler>>,
    /// Whether the driver uses this queue at all. An unused queue is not
    /// allocated; the driver still finds the others at their spec position
    /// in [`Virtqueues::get`], although the transport numbers them densely.
    pub(crate) used: bool,
    /// Whether the device interrupts when it returns buffers. Without, the
    /// driver polls ([`Virtqueue::reap`]) and never sleeps on the queue.
    pub(crate) interrupts: bool,
}

/// Per-queue state the interrupt callback reaches through `vq->priv`.
#[pin_data]
struct QueueShared {
    #[pin]
    used: Completion,
    on_used: Option<Arc<dyn UsedHandler>>,
}

/// A virtqueue of a device, for synchronous host round trips: buffers go
/// out, the caller sleeps until the device has used them all.
///
/// # Invariants
///
/// `vq` is a live virtqueue of a device whose driver holds the owning
/// [`Virtqueues`], and `(*vq).priv` points to `shared`.
pub(crate) struct Virtqueue {
    vq: NonNull<bindings::virtqueue>,
    shared: Pin<KBox<QueueShared>>,
    /// A buffer handed to the device with [`Virtqueue::post`], kept here
    /// (so alive and unchanged) until the device returns it.
    posted: Option<OutBuf>,
    /// The command ids of free page hinting ([`Virtqueue::hint_cmd`]), in
    /// heap memory that lives as long as the queue.
    ids: KBox<[u32; 2]>,
    /// The device's shared state (fault knobs, whether it was given up on).
    dp: Arc<DevPriv>,
}

/// Which command of a free page hinting run [`Virtqueue::hint_cmd`] sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum HintCmd {
    /// The id that opens a run.
    Start = 0,
    /// The stop id that closes it.
    Stop = 1,
}

// SAFETY: a virtqueue may be driven from any thread as long as accesses are
// serialised, which `&mut self` on every operation guarantees.
unsafe impl Send for Virtqueue {}

/// A buffer the device reads: heap memory (never the stack, which may not be
/// DMA-able), filled by the driver.
pub(crate) struct OutBuf {
    bytes: KVec<u8>,
}

impl OutBuf {
    /// A zeroed buffer of `len` bytes.
    pub(crate) fn new(len: usize) -> Result<Self> {
        Ok(Self {
            bytes: KVec::from_elem(0u8, len, GFP_KERNEL)?,
        })
    }

    /// The contents, to fill.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Virtqueue {
    /// Number of descriptors in the ring.
    pub(crate) fn ring_size(&self) -> u32 {
        // SAFETY: live virtqueue (type invariant).
        unsafe { bindings::virtqueue_get_vring_size(self.vq.as_ptr()) }
    }

    /// Sends the parts `(offset, len)` of `buf` listed in `msgs`, one
    /// descriptor each, kicks the device once and sleeps until it has used
    /// every one.
    ///
    /// At most the ring's size go out at once; [`Sent::count`] says how
    /// many did, and the caller sends the rest in another call. The device
    /// only reads these buffers, so it must report a used length of 0;
    /// other lengths are counted in [`Sent::odd_lengths`] and otherwise
    /// ignored. Fails with `EIO`, without waiting further, if the ring is
    /// broken (the device misbehaved or is gone).
    pub(crate) fn send(&mut self, buf: &OutBuf, msgs: &[(usize, usize)]) -> Result<Sent> {
        let mut added = 0usize;
        for &(offset, len) in msgs {
            let Some(part) = buf.bytes.get(offset..offset.saturating_add(len)) else {
                return Err(EINVAL);
            };
            if part.is_empty() {
                continue;
            }
            // If the wait below fails (broken ring, a device that gave up), a
            // late read by the device cannot corrupt guest memory (the host
            // may read all of it anyway); callers stop writing to the buffer
            // after a failure.
            // SAFETY: `part` is heap memory the device only reads; we wait
            // below until it returned it (or failed, see above).
            if let Err(e) = unsafe { self.add_out(part) } {
                if added == 0 {
                    return Err(e);
                }
                break;
            }
            added += 1;
        }
        self.quiet();
        self.kick();
        let mut sent = Sent {
            count: added,
            odd_lengths: 0,
        };
        for _ in 0..added {
            if self.wait_used()? != 0 {
                sent.odd_lengths += 1;
            }
        }
        Ok(sent)
    }

    /// Hands `buf` (its first `len` bytes) to the device and kicks it,
    /// without waiting: for a queue the host answers when it likes (the
    /// stats queue). The buffer stays with the queue until
    /// [`Virtqueue::take_used`] gives it back. One buffer at a time.
    pub(crate) fn post(&mut self, buf: OutBuf, len: usize) -> Result {
        if self.posted.is_some() {
            return Err(EBUSY);
        }
        let len = len.min(buf.bytes.len());
        // SAFETY: `buf` is heap memory that stays alive and untouched in
        // `self.posted` until the device returns it (`take_used`) or the
        // queue is deleted (after a reset).
        unsafe { self.add_out(&buf.bytes[..len]) }?;
        self.posted = Some(buf);
        self.kick();
        Ok(())
    }

    /// The posted buffer, if the device has returned it.
    pub(crate) fn take_used(&mut self) -> Option<OutBuf> {
        self.get_used()?;
        self.posted.take()
    }

    /// Hands the reported free page ranges to the device (as device-writable
    /// buffers, one descriptor each, without allocating), kicks it and
    /// sleeps until the device has them. The queue must have room for
    /// [`super::reporting::CAPACITY`] descriptors.
    pub(crate) fn send_reported(
        &mut self,
        ranges: &super::reporting::ReportedRanges<'_>,
    ) -> Result {
        let (sg, nents) = ranges.raw();
        let token = self.vq.as_ptr().cast::<c_void>();
        // `sg` holds `nents` entries of isolated free pages for the duration
        // of this call (invariant of `ReportedRanges`).
        // SAFETY: see above; we wait below until the device has returned them.
        // Live virtqueue, serialised by `&mut self`.
        let ret = unsafe {
            bindings::virtqueue_add_inbuf(
                self.vq.as_ptr(),
                sg,
                nents,
                token,
                bindings::GFP_NOWAIT | bindings::__GFP_NOWARN,
            )
        };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        self.quiet();
        self.kick();
        self.wait_used().map(|_| ())
    }

    /// Free page hinting: hands the device command id `id` (as a
    /// little-endian `u32`) and kicks it, without waiting. Each kind of
    /// command has its own slot, as one of each may be on the ring.
    pub(crate) fn hint_cmd(&mut self, cmd: HintCmd, id: u32) -> Result {
        let slot = &mut self.ids[cmd as usize];
        *slot = u32::to_le(id);
        let bytes = core::ptr::from_mut::<u32>(slot).cast::<u8>();
        let len = if HostFaults::take(&self.dp.faults.short_hint_cmd) {
            2
        } else {
            4
        };
        // The slot is heap memory owned by this queue, which is deleted
        // (after a device reset) before the memory goes; the device only
        // reads it. It is rewritten only by the next command of the same
        // kind, after the device returned this one or moved on to a newer
        // run, when a stale value is harmless.
        // SAFETY: `bytes` points to the slot, of which `len` <= 4 bytes are
        // read; it outlives the device's use of it (see above).
        let data = unsafe { core::slice::from_raw_parts(bytes, len) };
        // SAFETY: see above: `data` outlives the device's use of it.
        unsafe { self.add_out(data) }?;
        self.kick();
        Ok(())
    }

    /// Free page hinting: hands the device `block` and kicks it, without
    /// waiting. Returns `Ok(false)`, adding nothing, when only one free
    /// descriptor is left: it is kept for the stop id that ends the run.
    pub(crate) fn hint_block(&mut self, block: &super::hint::HintBlock) -> Result<bool> {
        // SAFETY: live virtqueue (type invariant); reading a plain field,
        // serialised by `&mut self`.
        if unsafe { (*self.vq.as_ptr()).num_free } <= 1 {
            return Ok(false);
        }
        let addr = block.addr();
        let mut sg = core::mem::MaybeUninit::<bindings::scatterlist>::uninit();
        // The device only learns the range: under the virtio free page
        // hinting rules it may drop the contents it saw, but must keep
        // whatever the guest writes there later, so the block may be freed
        // and reused while still on the ring (as the C driver does). The
        // token is the address, which nobody dereferences. No indirect
        // descriptors are negotiated, so adding does not allocate.
        // SAFETY: `sg` is valid for writes; `addr` is a block of
        // `hint::BYTES` in the direct map (invariant of `HintBlock`), which
        // the device may not rely on (see above).
        let ret = unsafe {
            bindings::sg_init_one(sg.as_mut_ptr(), addr, super::hint::BYTES as u32);
            bindings::virtqueue_add_inbuf(
                self.vq.as_ptr(),
                sg.as_mut_ptr(),
                1,
                addr,
                bindings::GFP_KERNEL,
            )
        };
        to_result(ret)?;
        self.kick();
        Ok(true)
    }

    /// Detaches every buffer the device has returned (for a queue the
    /// driver polls); returns how many there were.
    pub(crate) fn reap(&mut self) -> u32 {
        let mut n = 0;
        while self.get_used().is_some() {
            n += 1;
        }
        n
    }

    /// Adds `data` to the ring as one device-readable descriptor.
    ///
    /// # Safety
    ///
    /// `data` must stay alive and unchanged until the device has returned
    /// it (or the queue is reset and deleted).
    unsafe fn add_out(&mut self, data: &[u8]) -> Result {
        let mut sg = core::mem::MaybeUninit::<bindings::scatterlist>::uninit();
        let ptr = data.as_ptr().cast_mut().cast::<c_void>();
        // SAFETY: `sg` is valid for writes; `data` is valid for its length
        // for as long as the device may read it (the function's contract).
        // Live virtqueue, serialised by `&mut self`.
        let ret = unsafe {
            bindings::sg_init_one(sg.as_mut_ptr(), ptr, data.len() as u32);
            bindings::virtqueue_add_outbuf(
                self.vq.as_ptr(),
                sg.as_mut_ptr(),
                1,
                ptr,
                bindings::GFP_KERNEL,
            )
        };
        to_result(ret)
    }

    /// Tells the device there are new buffers.
    fn kick(&mut self) {
        // SAFETY: live virtqueue; accesses are serialised by `&mut self`.
        unsafe { bindings::virtqueue_kick(self.vq.as_ptr()) };
        if HostFaults::take(&self.dp.faults.break_device) {
            // Breaking the device is what a transport does when it
            // disappears: the core then ignores the queues' interrupts and
            // refuses new buffers. A callback already running finishes on
            // state that lives until the queues are deleted.
            // SAFETY: the queue's device is live, and this is process
            // context, as `virtio_break_device` requires.
            unsafe { bindings::virtio_break_device((*self.vq.as_ptr()).vdev) };
        }
    }

    /// A buffer the device has returned, by its used length; `None` if
    /// there is none right now.
    fn get_used(&mut self) -> Option<u32> {
        let mut len = 0u32;
        // SAFETY: live virtqueue, serialised by `&mut self`.
        let token = unsafe { bindings::virtqueue_get_buf(self.vq.as_ptr(), &mut len) };
        if token.is_null() {
            return None;
        }
        if HostFaults::take(&self.dp.faults.odd_used_len) {
            len = 4096;
        }
        Some(len)
    }

    /// Asks the device not to interrupt when it returns buffers: a sender
    /// about to wait ([`Virtqueue::wait_used`]) asks for the interrupt only
    /// if it has to sleep. A device that answers while the kick is handled
    /// (QEMU without ioeventfd) then costs no interrupt at all.
    fn quiet(&mut self) {
        // SAFETY: live virtqueue, serialised by `&mut self`. Only a hint to
        // the device; an interrupt that comes anyway is harmless.
        unsafe { bindings::virtqueue_disable_cb(self.vq.as_ptr()) };
    }

    /// Waits for the device to return a buffer; returns its used length.
    /// Sleeps (with the queue's interrupt asked for) only when none is
    /// there yet, and leaves the queue [`quiet`](Virtqueue::quiet). Wakes
    /// up every second to notice a ring the core marked broken (its
    /// interrupts are ignored from then on) or a device that asked to be
    /// reset (it will answer nothing more), and fails with `EIO` then.
    fn wait_used(&mut self) -> Result<u32> {
        loop {
            if let Some(len) = self.get_used() {
                return Ok(len);
            }
            // Signals from earlier rounds should not cut this sleep short
            // (if one slips through, the loop just checks again).
            self.shared.used.reinit();
            // SAFETY: live virtqueue, serialised by `&mut self`.
            if !unsafe { bindings::virtqueue_enable_cb(self.vq.as_ptr()) } {
                // A buffer came back meanwhile: take it without sleeping.
                self.quiet();
                continue;
            }
            let signalled = self.shared.used.wait_timeout(1000);
            self.quiet();
            if !signalled && (self.is_broken() || self.needs_reset()) {
                return Err(EIO);
            }
        }
    }

    /// Whether the device set `DEVICE_NEEDS_RESET`: it hit an error and,
    /// by the virtio spec, no longer uses any buffer. The driver then gives
    /// up on it until it is bound again (the bind resets it): the device is
    /// broken on the guest side too, so every sender fails at once instead
    /// of waiting for an answer that cannot come. Said once per binding.
    fn needs_reset(&self) -> bool {
        // SAFETY: live virtqueue of a live device with config ops.
        let vdev = unsafe { (*self.vq.as_ptr()).vdev };
        // SAFETY: as above; `get_status` reads the status register.
        let status = unsafe { (*(*vdev).config).get_status.map_or(0, |get| get(vdev)) };
        if u32::from(status) & bindings::VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            return false;
        }
        if !self.dp.gave_up.swap(true, Ordering::AcqRel) {
            // SAFETY: the device outlives its queues.
            let dev = unsafe { Device::from_raw(vdev) };
            dev_err!(
                dev,
                "the device reports an error and needs a reset; giving up on it until it is bound again\n"
            );
            // SAFETY: live device, process context (see `kick`).
            unsafe { bindings::virtio_break_device(vdev) };
        }
        true
    }

    /// Whether the virtio core gave up on this ring.
    pub(crate) fn is_broken(&self) -> bool {
        // SAFETY: live virtqueue (type invariant).
        unsafe { bindings::virtqueue_is_broken(self.vq.as_ptr()) }
    }
}

/// What [`Virtqueue::send`] did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    /// Buffers sent (and returned by the device).
    pub(crate) count: usize,
    /// Buffers the device returned with a used length other than 0.
    pub(crate) odd_lengths: u32,
}

/// The virtqueues of a device, from `find_vqs`. Dropping it (or calling
/// [`Virtqueues::shutdown`]) resets the device and deletes the queues.
///
/// # Invariants
///
/// While `live`, the device's virtqueues exist and `queues[i]` wraps the one
/// at index `i` (or is `None` for an unused index).
pub(crate) struct Virtqueues {
    dev: DeviceRef,
    dp: Arc<DevPriv>,
    queues: KVec<Option<Virtqueue>>,
    live: bool,
}

impl Virtqueues {
    /// Sets up the virtqueues of `dev` as `specs` asks (at most 8).
    /// Only while the driver is bound (in `probe` or `restore`).
    pub(crate) fn find(dev: &Device, specs: &[QueueSpec]) -> Result<Self> {
        const MAX: usize = MAX_VQS;
        if specs.len() > MAX {
            return Err(EINVAL);
        }
        let dp = dev.dev_priv().ok_or(EINVAL)?;
        // New queues (probe, restore) on a device the bind or restore reset.
        dp.gave_up.store(false, Ordering::Release);
        // Allocate everything first, so nothing can fail once queues exist.
        let mut shared = KVec::with_capacity(specs.len(), GFP_KERNEL)?;
        for spec in specs {
            let sh = KBox::pin_init(
                pin_init!(QueueShared {
                    used <- Completion::new(),
                    on_used: spec.on_used.clone(),
                }),
                GFP_KERNEL,
            )?;
            shared.push(sh, GFP_KERNEL)?;
        }
        let mut ids = KVec::with_capacity(specs.len(), GFP_KERNEL)?;
        for _ in specs {
            ids.push(KBox::new([0u32; 2], GFP_KERNEL)?, GFP_KERNEL)?;
        }
        let queues = KVec::with_capacity(specs.len(), GFP_KERNEL)?;
        // SAFETY: all-zero `virtqueue_info` is valid (no name, no callback).
        let mut info: [bindings::virtqueue_info; MAX] = unsafe { core::mem::zeroed() };
        let mut vqs = [core::ptr::null_mut::<bindings::virtqueue>(); MAX];
        for (i, spec) in specs.iter().enumerate() {
            if spec.used {
                info[i].name = spec.name.as_char_ptr();
                if spec.interrupts {
                    info[i].callback = Some(used_callback);
                }
            }
        }
        // SAFETY: valid device; `vqs` and `info` have at least `specs.len()`
        // entries; names are static strings. Callbacks can only fire once the
        // device is live, after `priv` is set below.
        to_result(unsafe {
            bindings::virtio_find_vqs(
                dev.as_raw(),
                specs.len() as u32,
                vqs.as_mut_ptr(),
                info.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        })?;
        // INVARIANT: the queues exist from here on; dropping `out` deletes them.
        let mut out = Self {
            dev: dev.get_ref(),
            dp,
            queues,
            live: true,
        };
        // The transports number only the queues that exist (a queue that is
        // not used takes no index, so later ones shift down): the callback
        // finds a queue's state by the index the transport gave it.
        for (i, (sh, ids)) in shared.into_iter().zip(ids).enumerate() {
            let item = match NonNull::new(vqs[i]) {
                Some(vq) if specs[i].used => {
                    let ptr = core::ptr::from_ref::<QueueShared>(&sh).cast_mut();
                    // SAFETY: `vq` was just created by `find_vqs`.
                    let index = unsafe { (*vq.as_ptr()).index } as usize;
                    if let Some(slot) = out.dp.queues.get(index) {
                        // INVARIANT: `sh` is pinned and lives as long as the
                        // `Virtqueue` that owns it; `shutdown` clears the
                        // entry before the queues (and `sh`) go.
                        slot.store(ptr, Ordering::Release);
                    }
                    Some(Virtqueue {
                        vq,
                        shared: sh,
                        posted: None,
                        ids,
                        dp: out.dp.clone(),
                    })
                }
                _ => None,
            };
            // Capacity was reserved above: this does not allocate.
            out.queues.push(item, GFP_KERNEL)?;
        }
        Ok(out)
    }

    /// The queue at `index`, if it was set up.
    pub(crate) fn get(&mut self, index: usize) -> Option<&mut Virtqueue> {
        if !self.live {
            return None;
        }
        self.queues.get_mut(index).and_then(|q| q.as_mut())
    }

    /// Resets the device (so it stops using the queues and raising their
    /// interrupts) and deletes the queues. Idempotent.
    pub(crate) fn shutdown(&mut self) {
        if !self.live {
            return;
        }
        self.live = false;
        // SAFETY: valid device (held by `self.dev`). After the reset the
        // device no longer touches the rings and pending callbacks are
        // synchronised, so deleting the queues is allowed.
        unsafe { bindings::virtio_reset_device(self.dev.as_raw()) };
        for q in &self.dp.queues {
            q.store(core::ptr::null_mut(), Ordering::Release);
        }
        // SAFETY: as above.
        unsafe { bindings::virtio_del_vqs(self.dev.as_raw()) };
        // The queues are gone; drop the handles (and their shared state).
        self.queues = KVec::new();
    }
}

impl Drop for Virtqueues {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Interrupt callback of every queue: wakes the sleeper in
/// [`Virtqueue::send`].
///
/// # Safety
///
/// Called by the virtio core with a live virtqueue created by
/// [`Virtqueues::find`].
unsafe extern "C" fn used_callback(vq: *mut bindings::virtqueue) {
    // SAFETY: `vq` is live for the call, and so is its device.
    let (vdev, index) = unsafe { ((*vq).vdev, (*vq).index as usize) };
    // SAFETY: while the device has queues a driver is bound and `priv` is
    // its `DevPriv` (see `probe_callback`).
    let dp = unsafe { (*vdev).priv_ }.cast::<DevPriv>();
    if dp.is_null() || index >= MAX_VQS {
        return;
    }
    // A `QueueShared` is freed only after its entry is cleared and the
    // device reset (which waits for running callbacks).
    // SAFETY: `dp` is live (the `Virtqueues` holds a reference); the entry
    // is null or the pinned `QueueShared` of this queue (see above).
    let shared = unsafe { (*dp).queues[index].load(Ordering::Acquire) };
    if !shared.is_null() {
        // SAFETY: see above.
        let shared = unsafe { &*shared };
        shared.used.complete();
        if let Some(h) = &shared.on_used {
            h.used();
        }
    }
}
