// SPDX-License-Identifier: GPL-2.0

//! The layer's state of a bound device: its lifecycle lock, the driver
//! data, the queues, and teardown.

use super::*;

/// Lifecycle state of a binding, guarded by [`Binding::life`].
pub(super) struct Life {
    /// Whether the driver is bound.
    pub(super) bound: bool,
    /// Between a freeze and the restore callback: the features may not
    /// hold any more (a restore can fail before the driver sees it).
    pub(super) frozen: bool,
    /// Whether `find_vqs` succeeded and `del_vqs` is still owed.
    pub(super) found: bool,
    /// Whether the device was reset after a failed transfer since the
    /// queues were set up: it must not be made live.
    pub(super) reset: bool,
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
pub(super) struct Binding {
    pub(super) vdev: NonNull<bindings::virtio_device>,
    pub(super) _dev: ARef<kernel::device::Device>,
    #[pin]
    pub(super) life: RwSem,
    pub(super) state: UnsafeCell<Life>,
    pub(super) data: AtomicPtr<c_void>,
    /// `Adapter::<T>::used_trampoline` for the bound driver's `T`.
    pub(super) notify: unsafe fn(*const c_void, &Device<Bound>, queue::QueueId),
    pub(super) queues: [AtomicPtr<queue::QueueCore>; queue::MAX_VQS],
    /// Set once a device that asked to be reset was given up on.
    pub(super) gave_up: AtomicBool,
    /// Set once the device was reset after a failed transfer.
    pub(super) reset_after_error: AtomicBool,
    pub(super) debugfs: Option<Arc<Dir>>,
    pub(super) faults: queue::Faults,
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
    pub(super) unsafe fn arc_of(vdev: *mut bindings::virtio_device) -> Arc<Binding> {
        // SAFETY: `priv` holds one reference while bound, so the count is
        // not zero while we take another.
        unsafe { ArcBorrow::from_raw((*vdev).priv_.cast::<Binding>().cast_const()) }.into()
    }

    /// Whether the device set `DEVICE_NEEDS_RESET`: it hit an error and, by
    /// the virtio spec, uses no buffer any more. The device is then broken
    /// on the guest side too, so every sender fails at once instead of
    /// waiting for an answer that cannot come. Said once per binding.
    pub(super) fn needs_reset(&self) -> bool {
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
    pub(super) fn break_device(&self) {
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
    pub(super) fn wake_all(&self, _r: &RwSemRead<'_>) {
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
    pub(super) fn close_and_reset(&self, w: &RwSemWrite<'_>, delete: bool) {
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
    pub(super) fn teardown(&self, unbind: bool) {
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
    pub(super) fn reset_after_error(&self, q: &queue::QueueCore) {
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
