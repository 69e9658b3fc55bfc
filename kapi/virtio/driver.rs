// SPDX-License-Identifier: GPL-2.0

//! The driver trait, its registration with the bus, and the trampolines
//! the bus calls.

use super::*;

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
    /// Read-only attributes the driver gives each device it is bound to,
    /// in `/sys/bus/virtio/devices/<dev>/<ATTRIBUTE_DIR>/`: they exist
    /// from the end of a successful probe to the start of remove, and each
    /// is shown from the driver's data. None by default.
    const ATTRIBUTES: &'static [sysfs::Attr<Self>] = &[];
    /// The directory of [`Driver::ATTRIBUTES`].
    const ATTRIBUTE_DIR: &'static CStr = Self::NAME;

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
    /// stops that: it must not take a [`sync::Mutex`](crate::kapi::sync::Mutex)
    /// or [`sync::RwSem`](crate::kapi::sync::RwSem), wait on a completion or a
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

/// Registration of driver `T` with the virtio bus; unregisters on drop.
///
/// # Invariants
///
/// `storage.drv` is registered with the bus for the lifetime of `self`.
pub(crate) struct Registration<T: Driver> {
    pub(super) storage: Pin<KBox<DriverStorage>>,
    pub(super) _t: PhantomData<T>,
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
pub(super) struct DriverStorage {
    #[pin]
    pub(super) drv: Opaque<bindings::virtio_driver>,
    /// `/sys/kernel/debug/<NAME>/`.
    pub(super) debugfs: Option<Arc<Dir>>,
    /// The sysfs attributes `drv` points to (`dev_groups`), if any; they
    /// go after it is unregistered (fields drop after `Drop::drop`).
    pub(super) attributes: Option<Pin<KBox<sysfs::Group>>>,
}

// SAFETY: the registration is only touched at creation and drop; the bus
// serialises its own accesses to the driver struct.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: no `&self` methods.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers `T` with the virtio bus on behalf of `module`.
    pub(crate) fn new(module: &'static ThisModule) -> Result<Self> {
        const {
            assert!(
                sysfs::names_are_valid(T::ATTRIBUTES),
                "sysfs attribute names are file names (not empty, no '/'), each used once"
            )
        };
        let debugfs = Dir::new(T::NAME, None).ok();
        let attributes = if T::ATTRIBUTES.is_empty() {
            None
        } else {
            Some(sysfs::Group::new(
                T::ATTRIBUTE_DIR,
                T::ATTRIBUTES.iter().map(|a| a.name),
                Adapter::<T>::show_callback,
            )?)
        };
        let dev_groups = attributes
            .as_ref()
            .map_or(core::ptr::null_mut(), |g| g.as_ref().as_dev_groups());
        let storage = KBox::pin_init(
            pin_init!(DriverStorage {
                // SAFETY: all-zero is a valid `virtio_driver` (null pointers
                // and `None`s); the fields set are the ones the bus reads.
                // `dev_groups` is null or points into `attributes`, which
                // lives in the same storage and does not move (pinned).
                drv <- Opaque::ffi_init(|drv: *mut bindings::virtio_driver| unsafe {
                    drv.write(core::mem::zeroed());
                    Adapter::<T>::fill(drv);
                    (*drv).driver.dev_groups = dev_groups;
                }),
                debugfs,
                attributes,
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
    pub(super) unsafe fn fill(drv: *mut bindings::virtio_driver) {
        // The layer tears the queues down at freeze and sets them up again
        // only through restore: a driver implements both or neither.
        const {
            assert!(
                T::HAS_FREEZE == T::HAS_RESTORE,
                "a virtio driver implements both freeze and restore, or neither"
            )
        };
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
            // Both or neither (checked above).
            #[cfg(CONFIG_PM_SLEEP)]
            if T::HAS_FREEZE {
                (*drv).freeze = Some(Self::freeze_callback);
                (*drv).restore = Some(Self::restore_callback);
            }
        }
    }

    /// The driver data, once probe has published it.
    ///
    /// # Safety
    ///
    /// The caller is in a callback ordered before the remove callback
    /// takes the data, for a device bound to `T`: by the virtio core
    /// (config change, queue interrupt, freeze, restore) or by the driver
    /// core (a sysfs show of `dev_groups`, whose files are removed, and
    /// their readers drained, before the bus's remove).
    pub(super) unsafe fn data<'a>(bind: &'a Binding) -> Option<Pin<&'a T>> {
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
    pub(super) unsafe fn binding<'a>(vdev: *mut bindings::virtio_device) -> &'a Binding {
        // SAFETY: `priv` is our binding while bound.
        unsafe { &*(*vdev).priv_.cast::<Binding>() }
    }

    /// Shows one of [`Driver::ATTRIBUTES`].
    ///
    /// # Safety
    ///
    /// Called by sysfs for an attribute of the group the driver core made
    /// from `dev_groups` for `dev`, a virtio device bound to `T`: the group
    /// exists from the end of a successful probe to the start of remove,
    /// and removing it waits for the reads in progress.
    pub(super) unsafe extern "C" fn show_callback(
        dev: *mut bindings::device,
        attr: *mut bindings::device_attribute,
        buf: *mut kernel::ffi::c_char,
    ) -> isize {
        // SAFETY: `dev` is the `dev` field of a `virtio_device` (a device
        // on the virtio bus, per the function's contract).
        let vdev = unsafe { kernel::container_of!(dev, bindings::virtio_device, dev) }.cast_mut();
        // SAFETY: bound to `T` between probe and remove (see above).
        let bind = unsafe { Self::binding(vdev) };
        // SAFETY: the group is removed before the remove callback takes
        // the data (see above).
        let Some(data) = (unsafe { Self::data(bind) }) else {
            return ENODEV.to_errno() as isize;
        };
        // SAFETY: `attr` is an attribute of our group, alive while it is
        // registered.
        let index = unsafe { sysfs::Group::index_of(attr) };
        let Some(a) = T::ATTRIBUTES.get(index) else {
            return EINVAL.to_errno() as isize;
        };
        // SAFETY: `buf` is the page sysfs hands a show callback.
        let mut out = unsafe { sysfs::Show::from_raw(buf) };
        match (a.show)(&data, &mut out) {
            Ok(()) => out.len() as isize,
            Err(e) => e.to_errno() as isize,
        }
    }

    /// Tells the driver that posted queue `q` returned buffers.
    ///
    /// # Safety
    ///
    /// `data` is the published data of a driver `T` (see [`Self::data`]).
    pub(super) unsafe fn used_trampoline(
        data: *const c_void,
        dev: &Device<Bound>,
        q: queue::QueueId,
    ) {
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
    pub(super) unsafe extern "C" fn validate_callback(
        vdev: *mut bindings::virtio_device,
    ) -> core::ffi::c_int {
        // SAFETY: the bus passes a registered device, on one thread, before
        // negotiation completes.
        let dev = unsafe { Device::<Validate>::from_raw(vdev) };
        from_result(|| T::validate(dev).map(|()| 0))
    }

    /// # Safety
    ///
    /// Called by the virtio bus with a registered device matching our
    /// table, under its device lock.
    pub(super) unsafe extern "C" fn probe_callback(
        vdev: *mut bindings::virtio_device,
    ) -> core::ffi::c_int {
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
    pub(super) fn unwind_probe(
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
    pub(super) fn go_live(dev: &Device<Core>, bind: &Binding) -> Result {
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
    pub(super) unsafe extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
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
    pub(super) unsafe extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
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
    pub(super) unsafe extern "C" fn freeze_callback(
        vdev: *mut bindings::virtio_device,
    ) -> core::ffi::c_int {
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
    pub(super) unsafe extern "C" fn restore_callback(
        vdev: *mut bindings::virtio_device,
    ) -> core::ffi::c_int {
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
