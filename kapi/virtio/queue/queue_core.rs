// SPDX-License-Identifier: GPL-2.0

//! The state of one virtqueue shared by its handle and the binding, and
//! the interrupt callback.

use super::*;

/// What a queue is set up for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Sync,
    Posted,
    Polled,
    Waited,
}

/// Whether a queue can be used, and its virtqueue.
pub(super) struct Live {
    /// The virtqueue, from `find` until the queues are deleted.
    pub(super) vq: Option<NonNull<bindings::virtqueue>>,
    /// Whether operations may use it: cleared before the device is reset.
    pub(super) open: bool,
}

/// The state of one queue, shared by its handle and the binding.
///
/// # Invariants
///
/// `live.vq` is this queue's virtqueue from `find` until the binding
/// deletes the queues; while `live.open`, the device is not being reset and
/// the virtqueue may be used. An operation holds `live` (posted and polled
/// queues, which never sleep, and a waited queue's `add`) or holds the
/// binding's `life` for reading and saw `open` (synchronous queues and a
/// waited queue's `kick` and `wait`, which may sleep); closing takes both,
/// so once a queue is closed no operation is using it. `drop_token` frees a
/// token this queue's handle put on the ring.
#[pin_data]
pub(crate) struct QueueCore {
    pub(super) bind: Arc<Binding>,
    #[pin]
    pub(super) live: SpinLockIrq<Live>,
    pub(super) kind: Kind,
    #[pin]
    pub(super) used: Completion,
    pub(super) drop_token: unsafe fn(*mut c_void),
}

// SAFETY: `live` is behind its lock (type invariant); the completion
// synchronises itself.
unsafe impl Send for QueueCore {}
// SAFETY: see `Send`.
unsafe impl Sync for QueueCore {}

/// `drop_token` of queues whose tokens own nothing (sync queues lend).
///
/// # Safety
///
/// None: the token is not used.
pub(super) unsafe fn no_drop(_: *mut c_void) {}

/// `drop_token` of queues whose tokens are `KBox<B>`s.
///
/// # Safety
///
/// `token` came from `KBox::<B>::into_raw` and is not used again.
pub(super) unsafe fn drop_boxed<B>(token: *mut c_void) {
    // SAFETY: per the function's contract.
    drop(unsafe { KBox::from_raw(token.cast::<B>()) });
}

impl QueueCore {
    /// Whether the queue is open (set up, and its device not reset since).
    pub(in crate::kapi::virtio) fn is_open(&self) -> bool {
        self.live.with(|l| l.open && l.vq.is_some())
    }

    /// The open virtqueue, for a synchronous operation, which must hold
    /// the binding's `life` for reading while it uses it.
    pub(super) fn open_vq(&self, _life: &RwSemRead<'_>) -> Result<NonNull<bindings::virtqueue>> {
        self.live.with(|l| match (l.open, l.vq) {
            (true, Some(vq)) => Ok(vq),
            _ => Err(ENODEV),
        })
    }

    /// Runs `f` on the open virtqueue with the queue's lock held
    /// (interrupts off): for operations that never sleep.
    pub(super) fn with_open<R>(
        &self,
        f: impl FnOnce(NonNull<bindings::virtqueue>) -> Result<R>,
    ) -> Result<R> {
        self.live.with(|l| match (l.open, l.vq) {
            (true, Some(vq)) => f(vq),
            _ => Err(ENODEV),
        })
    }

    /// Stops operations: after this none is in progress (posted ones held
    /// the lock taken here; the caller holds `life` for writing, so no
    /// synchronous one runs) and none starts.
    pub(in crate::kapi::virtio) fn close(&self, _life: &RwSemWrite<'_>) {
        self.live.with(|l| l.open = false);
    }

    /// After the device was reset (the caller holds `life` for writing):
    /// drops every buffer the ring still holds, and releases their DMA
    /// mappings, so that lent memory is untouched from here on. With
    /// `delete`, the queue forgets its virtqueue (about to be deleted).
    pub(in crate::kapi::virtio) fn drop_unused(&self, _life: &RwSemWrite<'_>, delete: bool) {
        let vq = self.live.with(|l| {
            let vq = l.vq;
            if delete {
                l.vq = None;
            }
            vq
        });
        let Some(vq) = vq else {
            return;
        };
        loop {
            // SAFETY: a virtqueue of a reset device that no operation uses
            // (closed): detaching is what it is for.
            let token = unsafe { bindings::virtqueue_detach_unused_buf(vq.as_ptr()) };
            if token.is_null() {
                break;
            }
            // SAFETY: a token this queue's handle put on the ring.
            unsafe { (self.drop_token)(token) };
        }
    }

    /// Wakes a sender sleeping on the queue (teardown).
    pub(in crate::kapi::virtio) fn wake(&self) {
        self.used.complete();
    }

    /// Tells the device there are new buffers. Returns whether a fault
    /// knob asks for the device to be broken now, which the caller does
    /// with [`QueueCore::inject_break`] once it holds no queue lock.
    #[must_use]
    pub(super) fn kick(&self, vq: NonNull<bindings::virtqueue>) -> bool {
        // SAFETY: an open virtqueue (see `open_vq`/`with_open`); the
        // handle's `&mut self` serialises operations on it.
        unsafe { bindings::virtqueue_kick(vq.as_ptr()) };
        #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
        return HostFaults::take(&self.bind.faults.break_device);
        #[cfg(not(CONFIG_FAULT_INJECTION_DEBUG_FS))]
        false
    }

    /// Breaks the device the way a transport does when it disappears, if
    /// `now` (from [`QueueCore::kick`]). Not under `live`: breaking takes
    /// the core's list lock, which is taken elsewhere with interrupts on.
    pub(super) fn inject_break(&self, now: bool) {
        if now {
            // SAFETY: the binding keeps its device allocated (`Binding`'s
            // invariant), and this queue's handle keeps the binding; breaking
            // only takes the device's queue list lock and sets flags.
            unsafe { bindings::virtio_break_device(self.bind.vdev.as_ptr()) };
        }
    }

    /// A buffer the device returned: its token and used length.
    pub(super) fn get_used(
        &self,
        vq: NonNull<bindings::virtqueue>,
    ) -> Option<(NonNull<c_void>, u32)> {
        let mut len = 0u32;
        // SAFETY: an open virtqueue, serialised by the handle.
        let token = NonNull::new(unsafe { bindings::virtqueue_get_buf(vq.as_ptr(), &mut len) })?;
        #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
        if HostFaults::take(&self.bind.faults.odd_used_len) {
            len = 4096;
        }
        Some((token, len))
    }

    /// Adds one buffer of `region` with `token`.
    ///
    /// # Safety
    ///
    /// `vq` is open. The memory must stay valid and untouched by the driver
    /// until the device returns `token` or the device is reset and the
    /// buffer detached.
    pub(super) unsafe fn add(
        &self,
        vq: NonNull<bindings::virtqueue>,
        region: &Region,
        token: *mut c_void,
    ) -> Result {
        // An empty region has no memory behind it (an empty `KVec` points
        // nowhere), and the core refuses empty buffers anyway.
        if region.len == 0 {
            return Err(EINVAL);
        }
        // Indirect tables are the only thing adding can allocate; without
        // one (or if it cannot be had at once) the ring's own descriptors
        // are used. Adding never sleeps.
        let gfp = bindings::GFP_NOWAIT | bindings::__GFP_NOWARN;
        let mut sg = MaybeUninit::<bindings::scatterlist>::uninit();
        // SAFETY: `sg` is valid for writes; the region is direct-map memory
        // valid for `len` bytes (caller's contract, `Buffer`'s contract).
        to_result(unsafe {
            bindings::sg_init_one(sg.as_mut_ptr(), region.addr, region.len);
            if region.device_writes {
                bindings::virtqueue_add_inbuf(vq.as_ptr(), sg.as_mut_ptr(), 1, token, gfp)
            } else {
                bindings::virtqueue_add_outbuf(vq.as_ptr(), sg.as_mut_ptr(), 1, token, gfp)
            }
        })
    }

    /// Waits for the device to return a buffer; returns its token and used
    /// length.
    /// Asks for the interrupt only if it has to sleep, and wakes up every
    /// second to notice a ring the core marked broken (its interrupts are
    /// ignored from then on) or a device that asked to be reset; fails
    /// with `EIO` then.
    pub(super) fn wait_used(
        &self,
        vq: NonNull<bindings::virtqueue>,
    ) -> Result<(NonNull<c_void>, u32)> {
        loop {
            if let Some(used) = self.get_used(vq) {
                return Ok(used);
            }
            // SAFETY: an open virtqueue, serialised by the handle.
            if unsafe { bindings::virtqueue_is_broken(vq.as_ptr()) } {
                return Err(EIO);
            }
            // Signals from earlier rounds should not cut this sleep short
            // (if one slips through, the loop just checks again).
            self.used.reinit();
            // SAFETY: as above.
            if !unsafe { bindings::virtqueue_enable_cb(vq.as_ptr()) } {
                // A buffer came back meanwhile: take it without sleeping.
                self.quiet(vq);
                continue;
            }
            let signalled = self.used.wait_timeout(1000);
            self.quiet(vq);
            // SAFETY: as above.
            let broken = unsafe { bindings::virtqueue_is_broken(vq.as_ptr()) };
            if broken || (!signalled && self.bind.needs_reset()) {
                return Err(EIO);
            }
        }
    }

    /// Asks the device not to interrupt when it returns buffers: a sender
    /// asks for the interrupt only when it has to sleep.
    pub(super) fn quiet(&self, vq: NonNull<bindings::virtqueue>) {
        // SAFETY: an open virtqueue; only a hint to the device.
        unsafe { bindings::virtqueue_disable_cb(vq.as_ptr()) };
    }

    /// Never sleeps.
    pub(super) fn ring_size(&self) -> u32 {
        // SAFETY: an open virtqueue (under its lock).
        self.with_open(|vq| Ok(unsafe { bindings::virtqueue_get_vring_size(vq.as_ptr()) }))
            .unwrap_or(0)
    }
}

/// Interrupt callback of every queue with interrupts.
///
/// # Safety
///
/// Called by the virtio core with a live virtqueue created by
/// [`QueueSetup::find`].
pub(super) unsafe extern "C" fn used_callback(vq: *mut bindings::virtqueue) {
    // SAFETY: `vq` is live for the call, and so is its device.
    let (vdev, index) = unsafe { ((*vq).vdev, (*vq).index as usize) };
    // Teardown breaks the device (a broken ring's interrupt calls no
    // callback) and synchronises with running callbacks before the entries,
    // and only after `del_vqs` the cores, can go.
    // SAFETY: while the device has queues the driver is bound and `priv` is
    // its binding (see above).
    let bind = unsafe { &*(*vdev).priv_.cast::<Binding>() };
    let Some(q) = bind.queues.get(index).map(|s| s.load(Ordering::Acquire)) else {
        return;
    };
    if q.is_null() {
        return;
    }
    // SAFETY: a live entry (see above).
    let q = unsafe { &*q };
    q.used.complete();
    if q.kind == Kind::Posted {
        let data = bind.data.load(Ordering::Acquire);
        if !data.is_null() {
            // SAFETY: interrupt context on a bound device: `Bound`.
            let dev = unsafe { Device::<Bound>::from_raw(vdev) };
            // SAFETY: `data` is the published driver data; remove takes it
            // only before the reset that this callback finishes ahead of.
            unsafe { (bind.notify)(data, dev, QueueId(index as u16)) };
        }
    }
}
