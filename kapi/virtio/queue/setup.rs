// SPDX-License-Identifier: GPL-2.0

//! Setting the virtqueues up, once, in probe or restore.

use super::*;

/// Sets up the virtqueues of a device, once, in probe or restore: declare
/// each queue in the device's order (its handle comes back at once, not
/// yet live), then [`QueueSetup::find`] creates them all.
pub(crate) struct QueueSetup<'a> {
    pub(super) bind: &'a Arc<Binding>,
    pub(super) names: [Option<&'static CStr>; MAX_VQS],
    pub(super) cores: [Option<Arc<QueueCore>>; MAX_VQS],
    pub(super) n: usize,
}

impl<'a> QueueSetup<'a> {
    pub(in crate::kapi::virtio) fn new(bind: &'a Arc<Binding>) -> Self {
        Self {
            bind,
            names: Default::default(),
            cores: Default::default(),
            n: 0,
        }
    }

    pub(super) fn declare(
        &mut self,
        name: Option<&'static CStr>,
        kind: Kind,
        drop_token: unsafe fn(*mut c_void),
    ) -> Result<Option<Arc<QueueCore>>> {
        if self.n >= MAX_VQS {
            return Err(EINVAL);
        }
        let bind = self.bind.clone();
        let core = match name {
            Some(_) => Some(Arc::pin_init(
                pin_init!(QueueCore {
                    bind,
                    live <- new_spinlock_irq!(Live { vq: None, open: false }, "QueueCore::live"),
                    kind,
                    used <- new_completion!("virtio::queue::used"),
                    drop_token,
                }),
                GFP_KERNEL,
            )?),
            None => None,
        };
        self.names[self.n] = name;
        self.cores[self.n] = core.clone();
        self.n += 1;
        Ok(core)
    }

    /// Declares a queue for synchronous round trips.
    pub(crate) fn sync(&mut self, name: &'static CStr) -> Result<SyncQueue> {
        let core = self
            .declare(Some(name), Kind::Sync, no_drop)?
            .ok_or(EINVAL)?;
        Ok(SyncQueue { core })
    }

    /// Declares a queue of owned buffers of type `B`, of discipline `kind`.
    pub(super) fn buf_queue<B: Buffer, K>(
        &mut self,
        name: &'static CStr,
        kind: Kind,
    ) -> Result<BufQueue<B, K>> {
        let core = self
            .declare(Some(name), kind, drop_boxed::<B>)?
            .ok_or(EINVAL)?;
        Ok(BufQueue {
            core,
            in_flight: 0,
            unkicked: false,
            _b: PhantomData,
        })
    }

    /// Declares a queue the device answers when it likes, with interrupts
    /// ([`super::Driver::buffers_used`]).
    pub(crate) fn posted<B: Buffer>(&mut self, name: &'static CStr) -> Result<PostedQueue<B>> {
        self.buf_queue(name, Kind::Posted)
    }

    /// Declares a queue the driver polls (no interrupts).
    pub(crate) fn polled<B: Buffer>(&mut self, name: &'static CStr) -> Result<PolledQueue<B>> {
        self.buf_queue(name, Kind::Polled)
    }

    /// Declares a queue whose owned buffers the driver waits for
    /// ([`WaitedQueue::wait`]); its interrupts wake the waiter only.
    pub(crate) fn waited<B: Buffer>(&mut self, name: &'static CStr) -> Result<WaitedQueue<B>> {
        self.buf_queue(name, Kind::Waited)
    }

    /// Declares a queue position the driver does not use (the device does
    /// not have it, or the driver did not negotiate its feature).
    pub(crate) fn skip(&mut self) -> Result {
        self.declare(None, Kind::Sync, no_drop).map(|_| ())
    }

    /// Creates every declared queue; their handles work from now on.
    ///
    /// `virtio_find_vqs` allocates with `GFP_KERNEL`: it may reclaim,
    /// compact or call the OOM killer, and those call the driver's
    /// shrinkers, OOM notifier and page migration, which may take the
    /// binding's `life` for reading (through a queue or config handle). So
    /// `life` is not held across it, only to check that the binding has no
    /// queues yet and, afterwards, to publish the new ones. Nothing else can
    /// create or tear down this binding's queues meanwhile: a `QueueSetup`
    /// exists only inside probe and restore (it borrows an `Arc` local to
    /// their callbacks, so it cannot be kept in the driver's `'static` data
    /// or handed to work), which the virtio core runs under the device lock,
    /// as it does remove and freeze (the only callers of teardown). Handles
    /// from before a freeze were closed by its teardown, so a failed
    /// operation on one (`reset_after_error`) returns without touching the
    /// device. Before the queues are published no operation can use them,
    /// and no interrupt reaches their callbacks' entries.
    pub(crate) fn find(self) -> Result {
        let bind = self.bind;
        {
            let _r = bind.life.read();
            // The binding has no queues (probe, or restore after teardown),
            // so creating them cannot duplicate any.
            // SAFETY: `life` is held.
            if unsafe { (*bind.state.get()).found } {
                return Err(EBUSY);
            }
        }
        // SAFETY: all-zero `virtqueue_info` is valid (no name, no callback).
        let mut info: [bindings::virtqueue_info; MAX_VQS] = unsafe { core::mem::zeroed() };
        let mut vqs = [core::ptr::null_mut::<bindings::virtqueue>(); MAX_VQS];
        for ((info, name), core) in info.iter_mut().zip(self.names).zip(&self.cores) {
            if let (Some(name), Some(core)) = (name, core) {
                info.name = name.as_char_ptr();
                if core.kind != Kind::Polled {
                    info.callback = Some(used_callback);
                }
            }
        }
        // SAFETY: `bind.vdev` is the device being probed or restored, kept
        // allocated by the binding, with its features negotiated and no
        // queues (checked above; see the method's docs for why that still
        // holds); `vqs` and `info` have `MAX_VQS >= n` entries; names are
        // static strings. A callback that fires before the entries are set
        // below finds none and returns. On error the transport has freed
        // what it created: nothing is owed.
        to_result(unsafe {
            bindings::virtio_find_vqs(
                bind.vdev.as_ptr(),
                self.n as u32,
                vqs.as_mut_ptr(),
                info.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        })?;
        let w = bind.life.write();
        // SAFETY: `life` is held for writing.
        let state = unsafe { &mut *bind.state.get() };
        // From here the transport holds resources (interrupts at least, even
        // with no queue) until `del_vqs`, which teardown calls because of
        // this.
        state.found = true;
        state.reset = false;
        // The transports number only the queues that exist (a position
        // without a name takes no index): the callback finds a queue by the
        // index the transport gave it.
        for (vq, core) in vqs.iter().zip(&self.cores) {
            let (Some(vq), Some(core)) = (NonNull::new(*vq), core) else {
                continue;
            };
            // SAFETY: `vq` was just created by `find_vqs`.
            let index = unsafe { (*vq.as_ptr()).index } as usize;
            core.live.with(|l| {
                l.vq = Some(vq);
                l.open = true;
            });
            if let Some(slot) = bind.queues.get(index) {
                // INVARIANT: one reference for the binding's table, given
                // back by `Binding::teardown`.
                slot.store(Arc::into_raw(core.clone()).cast_mut(), Ordering::Release);
            }
        }
        drop(w);
        Ok(())
    }
}
