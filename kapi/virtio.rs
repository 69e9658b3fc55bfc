// SPDX-License-Identifier: GPL-2.0

//! Virtio drivers: registration with an ID table, the device in the states
//! a driver sees it in, its config space, and (in [`queue`]) its
//! virtqueues.
//!
//! A driver implements [`Driver`] and keeps a [`Registration`] for as long as
//! it wants to be bound. The bus calls back through [`Adapter`]; each
//! callback is handed the device in a context that says what may be done
//! with it:
//!
//! | context | where | allows |
//! | --- | --- | --- |
//! | [`Normal`] | any reference ([`ARef`]) | identity, messages |
//! | [`Validate`] | [`Driver::validate`], one thread | offered features, clearing them |
//! | [`Bound`] | [`Driver::config_changed`] (a spinlock is held) | negotiated features; nothing that sleeps |
//! | [`Core`] | probe, ready, remove, freeze, restore (device lock held) | config-space handles, debugfs, queue set-up |
//!
//! The virtqueues and config space of a binding are reached through handles
//! ([`queue::SyncQueue`], [`Config`], ...) that stay valid, but fail, once
//! the binding has gone: the layer owns the queues, resets the device and
//! deletes them itself after `remove` (or a failed `probe`, or `freeze`).

pub(crate) mod queue;

use super::{
    debugfs::Dir,
    sync::{RwSem, RwSemRead, RwSemWrite},
};
use crate::kapi::bindings;
use core::{
    cell::UnsafeCell,
    ffi::c_void,
    marker::PhantomData,
    ptr::NonNull,
    sync::atomic::{AtomicBool, AtomicPtr, Ordering},
};
use kernel::{
    error::{from_result, to_result},
    prelude::*,
    sync::{Arc, ArcBorrow},
    types::{ARef, AlwaysRefCounted, ForeignOwnable, Opaque},
    ThisModule,
};

/// A virtio feature bit: below 64 by construction (the virtio core BUG()s
/// on a larger one in a driver's feature table). Make them in `const`s, so
/// that a bad bit is a build error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub(crate) struct Feature(u32);

impl Feature {
    /// Feature bit `bit`; fails to build (in a constant) unless `bit < 64`.
    pub(crate) const fn new(bit: u32) -> Self {
        assert!(bit < 64, "virtio feature bits are below 64");
        Self(bit)
    }

    const fn mask(self) -> u64 {
        1u64 << self.0
    }
}

/// Transport feature bits a driver may have to refuse in `validate`.
pub(crate) mod feature {
    use super::Feature;
    use crate::kapi::bindings;
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub(crate) const RING_INDIRECT_DESC: Feature =
        Feature::new(bindings::VIRTIO_RING_F_INDIRECT_DESC);
    /// `VIRTIO_F_ACCESS_PLATFORM`.
    pub(crate) const ACCESS_PLATFORM: Feature = Feature::new(bindings::VIRTIO_F_ACCESS_PLATFORM);
}

/// The ID table of a driver: the device IDs it binds to, with the terminator
/// the bus needs. Made by [`virtio_device_table!`], which also exports it
/// for `modpost`, so the module's aliases come from this one list.
#[repr(C)]
pub(crate) struct IdTable<const N: usize> {
    ids: [bindings::virtio_device_id; N],
    end: bindings::virtio_device_id,
}

// SAFETY: plain integers, never written after construction.
unsafe impl<const N: usize> Sync for IdTable<N> {}

impl<const N: usize> IdTable<N> {
    /// A table of `devices` (any vendor).
    pub(crate) const fn new(devices: [u32; N]) -> Self {
        let mut ids = [bindings::virtio_device_id {
            device: 0,
            vendor: 0,
        }; N];
        let mut i = 0;
        while i < N {
            assert!(devices[i] != 0, "device ID 0 ends the table");
            ids[i] = bindings::virtio_device_id {
                device: devices[i],
                vendor: bindings::VIRTIO_DEV_ANY_ID,
            };
            i += 1;
        }
        Self {
            ids,
            end: bindings::virtio_device_id {
                device: 0,
                vendor: 0,
            },
        }
    }

    /// The table as the bus reads it.
    pub(crate) const fn as_ref(&'static self) -> IdTableRef {
        IdTableRef(self.ids.as_ptr())
    }
}

/// A terminated ID table ([`IdTable::as_ref`]).
#[derive(Clone, Copy)]
pub(crate) struct IdTableRef(*const bindings::virtio_device_id);

/// Defines a driver's [`IdTable`] as `$table`, exported to `modpost` as a
/// virtio device table (`__mod_virtio__<table>_device_table`), which turns
/// it into the module's `virtio:d...v*` aliases.
macro_rules! virtio_device_table {
    ($table:ident, [$($id:expr),+ $(,)?]) => {
        #[used]
        #[export_name = concat!("__mod_virtio__", stringify!($table), "_device_table")]
        static $table: $crate::kapi::virtio::IdTable<{ 0 $(+ { let _ = $id; 1 })+ }> =
            $crate::kapi::virtio::IdTable::new([$($id),+]);
    };
}

/// Device contexts: what a `&Device<C>` lets its holder do.
mod private {
    pub(crate) trait Sealed {}
}

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
    unsafe fn from_raw<'a>(ptr: *mut bindings::virtio_device) -> &'a Self {
        // SAFETY: transparent wrapper; validity per the contract.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn as_raw(&self) -> *mut bindings::virtio_device {
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

impl<C: DeviceContext> super::print::AsDevice for Device<C> {
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
    fn binding(&self) -> &Binding {
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

/// The layout of a device type's config space.
///
/// # Safety
///
/// `Self` is a plain-data `repr(C)` struct that describes the config space
/// of devices with ID `DEVICE_ID`, and every
/// [`Field`] made for it with [`config_field!`] states truthfully when the
/// field exists in a device's config space.
pub(crate) unsafe trait ConfigLayout: Sized + 'static {
    /// The virtio device ID whose config space this is.
    const DEVICE_ID: u32;
}

/// A scalar config-space field type, stored little-endian.
pub(crate) trait ConfigScalar: Copy + private::Sealed {
    #[doc(hidden)]
    fn from_le(b: [u8; 8]) -> Self;
    #[doc(hidden)]
    fn to_le(self) -> [u8; 8];
}

impl private::Sealed for u8 {}
impl private::Sealed for u16 {}
impl private::Sealed for u32 {}

macro_rules! scalar {
    ($t:ty) => {
        impl ConfigScalar for $t {
            fn from_le(b: [u8; 8]) -> Self {
                let mut v = [0u8; core::mem::size_of::<$t>()];
                v.copy_from_slice(&b[..core::mem::size_of::<$t>()]);
                <$t>::from_le_bytes(v)
            }
            fn to_le(self) -> [u8; 8] {
                let mut b = [0u8; 8];
                b[..core::mem::size_of::<$t>()].copy_from_slice(&self.to_le_bytes());
                b
            }
        }
    };
}
scalar!(u8);
scalar!(u16);
scalar!(u32);

/// A field of config layout `L`, of type `T`: its offset and width come
/// from the struct, and it knows which feature (if any) it needs. Made by
/// [`config_field!`].
///
/// # Invariants
///
/// `offset` is the offset of a field of `L` that is `size_of::<T>()` bytes
/// wide and exists in the config space of every device of `L`'s type that
/// has negotiated `feature` (of every such device, for `None`): what
/// [`Field::new_unchecked`]'s caller promised. [`Config`] reads and writes
/// a field only after checking `feature`, so its accesses stay inside the
/// device's config space.
pub(crate) struct Field<L: ConfigLayout, T: ConfigScalar> {
    offset: u32,
    feature: Option<Feature>,
    _t: PhantomData<fn(&L) -> T>,
}

impl<L: ConfigLayout, T: ConfigScalar> Clone for Field<L, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L: ConfigLayout, T: ConfigScalar> Copy for Field<L, T> {}

impl<L: ConfigLayout, T: ConfigScalar> Field<L, T> {
    /// # Safety
    ///
    /// `offset` is the offset of a field of `L` that is `size_of::<T>()`
    /// bytes wide and exists in the config space of every device that has
    /// negotiated `feature` (or of every device, for `None`).
    pub(crate) const unsafe fn new_unchecked(offset: usize, feature: Option<Feature>) -> Self {
        // INVARIANT: as the caller promises.
        Self {
            offset: offset as u32,
            feature,
            _t: PhantomData,
        }
    }
}

/// A [`Field`] of layout `$layout`: field `$field` read as `$t` (which must
/// be exactly as wide), present always or only `if` a feature is
/// negotiated. Expands to an `unsafe` constructor: the caller states that
/// the feature condition is what the device type's specification says.
macro_rules! config_field {
    ($layout:ty, $field:ident : $t:ty $(, if $feature:expr)?) => {{
        const fn width<F>(_: *const F) -> usize {
            ::core::mem::size_of::<F>()
        }
        const _: () = ::core::assert!(
            width({
                let l = ::core::mem::MaybeUninit::<$layout>::uninit();
                // SAFETY: only the field's address is computed; nothing is
                // read.
                unsafe { ::core::ptr::addr_of!((*l.as_ptr()).$field) }
            }) == ::core::mem::size_of::<$t>(),
            "config field read with a type of another width"
        );
        $crate::kapi::virtio::Field::<$layout, $t>::new_unchecked(
            ::core::mem::offset_of!($layout, $field),
            $crate::kapi::virtio::config_field!(@feature $($feature)?),
        )
    }};
    (@feature) => { None };
    (@feature $f:expr) => { Some($f) };
}
pub(crate) use config_field;

/// The config space of a bound device, with layout `L`. Its accessors may
/// sleep: process context only.
pub(crate) struct Config<L: ConfigLayout> {
    bind: Arc<Binding>,
    _l: PhantomData<fn() -> L>,
}

impl<L: ConfigLayout> Config<L> {
    /// Checks that the binding is alive and `f` exists on this device.
    fn access<T: ConfigScalar>(
        &self,
        f: &Field<L, T>,
    ) -> Result<(RwSemRead<'_>, *mut bindings::virtio_device)> {
        let life = self.bind.life.read();
        // SAFETY: `state` is only written with `life` held for writing.
        let state = unsafe { &*self.bind.state.get() };
        if !state.bound || state.frozen {
            return Err(ENODEV);
        }
        let vdev = self.bind.vdev.as_ptr();
        if let Some(feat) = f.feature {
            // SAFETY: bound (checked under `life`), so `features` is stable.
            if unsafe { (*vdev).features } & feat.mask() == 0 {
                return Err(ENOTSUPP);
            }
        }
        Ok((life, vdev))
    }

    /// Reads field `f`, with one access of its width, retried until the
    /// device's config generation is stable. May sleep.
    pub(crate) fn read<T: ConfigScalar>(&self, f: Field<L, T>) -> Result<T> {
        might_sleep!();
        let (_life, vdev) = self.access(&f)?;
        let mut bytes = [0u8; 8];
        let len = core::mem::size_of::<T>() as u32;
        // The field lies within the device's config space (`Field`'s
        // contract, feature checked above); the transport's `get` exists
        // (checked before probe) and writes `len` <= 8 bytes.
        // SAFETY: see above; the device is bound (held by `_life`).
        unsafe {
            let ops = (*vdev).config;
            let get = (*ops).get.ok_or(ENODEV)?;
            let generation = (*ops).generation;
            loop {
                let before = generation.map_or(0, |g| g(vdev));
                get(vdev, f.offset, bytes.as_mut_ptr().cast(), len);
                if generation.map_or(0, |g| g(vdev)) == before {
                    break;
                }
            }
        }
        Ok(T::from_le(bytes))
    }

    /// Writes field `f` with one access of its width. May sleep.
    pub(crate) fn write<T: ConfigScalar>(&self, f: Field<L, T>, value: T) -> Result {
        might_sleep!();
        let (_life, vdev) = self.access(&f)?;
        let bytes = value.to_le();
        let len = core::mem::size_of::<T>() as u32;
        // SAFETY: as in `read`; `bytes` holds `len` bytes to read. A
        // transport without `set` has a read-only config space.
        unsafe {
            let set = (*(*vdev).config).set.ok_or(ENOTSUPP)?;
            set(vdev, f.offset, bytes.as_ptr().cast(), len);
        }
        Ok(())
    }
}

/// A virtio driver. Optional callbacks are installed only when implemented
/// (`#[vtable]`).
#[vtable]
pub(crate) trait Driver: Sized + Send + Sync + 'static {
    /// Driver name, as in `/sys/bus/virtio/drivers/<NAME>` and debugfs.
    const NAME: &'static CStr;
    /// The device IDs this driver binds to ([`virtio_device_table!`]).
    const ID_TABLE: IdTableRef;
    /// Feature bits the driver understands.
    const FEATURES: &'static [Feature];

    /// Before feature negotiation completes: may refuse offered features.
    fn validate(_dev: &Device<Validate>) -> Result {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Binds to `dev`: features are negotiated, the device is not live yet
    /// (`DRIVER_OK` follows when this returns). `queues` sets up the
    /// virtqueues, once. On error, whatever queues were set up are torn
    /// down (the device reset first).
    fn probe(dev: &Device<Core>, queues: queue::QueueSetup<'_>) -> Result<Pin<KBox<Self>>>;

    /// The device is live (`DRIVER_OK`), after probe and after restore.
    fn ready(&self, _dev: &Device<Core>) {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The device's config space changed.
    ///
    /// # Atomic context
    ///
    /// The virtio core calls this with a spinlock held (interrupts off):
    /// the implementation must not sleep. The device it is handed offers
    /// nothing that may ([`Device<Bound>`] has no config space), but the
    /// driver's own data can reach sleeping calls, and nothing in the types
    /// stops that: it must not take a [`sync::Mutex`](super::sync::Mutex)
    /// or [`sync::RwSem`](super::sync::RwSem), wait on a completion or a
    /// queue (`SyncQueue::send`, `WaitedQueue::wait`), use a [`Config`],
    /// allocate with `GFP_KERNEL` or call `msleep`. It may queue work,
    /// take irq-saving spinlocks and use atomics. Every sleeping operation
    /// of this layer starts with `might_sleep!`, so on a kernel with
    /// `CONFIG_DEBUG_ATOMIC_SLEEP` (the debug kernel's tests) a violation is
    /// reported even when the call would not have slept that time.
    fn config_changed(&self, _dev: &Device<Bound>) {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The device returned buffers on posted queue `queue`.
    ///
    /// # Atomic context
    ///
    /// Called from the queue's interrupt: the same rules as for
    /// [`Driver::config_changed`] apply (no sleeping).
    fn buffers_used(&self, _dev: &Device<Bound>, _queue: queue::QueueId) {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Unbinds from `dev`; the queues still work. Afterwards the layer
    /// resets the device, deletes the queues, and drops the data.
    fn remove(&self, dev: &Device<Core>);

    /// The system is going to sleep (freezable work is frozen already).
    /// The queues still work; on success the layer resets the device and
    /// deletes them. On error the system does not sleep and they stay.
    fn freeze(&self, _dev: &Device<Core>) -> Result {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The system woke up: set the virtqueues up again with `queues`.
    /// [`Driver::ready`] follows once the device is live.
    fn restore(&self, _dev: &Device<Core>, _queues: queue::QueueSetup<'_>) -> Result {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// Lifecycle state of a binding, guarded by [`Binding::life`].
struct Life {
    /// Whether the driver is bound.
    bound: bool,
    /// Between a freeze and the restore callback: the features may not
    /// hold any more (a restore can fail before the driver sees it).
    frozen: bool,
    /// Whether `find_vqs` succeeded and `del_vqs` is still owed.
    found: bool,
    /// Whether the device was reset after a failed transfer since the
    /// queues were set up: it must not be made live.
    reset: bool,
}

/// What `vdev->priv` points to while a driver is bound (`vq->priv` is the
/// transport's).
///
/// # Invariants
///
/// `vdev` is the bound device, kept allocated by `_dev`. `state` is read
/// with `life` held (either way) and written with it held for writing.
/// `data` is null or the driver's data (`Pin<KBox<T>>` as a foreign
/// pointer), published after probe and taken before it is dropped.
/// `queues[i]` is null or an `Arc<QueueCore>` (as a raw pointer) of the
/// live queue with transport index `i`.
#[pin_data]
struct Binding {
    vdev: NonNull<bindings::virtio_device>,
    _dev: ARef<kernel::device::Device>,
    #[pin]
    life: RwSem,
    state: UnsafeCell<Life>,
    data: AtomicPtr<c_void>,
    /// `Adapter::<T>::used_trampoline` for the bound driver's `T`.
    notify: unsafe fn(*const c_void, &Device<Bound>, queue::QueueId),
    queues: [AtomicPtr<queue::QueueCore>; queue::MAX_VQS],
    /// Set once a device that asked to be reset was given up on.
    gave_up: AtomicBool,
    /// Set once the device was reset after a failed transfer.
    reset_after_error: AtomicBool,
    debugfs: Option<Arc<Dir>>,
    faults: queue::Faults,
}

// SAFETY: the raw device pointer is kept valid by `_dev` and used under the
// rules of the virtio core; `state` is guarded by `life`; the rest is
// atomics and `Arc`s.
unsafe impl Send for Binding {}
// SAFETY: see `Send`.
unsafe impl Sync for Binding {}

impl Binding {
    /// A new `Arc` on the binding of a bound device, from `priv` (the
    /// pointer `Arc::into_raw` gave `probe_callback`).
    ///
    /// # Safety
    ///
    /// `vdev` is bound to a driver of this layer (between probe's start and
    /// remove's end).
    unsafe fn arc_of(vdev: *mut bindings::virtio_device) -> Arc<Binding> {
        // SAFETY: `priv` holds one reference while bound, so the count is
        // not zero while we take another.
        unsafe { ArcBorrow::from_raw((*vdev).priv_.cast::<Binding>().cast_const()) }.into()
    }

    /// Whether the device set `DEVICE_NEEDS_RESET`: it hit an error and, by
    /// the virtio spec, uses no buffer any more. The device is then broken
    /// on the guest side too, so every sender fails at once instead of
    /// waiting for an answer that cannot come. Said once per binding.
    fn needs_reset(&self) -> bool {
        let vdev = self.vdev.as_ptr();
        // SAFETY: `vdev` is the bound device, kept allocated by `_dev`
        // (type invariant); a registered device has its transport's config
        // ops; `get_status` only reads the status register.
        let status = unsafe { (*(*vdev).config).get_status.map_or(0, |get| get(vdev)) };
        if u32::from(status) & bindings::VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            return false;
        }
        if !self.gave_up.swap(true, Ordering::AcqRel) {
            // SAFETY: `vdev` is kept allocated by `_dev` (type invariant);
            // `Normal` only reads its generic part, for a message.
            let dev = unsafe { Device::<Normal>::from_raw(vdev) };
            dev_err!(
                dev,
                "the device reports an error and needs a reset; giving up on it until it is bound again\n"
            );
            // SAFETY: `vdev` is kept allocated by `_dev` (type invariant);
            // breaking only takes the device's queue list lock and sets
            // flags, from process context.
            unsafe { bindings::virtio_break_device(vdev) };
        }
        true
    }

    /// Breaks the device (every queue refuses new buffers and its waiters
    /// give up) and waits until no queue callback runs (a broken ring's
    /// interrupt calls none).
    fn break_device(&self) {
        let vdev = self.vdev.as_ptr();
        // SAFETY: `vdev` is kept allocated by `_dev` (type invariant);
        // breaking only takes the device's queue list lock and sets flags.
        unsafe { bindings::virtio_break_device(vdev) };
        // `virtio_synchronize_cbs`: the transport's, or an RCU grace
        // period (6.12's fallback).
        // SAFETY: `vdev` is kept allocated by `_dev` (type invariant) and,
        // registered, has its transport's config ops; process context.
        match unsafe { (*(*vdev).config).synchronize_cbs } {
            // SAFETY: as above.
            Some(sync) => unsafe { sync(vdev) },
            // SAFETY: process context.
            None => unsafe { bindings::synchronize_rcu() },
        }
    }

    /// Wakes every sender sleeping on a queue of the binding.
    fn wake_all(&self, _r: &RwSemRead<'_>) {
        for slot in &self.queues {
            let q = slot.load(Ordering::Acquire);
            if !q.is_null() {
                // SAFETY: entries are cleared (and their cores freed) only
                // with `life` held for writing; `_r` holds it for reading.
                unsafe { (*q).wake() };
            }
        }
    }

    /// Closes every queue and resets the device: no operation is in
    /// progress afterwards, the device touches no buffer, and the rings let
    /// go of every buffer (unmapping them). With `delete`, the queues
    /// forget their virtqueues (about to be deleted).
    fn close_and_reset(&self, w: &RwSemWrite<'_>, delete: bool) {
        for slot in &self.queues {
            let q = slot.load(Ordering::Acquire);
            if !q.is_null() {
                // SAFETY: a live entry (cleared only by teardown, which
                // holds `life`, as our caller does).
                unsafe { (*q).close(w) };
            }
        }
        // The core wants the device reset after remove even with no queue.
        // SAFETY: `vdev` is kept allocated by `_dev` (type invariant); we
        // are in process context; every queue is closed and `life` is held
        // for writing, so no kick is in progress.
        unsafe { bindings::virtio_reset_device(self.vdev.as_ptr()) };
        for slot in &self.queues {
            let q = slot.load(Ordering::Acquire);
            if !q.is_null() {
                // SAFETY: as above; the device is reset.
                unsafe { (*q).drop_unused(w, delete) };
            }
        }
    }

    /// Tears the queues down: breaks the device, waits for operations in
    /// progress, resets the device, drops the buffers the rings still held
    /// and deletes the queues. With `unbind`, config handles stop working
    /// too; otherwise (freeze) until restore. Idempotent.
    fn teardown(&self, unbind: bool) {
        self.break_device();
        // Taking `life` for reading cannot wait for ever: every reader is a
        // queue or config operation, and queue operations give up on a
        // broken device within a second even if nobody wakes them.
        self.wake_all(&self.life.read());
        let w = self.life.write();
        // SAFETY: `life` is held for writing.
        let state = unsafe { &mut *self.state.get() };
        state.bound &= !unbind;
        state.frozen = !unbind;
        state.reset = false;
        self.close_and_reset(&w, true);
        // The cores stay alive until the queues are deleted.
        let mut cores = [const { None::<Arc<queue::QueueCore>> }; queue::MAX_VQS];
        for (slot, keep) in self.queues.iter().zip(cores.iter_mut()) {
            let q = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
            if !q.is_null() {
                // SAFETY: the entry held one reference (type invariant),
                // taken back here.
                *keep = Some(unsafe { Arc::from_raw(q) });
            }
        }
        if core::mem::take(&mut state.found) {
            let vdev = self.vdev.as_ptr();
            // SAFETY: `vdev` is kept allocated by `_dev` (type invariant) and
            // has its transport's config ops; reset above, every queue
            // closed and without buffers, no callback can run (broken).
            if let Some(del) = unsafe { (*(*vdev).config).del_vqs } {
                // SAFETY: see above.
                unsafe { del(vdev) };
            }
        }
        drop(w);
        drop(cores);
    }

    /// After an operation on `q` failed with buffers the device might still
    /// hold: resets the device, so that their memory may be reused. The
    /// device is useless until it is bound again; later operations fail at
    /// once. Does nothing if `q`'s queues are gone (torn down, so reset and
    /// detached already) or closed by an earlier reset: the device may be
    /// another binding's by then.
    fn reset_after_error(&self, q: &queue::QueueCore) {
        {
            let r = self.life.read();
            if !q.is_open() {
                return;
            }
            // Break first: an operation on another queue may be waiting for
            // a device that will never answer, holding `life` for reading.
            self.break_device();
            self.wake_all(&r);
        }
        let w = self.life.write();
        if !q.is_open() {
            return;
        }
        if !self.reset_after_error.swap(true, Ordering::AcqRel) {
            // SAFETY: `vdev` is kept allocated by `_dev` (type invariant);
            // `Normal` only reads its generic part, for a message.
            let dev = unsafe { Device::<Normal>::from_raw(self.vdev.as_ptr()) };
            dev_err!(
                dev,
                "a transfer failed with buffers on the ring: device reset before their memory is reused; it is unusable until bound again\n"
            );
        }
        // SAFETY: `life` is held for writing.
        unsafe { (*self.state.get()).reset = true };
        self.close_and_reset(&w, false);
    }
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

/// What the bus points into while the driver is registered.
///
/// # Invariants
///
/// `drv` is the first field of this `repr(C)` struct, so a pointer to the
/// `struct virtio_driver` (or its first field, the `struct device_driver`)
/// is a pointer to the whole.
#[repr(C)]
#[pin_data]
struct DriverStorage {
    #[pin]
    drv: Opaque<bindings::virtio_driver>,
    /// `/sys/kernel/debug/<NAME>/`.
    debugfs: Option<Arc<Dir>>,
}

// SAFETY: the registration is only touched at creation and drop; the bus
// serialises its own accesses to the driver struct.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: no `&self` methods.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers `T` with the virtio bus on behalf of `module`.
    pub(crate) fn new(module: &'static ThisModule) -> Result<Self> {
        let debugfs = Dir::new(T::NAME, None).ok();
        let storage = KBox::pin_init(
            pin_init!(DriverStorage {
                // SAFETY: all-zero is a valid `virtio_driver` (null pointers
                // and `None`s); the fields set are the ones the bus reads.
                drv <- Opaque::ffi_init(|drv: *mut bindings::virtio_driver| unsafe {
                    drv.write(core::mem::zeroed());
                    Adapter::<T>::fill(drv);
                }),
                debugfs,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `drv` is initialised and pinned; `module` is this module.
        // On success the bus may call the callbacks at once.
        to_result(unsafe {
            bindings::__register_virtio_driver(storage.drv.get(), module.as_ptr())
        })?;
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

/// The C callbacks of a [`Driver`] `T`.
pub(crate) struct Adapter<T: Driver>(PhantomData<T>);

impl<T: Driver> Adapter<T> {
    /// Fills in the callbacks and tables of a zeroed `virtio_driver`.
    ///
    /// # Safety
    ///
    /// `drv` is valid for writes and not yet registered.
    unsafe fn fill(drv: *mut bindings::virtio_driver) {
        // SAFETY: per the function's contract. `Feature` is a transparent
        // `u32`; the tables are static.
        unsafe {
            (*drv).driver.name = T::NAME.as_char_ptr();
            (*drv).id_table = T::ID_TABLE.0;
            (*drv).feature_table = T::FEATURES.as_ptr().cast::<u32>();
            (*drv).feature_table_size = T::FEATURES.len() as u32;
            if T::HAS_VALIDATE {
                (*drv).validate = Some(Self::validate_callback);
            }
            (*drv).probe = Some(Self::probe_callback);
            (*drv).remove = Some(Self::remove_callback);
            if T::HAS_CONFIG_CHANGED {
                (*drv).config_changed = Some(Self::config_changed_callback);
            }
            // Both or neither: the layer tears the queues down at freeze and
            // can only set them up again at restore.
            #[cfg(CONFIG_PM_SLEEP)]
            if T::HAS_FREEZE || T::HAS_RESTORE {
                (*drv).freeze = Some(Self::freeze_callback);
                (*drv).restore = Some(Self::restore_callback);
            }
        }
    }

    /// The driver data, once probe has published it.
    ///
    /// # Safety
    ///
    /// The caller is in a callback the virtio core orders before the
    /// remove callback takes the data (config change, queue interrupt,
    /// freeze, restore), for a device bound to `T`.
    unsafe fn data<'a>(bind: &'a Binding) -> Option<Pin<&'a T>> {
        let ptr = bind.data.load(Ordering::Acquire);
        if ptr.is_null() {
            return None;
        }
        // SAFETY: `ptr` came from `Pin<KBox<T>>::into_foreign` and stays
        // until `remove_callback` takes it back (after the callers' window).
        Some(unsafe { <Pin<KBox<T>> as ForeignOwnable>::borrow(ptr) })
    }

    /// The binding of a device the driver is bound to.
    ///
    /// # Safety
    ///
    /// `vdev` is bound to `T` (between probe's start and remove's end).
    unsafe fn binding<'a>(vdev: *mut bindings::virtio_device) -> &'a Binding {
        // SAFETY: `priv` is our binding while bound.
        unsafe { &*(*vdev).priv_.cast::<Binding>() }
    }

    /// Tells the driver that posted queue `q` returned buffers.
    ///
    /// # Safety
    ///
    /// `data` is the published data of a driver `T` (see [`Self::data`]).
    unsafe fn used_trampoline(data: *const c_void, dev: &Device<Bound>, q: queue::QueueId) {
        if T::HAS_BUFFERS_USED {
            // SAFETY: `data` is the published driver data of `T` (see
            // `queue::used_callback`).
            let data = unsafe { <Pin<KBox<T>> as ForeignOwnable>::borrow(data) };
            data.buffers_used(dev, q);
        }
    }

    /// # Safety
    ///
    /// Called by the virtio bus with a registered device, before
    /// negotiation completes.
    unsafe extern "C" fn validate_callback(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
        // SAFETY: the bus passes a registered device, on one thread, before
        // negotiation completes.
        let dev = unsafe { Device::<Validate>::from_raw(vdev) };
        from_result(|| T::validate(dev).map(|()| 0))
    }

    /// # Safety
    ///
    /// Called by the virtio bus with a registered device matching our
    /// table, under its device lock.
    unsafe extern "C" fn probe_callback(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
        // SAFETY: the bus passes a registered device and holds its lock.
        let dev = unsafe { Device::<Core>::from_raw(vdev) };
        from_result(|| {
            // SAFETY: the bus calls probe with a registered device (valid for
            // the call), whose transport set its config ops.
            if unsafe { (*(*vdev).config).get.is_none() } {
                dev_err!(dev, "config space access is not available\n");
                return Err(EINVAL);
            }
            // SAFETY: the bound driver's `device_driver` is the first field
            // of our `DriverStorage` (type invariant), registered while any
            // device is bound to it.
            let storage = unsafe { &*(*vdev).dev.driver.cast::<DriverStorage>() };
            let bind = Arc::pin_init(
                try_pin_init!(Binding {
                    // SAFETY: `vdev` is non-null (the bus passed it).
                    vdev: unsafe { NonNull::new_unchecked(vdev) },
                    _dev: ARef::from(dev.as_dev()),
                    life <- new_rwsem!("virtio_binding_life"),
                    state: UnsafeCell::new(Life {
                        bound: true,
                        frozen: false,
                        found: false,
                        reset: false,
                    }),
                    data: AtomicPtr::new(core::ptr::null_mut()),
                    notify: Self::used_trampoline,
                    queues: Default::default(),
                    gave_up: AtomicBool::new(false),
                    reset_after_error: AtomicBool::new(false),
                    debugfs: storage.debugfs.clone(),
                    faults: queue::new_faults()?,
                }? Error),
                GFP_KERNEL,
            )?;
            let raw = Arc::into_raw(bind.clone());
            // SAFETY: `priv` belongs to the driver; from here until
            // `remove_callback` (or the failure below) it holds a reference.
            unsafe { (*vdev).priv_ = raw.cast_mut().cast() };
            let setup = queue::QueueSetup::new(&bind);
            let data = match T::probe(dev, setup) {
                Ok(data) => data.into_foreign(),
                Err(e) => {
                    Self::unwind_probe(vdev, &bind, raw, None);
                    return Err(e);
                }
            };
            bind.data.store(data.cast_mut(), Ordering::Release);
            // A transfer may have failed during probe, resetting the device:
            // it cannot be made live then.
            if let Err(e) = Self::go_live(dev, &bind) {
                bind.data.store(core::ptr::null_mut(), Ordering::Release);
                Self::unwind_probe(vdev, &bind, raw, Some(data));
                return Err(e);
            }
            Ok(0)
        })
    }

    /// Undoes a probe that failed: tears the queues down (the device may
    /// hold buffers the driver handed it, so it is reset before anything
    /// the driver owned can go), drops the driver data if there is any,
    /// and lets go of `priv`.
    fn unwind_probe(
        vdev: *mut bindings::virtio_device,
        bind: &Binding,
        raw: *const Binding,
        data: Option<*const c_void>,
    ) {
        bind.teardown(true);
        if let Some(data) = data {
            // SAFETY: from `into_foreign` in probe, not published any more;
            // no callback runs after the teardown.
            drop(unsafe { <Pin<KBox<T>> as ForeignOwnable>::from_foreign(data) });
        }
        // SAFETY: `priv` held the reference `raw` came from; no callback
        // can use `priv` any more.
        unsafe {
            (*vdev).priv_ = core::ptr::null_mut();
            drop(Arc::from_raw(raw));
        }
    }

    /// Makes the device live and tells the driver; fails if the device
    /// was reset after a failed transfer since the queues were set up.
    fn go_live(dev: &Device<Core>, bind: &Binding) -> Result {
        {
            let _w = bind.life.write();
            // SAFETY: `life` is held for writing.
            if unsafe { (*bind.state.get()).reset } {
                return Err(EIO);
            }
            // Probe and restore are the only callers, and the core sets
            // `DRIVER_OK` only after they return; under `life`, no reset can
            // come in between.
            // SAFETY: `dev` is the device being probed or restored (valid for
            // the callback); its driver set its queues up and it is not yet
            // `DRIVER_OK` (see above).
            unsafe { bindings::virtio_device_ready(dev.as_raw()) };
        }
        if T::HAS_READY {
            // SAFETY: in a `Core` callback, before remove.
            if let Some(data) = unsafe { Self::data(bind) } {
                data.ready(dev);
            }
        }
        Ok(())
    }

    /// # Safety
    ///
    /// Called by the virtio bus for a device whose probe succeeded, under
    /// its device lock.
    unsafe extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: the bus passes a bound device and holds its lock.
        let dev = unsafe { Device::<Core>::from_raw(vdev) };
        // SAFETY: bound to `T`.
        let bind = unsafe { Self::binding(vdev) };
        // Queue callbacks see no data from here; one already running may
        // still borrow it until the teardown has synchronised with it.
        let ptr = bind.data.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !ptr.is_null() {
            // SAFETY: `ptr` came from `into_foreign` in probe and is freed
            // below, after the last borrow.
            let data = unsafe { <Pin<KBox<T>> as ForeignOwnable>::borrow(ptr) };
            data.remove(dev);
        }
        // The device may hold buffers until it is reset; the driver's data
        // (which may own them) goes only after that.
        bind.teardown(true);
        if !ptr.is_null() {
            // SAFETY: taken once (swapped out above); no borrow is left:
            // `remove` returned and no callback runs after the teardown.
            drop(unsafe { <Pin<KBox<T>> as ForeignOwnable>::from_foreign(ptr) });
        }
        // SAFETY: drop the reference `priv` held (see `probe_callback`); no
        // callback runs any more.
        unsafe {
            let raw = (*vdev).priv_.cast::<Binding>();
            (*vdev).priv_ = core::ptr::null_mut();
            drop(Arc::from_raw(raw));
        }
    }

    /// # Safety
    ///
    /// Called by the virtio core, under a spinlock, for a bound device.
    unsafe extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: the core calls this only for a bound device, and disables
        // it before remove; it holds a spinlock, so the context is `Bound`.
        let (bind, dev) = unsafe { (Self::binding(vdev), Device::<Bound>::from_raw(vdev)) };
        // SAFETY: before remove (see above).
        if let Some(data) = unsafe { Self::data(bind) } {
            data.config_changed(dev);
        }
    }

    #[cfg(CONFIG_PM_SLEEP)]
    /// # Safety
    ///
    /// Called by the virtio core for a bound device while the system
    /// suspends, under its device lock.
    unsafe extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
        // SAFETY: bound device, device lock held (freeze and remove are
        // serialised by it).
        let (bind, dev) = unsafe { (Self::binding(vdev), Device::<Core>::from_raw(vdev)) };
        from_result(|| {
            // SAFETY: see above.
            if let (true, Some(data)) = (T::HAS_FREEZE, unsafe { Self::data(bind) }) {
                data.freeze(dev)?;
            }
            bind.teardown(false);
            Ok(0)
        })
    }

    #[cfg(CONFIG_PM_SLEEP)]
    /// # Safety
    ///
    /// Called by the virtio core for a bound device while the system
    /// resumes, under its device lock.
    unsafe extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
        // SAFETY: as in `freeze_callback`.
        let (bind, dev) = unsafe { (Self::binding(vdev), Device::<Core>::from_raw(vdev)) };
        from_result(|| {
            // The core renegotiated the features before calling us: config
            // handles may work again.
            {
                let _w = bind.life.write();
                // SAFETY: `life` is held for writing.
                unsafe { (*bind.state.get()).frozen = false };
            }
            // SAFETY: bound (see above).
            let arc = unsafe { Binding::arc_of(vdev) };
            // SAFETY: see above.
            if let (true, Some(data)) = (T::HAS_RESTORE, unsafe { Self::data(bind) }) {
                if let Err(e) = data.restore(dev, queue::QueueSetup::new(&arc)) {
                    bind.teardown(false);
                    return Err(e);
                }
            }
            Self::go_live(dev, bind).inspect_err(|_| bind.teardown(false))?;
            Ok(0)
        })
    }
}
