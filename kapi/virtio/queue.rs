// SPDX-License-Identifier: GPL-2.0

//! Virtqueues, in four disciplines, each its own type so that they cannot
//! be mixed on one queue:
//!
//! - [`SyncQueue`]: the driver lends buffers and sleeps until the device
//!   has returned every one. When the call returns, the device holds
//!   nothing of what was lent: it gave it back, or (after a failure) the
//!   device was reset.
//! - [`PostedQueue`]: the driver hands over an owned buffer and the device
//!   returns it when it likes; the driver hears of it through
//!   [`super::Driver::buffers_used`] and takes it back.
//! - [`PolledQueue`]: as posted, without interrupts; the driver reaps.
//! - [`WaitedQueue`]: as posted, but the driver sleeps until the device
//!   returns a buffer ([`WaitedQueue::wait`]): it can hand over several,
//!   go on with other work while the device has them, and collect them
//!   later.
//!
//! A buffer handed over is owned by the queue (the ring's token) until the
//! device returns it or the layer resets the device and drops it. Handles
//! are made with the [`QueueSetup`] the layer passes to probe and restore,
//! and fail with `ENODEV` once their queues are torn down.

use super::{Binding, Bound, Device};
use crate::kapi::bindings;
use crate::kapi::sync::Completion;
use crate::kapi::sync::{RwSemRead, RwSemWrite, SpinLockIrq};
use core::{
    ffi::c_void, marker::PhantomData, mem::MaybeUninit, ptr::NonNull, sync::atomic::Ordering,
};
use kernel::{error::to_result, prelude::*, str::CStr, sync::Arc};

/// Most virtqueues a device may have with this layer.
pub(crate) const MAX_VQS: usize = 8;

/// Identifies a queue in [`super::Driver::buffers_used`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct QueueId(u16);

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
pub(super) fn new_faults() -> Result<Faults> {
    #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
    return Ok(Arc::new(HostFaults::default(), GFP_KERNEL)?);
    #[cfg(not(CONFIG_FAULT_INJECTION_DEBUG_FS))]
    Ok(())
}

#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
impl HostFaults {
    /// Whether to inject the fault counted by `knob` now (and count it).
    fn take(knob: &core::sync::atomic::AtomicU32) -> bool {
        knob.load(Ordering::Relaxed) != 0
            && knob
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
                .is_ok()
    }
}

#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
impl crate::kapi::debugfs::Knobs for HostFaults {
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &core::sync::atomic::AtomicU32)) {
        f(kernel::c_str!("inject_odd_used_len"), &self.odd_used_len);
        f(kernel::c_str!("inject_break_device"), &self.break_device);
    }
}

/// Memory a device can be handed, owned by the value.
///
/// # Safety
///
/// [`Buffer::region`] describes memory in the kernel's direct map that
/// `self` owns, valid for the length given, at an address that does not
/// change when `self` is moved, and that nothing but the device reads or
/// writes while the value sits on a queue. With `device_writes`, the device
/// may write all of it. A buffer the device still held at a reset is dropped
/// with the binding's lifecycle lock held: its `Drop` must not use that
/// binding's queues or config space (it would wait for itself).
pub(crate) unsafe trait Buffer: Send + 'static {
    /// The memory and whether the device may write it.
    fn region(&self) -> Region;
}

/// What [`Buffer::region`] returns.
pub(crate) struct Region {
    pub(crate) addr: *mut c_void,
    pub(crate) len: u32,
    pub(crate) device_writes: bool,
}

/// A buffer the device reads: kmalloc'd memory (never the stack, which may
/// not be in the direct map), filled by the driver.
///
/// A buffer has a capacity, fixed at creation, and a length (at first the
/// whole capacity): what the device is handed when it is posted.
pub(crate) struct OutBuf {
    bytes: KVec<u8>,
    len: usize,
}

impl OutBuf {
    /// A zeroed buffer of `len` bytes (at least one: an empty buffer has no
    /// memory a device could be pointed at).
    pub(crate) fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        Ok(Self {
            bytes: KVec::from_elem(0u8, len, GFP_KERNEL)?,
            len,
        })
    }

    /// The whole capacity, to fill.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Sets how much of the buffer the device is handed (at most all; an
    /// empty one cannot be posted).
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.bytes.len());
    }
}

// SAFETY: `KVec` memory is kmalloc'd (direct map), owned, and does not move
// with the `KVec`; `len` never exceeds it; the device only reads it.
unsafe impl Buffer for OutBuf {
    fn region(&self) -> Region {
        Region {
            addr: self.bytes.as_ptr().cast_mut().cast(),
            len: self.len as u32,
            device_writes: false,
        }
    }
}

/// One of two kinds of buffer, for a queue that carries both.
pub(crate) enum Either<A, B> {
    /// The first kind.
    Left(A),
    /// The second kind.
    Right(B),
}

// SAFETY: delegates to the held buffer, which meets the contract itself.
unsafe impl<A: Buffer, B: Buffer> Buffer for Either<A, B> {
    fn region(&self) -> Region {
        match self {
            Either::Left(a) => a.region(),
            Either::Right(b) => b.region(),
        }
    }
}

/// A value whose `Drop` may run wherever a queue drops what it holds: after
/// a reset, with the binding's lifecycle lock held for writing and under
/// whatever lock the driver held when the failed transfer was made (a queue
/// operation can find the device broken and reset it), in process context.
///
/// # Safety
///
/// Dropping a value of the type takes no lock but the kernel's own
/// internal ones (the page and slab allocators'), never waits for other
/// work or tasks, and uses no virtio queue or config space: otherwise a
/// reset could deadlock on a lock its caller holds, or on itself.
pub(crate) unsafe trait DropsAnywhere: Send + 'static {}

// SAFETY: dropping a `KBox` or `KVec` frees kmalloc'd memory (the slab
// allocator's own locks) after dropping its contents, which are
// `DropsAnywhere` themselves.
unsafe impl<T: DropsAnywhere> DropsAnywhere for KBox<T> {}
// SAFETY: as for `KBox`.
unsafe impl<T: DropsAnywhere> DropsAnywhere for KVec<T> {}

// SAFETY: plain numbers have no `Drop`.
unsafe impl DropsAnywhere for u8 {}
// SAFETY: as for `u8`.
unsafe impl DropsAnywhere for u32 {}
// SAFETY: as for `u8`.
unsafe impl DropsAnywhere for u64 {}

/// A buffer and a value that goes with it, for as long as the device has the
/// buffer: the queue owns both until the device returns the buffer, so what
/// the value stands for (pages the buffer describes to the host, say) is
/// not reused before the host is done with it. If the device is reset
/// first, both are dropped after the reset, with locks held: `with` must be
/// [`DropsAnywhere`]. The device sees only `buf`.
pub(crate) struct Bundle<B, T: DropsAnywhere> {
    /// What the device is handed.
    pub(crate) buf: B,
    /// What goes with it.
    pub(crate) with: T,
}

// SAFETY: the region is `buf`'s, which the bundle owns, so `B`'s guarantees
// hold for it as they would for `buf` alone (moving the bundle moves `buf`,
// whose memory does not move with it). The device never sees `with`.
unsafe impl<B: Buffer, T: DropsAnywhere> Buffer for Bundle<B, T> {
    fn region(&self) -> Region {
        self.buf.region()
    }
}

/// A scatterlist of memory a device may write, lent for one
/// [`SyncQueue::lend`] call.
///
/// # Safety
///
/// [`LentSg::raw`] returns a scatterlist of `nents` valid entries whose
/// last one carries the end marker (`virtqueue_add_*` walks it with
/// `sg_next`), of direct-map memory that nothing else reads or writes while
/// the value is borrowed.
pub(crate) unsafe trait LentSg {
    /// The entries.
    fn raw(&self) -> (*mut bindings::scatterlist, u32);
}

/// What a queue is set up for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sync,
    Posted,
    Polled,
    Waited,
}

/// Whether a queue can be used, and its virtqueue.
struct Live {
    /// The virtqueue, from `find` until the queues are deleted.
    vq: Option<NonNull<bindings::virtqueue>>,
    /// Whether operations may use it: cleared before the device is reset.
    open: bool,
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
    bind: Arc<Binding>,
    #[pin]
    live: SpinLockIrq<Live>,
    kind: Kind,
    #[pin]
    used: Completion,
    drop_token: unsafe fn(*mut c_void),
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
unsafe fn no_drop(_: *mut c_void) {}

/// `drop_token` of queues whose tokens are `KBox<B>`s.
///
/// # Safety
///
/// `token` came from `KBox::<B>::into_raw` and is not used again.
unsafe fn drop_boxed<B>(token: *mut c_void) {
    // SAFETY: per the function's contract.
    drop(unsafe { KBox::from_raw(token.cast::<B>()) });
}

impl QueueCore {
    /// Whether the queue is open (set up, and its device not reset since).
    pub(super) fn is_open(&self) -> bool {
        self.live.with(|l| l.open && l.vq.is_some())
    }

    /// The open virtqueue, for a synchronous operation, which must hold
    /// the binding's `life` for reading while it uses it.
    fn open_vq(&self, _life: &RwSemRead<'_>) -> Result<NonNull<bindings::virtqueue>> {
        self.live.with(|l| match (l.open, l.vq) {
            (true, Some(vq)) => Ok(vq),
            _ => Err(ENODEV),
        })
    }

    /// Runs `f` on the open virtqueue with the queue's lock held
    /// (interrupts off): for operations that never sleep.
    fn with_open<R>(&self, f: impl FnOnce(NonNull<bindings::virtqueue>) -> Result<R>) -> Result<R> {
        self.live.with(|l| match (l.open, l.vq) {
            (true, Some(vq)) => f(vq),
            _ => Err(ENODEV),
        })
    }

    /// Stops operations: after this none is in progress (posted ones held
    /// the lock taken here; the caller holds `life` for writing, so no
    /// synchronous one runs) and none starts.
    pub(super) fn close(&self, _life: &RwSemWrite<'_>) {
        self.live.with(|l| l.open = false);
    }

    /// After the device was reset (the caller holds `life` for writing):
    /// drops every buffer the ring still holds, and releases their DMA
    /// mappings, so that lent memory is untouched from here on. With
    /// `delete`, the queue forgets its virtqueue (about to be deleted).
    pub(super) fn drop_unused(&self, _life: &RwSemWrite<'_>, delete: bool) {
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
    pub(super) fn wake(&self) {
        self.used.complete();
    }

    /// Tells the device there are new buffers. Returns whether a fault
    /// knob asks for the device to be broken now, which the caller does
    /// with [`QueueCore::inject_break`] once it holds no queue lock.
    #[must_use]
    fn kick(&self, vq: NonNull<bindings::virtqueue>) -> bool {
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
    fn inject_break(&self, now: bool) {
        if now {
            // SAFETY: the binding keeps its device allocated (`Binding`'s
            // invariant), and this queue's handle keeps the binding; breaking
            // only takes the device's queue list lock and sets flags.
            unsafe { bindings::virtio_break_device(self.bind.vdev.as_ptr()) };
        }
    }

    /// A buffer the device returned: its token and used length.
    fn get_used(&self, vq: NonNull<bindings::virtqueue>) -> Option<(NonNull<c_void>, u32)> {
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
    unsafe fn add(
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
    fn wait_used(&self, vq: NonNull<bindings::virtqueue>) -> Result<(NonNull<c_void>, u32)> {
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
    fn quiet(&self, vq: NonNull<bindings::virtqueue>) {
        // SAFETY: an open virtqueue; only a hint to the device.
        unsafe { bindings::virtqueue_disable_cb(vq.as_ptr()) };
    }

    /// Never sleeps.
    fn ring_size(&self) -> u32 {
        // SAFETY: an open virtqueue (under its lock).
        self.with_open(|vq| Ok(unsafe { bindings::virtqueue_get_vring_size(vq.as_ptr()) }))
            .unwrap_or(0)
    }
}

/// Sets up the virtqueues of a device, once, in probe or restore: declare
/// each queue in the device's order (its handle comes back at once, not
/// yet live), then [`QueueSetup::find`] creates them all.
pub(crate) struct QueueSetup<'a> {
    bind: &'a Arc<Binding>,
    names: [Option<&'static CStr>; MAX_VQS],
    cores: [Option<Arc<QueueCore>>; MAX_VQS],
    n: usize,
}

impl<'a> QueueSetup<'a> {
    pub(super) fn new(bind: &'a Arc<Binding>) -> Self {
        Self {
            bind,
            names: Default::default(),
            cores: Default::default(),
            n: 0,
        }
    }

    fn declare(
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
    fn buf_queue<B: Buffer, K>(
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
    /// exists only inside probe and restore, which the virtio core runs
    /// under the device lock, as it does remove and freeze (the only
    /// callers of teardown). Before the queues are published no operation
    /// can use them, and no interrupt reaches their callbacks' entries.
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

/// Interrupt callback of every queue with interrupts.
///
/// # Safety
///
/// Called by the virtio core with a live virtqueue created by
/// [`QueueSetup::find`].
unsafe extern "C" fn used_callback(vq: *mut bindings::virtqueue) {
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

/// What [`SyncQueue::send`] did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    /// Buffers sent (and returned by the device): at least one.
    pub(crate) count: usize,
    /// Buffers the device returned with a used length other than 0.
    pub(crate) odd_lengths: u32,
}

/// A queue for synchronous round trips.
///
/// # Invariants
///
/// The buffers on this queue's ring are borrowed by the call that added
/// them ([`SyncQueue::send`], [`SyncQueue::lend`]), which does not return
/// before the device has used every one or has been reset: no token on the
/// ring outlives its call, and none is owned (the queue's `drop_token` does
/// nothing).
pub(crate) struct SyncQueue {
    core: Arc<QueueCore>,
}

impl SyncQueue {
    /// Number of descriptors in the ring (0 when not live). Never sleeps.
    pub(crate) fn ring_size(&self) -> u32 {
        self.core.ring_size()
    }

    /// Sends the parts `(offset, len)` of `buf` listed in `parts`, one
    /// descriptor each, kicks the device once and sleeps until it has used
    /// every one. Fills the ring at most: [`Sent::count`] says how many of
    /// `parts` went (at least one), and the caller sends the rest in
    /// another call. Empty parts are refused (`EINVAL`).
    ///
    /// The device only reads these buffers, so it must report a used length
    /// of 0; other lengths are counted in [`Sent::odd_lengths`]. Fails with
    /// `EIO` if the ring broke, after resetting the device: when this
    /// returns, the device holds nothing of `buf`. Process context.
    pub(crate) fn send(&mut self, buf: &OutBuf, parts: &[(usize, usize)]) -> Result<Sent> {
        might_sleep!();
        if parts.is_empty() {
            return Err(EINVAL);
        }
        let mut regions = [const { None::<Region> }; MAX_PARTS];
        for (slot, &(offset, len)) in regions.iter_mut().zip(parts) {
            let part = buf
                .bytes
                .get(offset..offset.saturating_add(len))
                .ok_or(EINVAL)?;
            if part.is_empty() {
                return Err(EINVAL);
            }
            *slot = Some(Region {
                addr: part.as_ptr().cast_mut().cast(),
                len: part.len() as u32,
                device_writes: false,
            });
        }
        let life = self.core.bind.life.read();
        let vq = self.core.open_vq(&life)?;
        let mut added = 0usize;
        for r in regions.iter().flatten() {
            // The token is the part's address; nobody dereferences it.
            // SAFETY: `vq` is open while `life` is held; `buf` is borrowed
            // until we return, and we return only once the device gave it
            // back or was reset and the ring let go of it (`settle`).
            if let Err(e) = unsafe { self.core.add(vq, r, r.addr) } {
                if added == 0 {
                    return Err(e);
                }
                break;
            }
            added += 1;
        }
        let mut sent = Sent {
            count: added,
            odd_lengths: 0,
        };
        let waited = self.finish(vq, added, |len| {
            if len != 0 {
                sent.odd_lengths += 1;
            }
        });
        drop(life);
        self.settle(waited).map(|()| sent)
    }

    /// Lends the device-writable scatterlist `sg` as one buffer, kicks the
    /// device and sleeps until it has used it. Adds without allocating
    /// (`GFP_NOWAIT`). As for [`SyncQueue::send`], when this returns the
    /// device holds nothing of `sg`, and the ring no longer maps it.
    pub(crate) fn lend(&mut self, sg: &dyn LentSg) -> Result {
        might_sleep!();
        let (raw, nents) = sg.raw();
        if nents == 0 {
            return Err(EINVAL);
        }
        let life = self.core.bind.life.read();
        let vq = self.core.open_vq(&life)?;
        let token = vq.as_ptr().cast::<c_void>();
        // We return only once the device gave `sg` back, or it was reset
        // and the ring let go of the entries (`settle`).
        // SAFETY: `sg` is a terminated list of `nents` valid entries whose
        // memory nobody else touches while it is borrowed (`LentSg`), for as
        // long as the device has it (see above); `vq` is open under `life`.
        to_result(unsafe {
            bindings::virtqueue_add_inbuf(
                vq.as_ptr(),
                raw,
                nents,
                token,
                bindings::GFP_NOWAIT | bindings::__GFP_NOWARN,
            )
        })?;
        let waited = self.finish(vq, 1, |_| {});
        drop(life);
        self.settle(waited)
    }

    /// Kicks and waits for `n` buffers, calling `each` with their lengths.
    fn finish(
        &self,
        vq: NonNull<bindings::virtqueue>,
        n: usize,
        mut each: impl FnMut(u32),
    ) -> Result {
        self.core.quiet(vq);
        let inject = self.core.kick(vq);
        self.core.inject_break(inject);
        for _ in 0..n {
            each(self.core.wait_used(vq)?.1);
        }
        Ok(())
    }

    /// After a wait, with `life` released: on failure the device may still
    /// hold what was lent, so it is reset, and the ring lets go of the
    /// buffers (unmapping them), before the caller gets the error.
    fn settle(&self, waited: Result) -> Result {
        if waited.is_err() {
            self.core.bind.reset_after_error(&self.core);
        }
        waited
    }
}

/// Most parts one [`SyncQueue::send`] takes.
pub(crate) const MAX_PARTS: usize = 16;

/// A queue of owned buffers of type `B`; see [`PostedQueue`],
/// [`PolledQueue`] and [`WaitedQueue`]. Its operations never sleep, except
/// a waited queue's `kick` and `wait` (process context only): the others
/// may be used in any context, [`super::Driver::buffers_used`] included.
///
/// # Invariants
///
/// Every token on this queue's ring is a `KBox<B>` turned into a raw
/// pointer by the add that put it there, owned by the ring until the
/// device returns it (`take` and `wait` turn it back into the box) or the
/// device is reset (the queue's `drop_token`, `drop_boxed::<B>`, drops it
/// then). Only this handle adds to the ring, and only `B`s, so `take` and
/// `wait` may read any token they get back as a `KBox<B>`.
pub(crate) struct BufQueue<B: Buffer, K> {
    core: Arc<QueueCore>,
    /// Buffers this handle put on the ring that it has not taken back (a
    /// [`WaitedQueue`] keeps it exact: it sets it to 0 when the device was
    /// reset and the ring dropped them).
    in_flight: usize,
    /// Buffers were added since the last kick (a [`WaitedQueue`]'s `wait`
    /// kicks first: the device might not look at them otherwise).
    unkicked: bool,
    _b: PhantomData<fn(B) -> (B, K)>,
}

/// Marker of [`PostedQueue`].
pub(crate) struct Posted;
/// Marker of [`PolledQueue`].
pub(crate) struct Polled;

/// A queue the device answers when it likes, with interrupts.
pub(crate) type PostedQueue<B> = BufQueue<B, Posted>;
/// A queue the driver polls.
pub(crate) type PolledQueue<B> = BufQueue<B, Polled>;
/// Marker of [`WaitedQueue`].
pub(crate) struct Waited;
/// A queue whose sender hands over owned buffers, goes on, and later sleeps
/// until the device returns them.
pub(crate) type WaitedQueue<B> = BufQueue<B, Waited>;

/// Disciplines whose `post` kicks at once, under the queue's lock, so that
/// it never sleeps. A waited queue has no `post`: it adds, then kicks
/// outside that lock ([`WaitedQueue::kick`]).
pub(crate) trait KickOnPost {}
impl KickOnPost for Posted {}
impl KickOnPost for Polled {}

impl<B: Buffer, K> BufQueue<B, K> {
    /// Which queue this is (as [`super::Driver::buffers_used`] names it),
    /// once live.
    pub(crate) fn id(&self) -> Option<QueueId> {
        // SAFETY: an open virtqueue (under its lock).
        let index = self
            .core
            .with_open(|vq| Ok(unsafe { (*vq.as_ptr()).index }));
        index.ok().map(|i| QueueId(i as u16))
    }

    /// Number of descriptors in the ring (0 when not live).
    pub(crate) fn ring_size(&self) -> u32 {
        self.core.ring_size()
    }

    /// Free descriptors in the ring right now (0 when not live).
    pub(crate) fn free_descriptors(&self) -> u32 {
        // SAFETY: an open virtqueue (under its lock); a plain field.
        self.core
            .with_open(|vq| Ok(unsafe { (*vq.as_ptr()).num_free }))
            .unwrap_or(0)
    }

    /// Puts `buf` on the ring, and with `kick` kicks the device under the
    /// same lock; returns what [`QueueCore::kick`] returned (false without
    /// a kick). On failure the buffer comes back with the error.
    fn put(&mut self, buf: KBox<B>, kick: bool) -> core::result::Result<bool, (KBox<B>, Error)> {
        let region = buf.region();
        let token = KBox::into_raw(buf).cast::<c_void>();
        let core = &self.core;
        let put = core.with_open(|vq| {
            // SAFETY: `vq` is open (under its lock). The buffer is owned by
            // the ring from here (its token) until `take`, `wait` or the
            // teardown's detach turns the token back into the box.
            unsafe { core.add(vq, &region, token) }?;
            Ok(kick && core.kick(vq))
        });
        match put {
            Ok(inject) => {
                self.in_flight += 1;
                Ok(inject)
            }
            // SAFETY: not added, so the box is still ours.
            Err(e) => Err((unsafe { KBox::from_raw(token.cast::<B>()) }, e)),
        }
    }

    /// A buffer the device has returned, with its used length.
    pub(crate) fn take(&mut self) -> Option<(KBox<B>, u32)> {
        let (token, len) = self
            .core
            .with_open(|vq| self.core.get_used(vq).ok_or(ENOENT))
            .ok()?;
        self.in_flight = self.in_flight.saturating_sub(1);
        // SAFETY: every token on this ring is a `KBox<B>` from `post` (or
        // `add`), and the core hands each back once.
        Some((unsafe { KBox::from_raw(token.as_ptr().cast::<B>()) }, len))
    }
}

impl<B: Buffer, K: KickOnPost> BufQueue<B, K> {
    /// Hands `buf` to the device and kicks it. The queue owns the buffer
    /// until [`BufQueue::take`] returns it (or the device is reset, when it
    /// is dropped). On failure the buffer comes back with the error. The
    /// buffer comes boxed, so that posting never allocates.
    pub(crate) fn post(&mut self, buf: KBox<B>) -> core::result::Result<(), (KBox<B>, Error)> {
        let inject = self.put(buf, true)?;
        self.core.inject_break(inject);
        Ok(())
    }
}

impl<B: Buffer> WaitedQueue<B> {
    /// Puts `buf` on the ring without telling the device yet
    /// ([`WaitedQueue::kick`] does). The queue owns the buffer from here
    /// until [`WaitedQueue::wait`] returns it, or the device is reset and
    /// it is dropped. On failure (`ENOSPC`: the ring is full; `ENODEV`:
    /// the queue is gone) the buffer comes back with the error. Never
    /// sleeps.
    pub(crate) fn add(&mut self, buf: KBox<B>) -> core::result::Result<(), (KBox<B>, Error)> {
        self.put(buf, false)?;
        self.unkicked = true;
        Ok(())
    }

    /// Tells the device about the buffers added since the last kick.
    /// Process context; may sleep (it takes the binding's `life`, which
    /// setup, reset and teardown hold for writing). The kick runs with
    /// interrupts on and no spinlock held: a host that answers during the
    /// kick, as QEMU does without ioeventfd, does its work there.
    pub(crate) fn kick(&mut self) {
        might_sleep!();
        self.unkicked = false;
        let core = &self.core;
        // Holding `life` for reading keeps the queue from being closed, its
        // device reset or its virtqueue deleted until the kick is over.
        let life = core.bind.life.read();
        let inject = core.open_vq(&life).map(|vq| {
            // The waiter asks for the interrupt only when it has to sleep.
            core.quiet(vq);
            core.kick(vq)
        });
        drop(life);
        core.inject_break(inject.unwrap_or(false));
    }

    /// Buffers on the ring, added and not yet returned: 0 once the queue is
    /// closed (its device reset, by this handle's `wait` or by anything
    /// else, drops what the ring held).
    pub(crate) fn in_flight(&self) -> usize {
        if self.core.is_open() {
            self.in_flight
        } else {
            0
        }
    }

    /// Sleeps until the device returns one of the buffers on the ring (in
    /// whatever order it uses them) and returns it with its used length;
    /// kicks first if buffers were added since the last kick.
    /// `ENOENT` at once if none is on the ring. On any other failure
    /// (`EIO`: the ring broke or the device needs a reset; `ENODEV`: the
    /// queue is gone) the device has been reset and every buffer it had
    /// dropped before this returns: [`WaitedQueue::in_flight`] is 0 then.
    /// Process context.
    pub(crate) fn wait(&mut self) -> Result<(KBox<B>, u32)> {
        might_sleep!();
        if self.in_flight == 0 {
            return Err(ENOENT);
        }
        if self.unkicked {
            self.kick();
        }
        let life = self.core.bind.life.read();
        let used = self
            .core
            .open_vq(&life)
            .and_then(|vq| self.core.wait_used(vq));
        drop(life);
        match used {
            Ok((token, len)) => {
                self.in_flight -= 1;
                // SAFETY: every token on this ring is a `KBox<B>` from
                // `add`, and the core hands each back once.
                Ok((unsafe { KBox::from_raw(token.as_ptr().cast::<B>()) }, len))
            }
            Err(e) => {
                // Reset (unless a teardown or an earlier reset closed the
                // queue, which reset the device and dropped its buffers
                // already): nothing of ours is on the ring after this.
                self.core.bind.reset_after_error(&self.core);
                self.in_flight = 0;
                Err(e)
            }
        }
    }
}
