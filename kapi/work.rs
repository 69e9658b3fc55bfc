// SPDX-License-Identifier: GPL-2.0

//! Work items that re-arm themselves (delayed work) and stop cleanly.
//!
//! The 6.12 kernel crate has workqueues (`kernel::workqueue::Queue`, the
//! system queues) and plain work items, but no delayed work and no way to
//! create a workqueue; both are here. A [`Work`] runs its handler on a
//! queue and queues itself again when the handler asks (now or after a
//! delay). Stopping (explicitly or by dropping it) cancels it, waits for a
//! running handler, and keeps it from being queued again.

use crate::kapi::{bindings, sync::class_ptr};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    c_str,
    prelude::*,
    str::CStr,
    sync::{Arc, ArcBorrow, LockClassKey},
    time::msecs_to_jiffies,
    types::Opaque,
    workqueue::{self, Queue},
};

/// What a work item asks for after one run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Next {
    /// Nothing more to do until queued again.
    Idle,
    /// Run again as soon as possible (after other work on the queue).
    Again,
    /// Run again after the given number of milliseconds.
    After(u32),
}

/// What a handler can learn about its own item while it runs.
pub(crate) struct Running<'a> {
    stopped: &'a AtomicBool,
}

impl Running<'_> {
    /// Whether the item is being stopped: a long handler should end soon
    /// (whoever stops it is waiting), and will not run again.
    pub(crate) fn stopping(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// The body of a work item.
pub(crate) trait WorkHandler: Send + Sync + 'static {
    /// Runs in process context on the item's workqueue; may sleep.
    fn run(&self, me: &Running<'_>) -> Next;
}

/// A workqueue created by the driver (`alloc_workqueue`), destroyed when
/// the last reference goes (except from a work item running on it: see
/// `run_trampoline`).
///
/// # Invariants
///
/// `0` is a live workqueue owned by this value.
pub(crate) struct OwnedQueue(core::ptr::NonNull<bindings::workqueue_struct>);

// SAFETY: workqueues are designed to be used from any thread.
unsafe impl Send for OwnedQueue {}
// SAFETY: see `Send`.
unsafe impl Sync for OwnedQueue {}

impl OwnedQueue {
    /// A new freezable workqueue for long, CPU-bound work (`WQ_FREEZABLE |
    /// WQ_CPU_INTENSIVE`), named `name`: such work neither holds up the
    /// system's queues nor runs while the system is frozen.
    pub(crate) fn freezable_cpu_intensive(name: &'static CStr) -> Result<Arc<Self>> {
        let flags = bindings::wq_flags_WQ_FREEZABLE | bindings::wq_flags_WQ_CPU_INTENSIVE;
        // SAFETY: `"%s"` takes exactly the one string argument passed, a
        // static NUL-terminated string; `max_active` 0 is the default.
        let raw = unsafe {
            bindings::alloc_workqueue(c_str!("%s").as_char_ptr(), flags, 0, name.as_char_ptr())
        };
        let raw = core::ptr::NonNull::new(raw).ok_or(ENOMEM)?;
        // INVARIANT: a fresh workqueue, now owned.
        Ok(Arc::new(Self(raw), GFP_KERNEL)?)
    }
}

impl core::ops::Deref for OwnedQueue {
    type Target = Queue;

    fn deref(&self) -> &Queue {
        // SAFETY: live workqueue (type invariant), valid while `self` is.
        unsafe { Queue::from_raw(self.0.as_ptr()) }
    }
}

impl Drop for OwnedQueue {
    fn drop(&mut self) {
        // Every `Work` on the queue holds a reference to it and stops its
        // item before letting go, so nothing is queued any more.
        // SAFETY: owned, live workqueue (type invariant); destroying it
        // drains what is left.
        unsafe { bindings::destroy_workqueue(self.0.as_ptr()) };
    }
}

/// The queue a [`Work`] runs on: a system queue or one of the driver's.
pub(crate) enum On {
    /// A system queue (`kernel::workqueue::system_freezable()` etc.).
    System(&'static Queue),
    /// A queue the driver created.
    Own(Arc<OwnedQueue>),
}

impl On {
    fn raw(&self) -> *mut bindings::workqueue_struct {
        let q: &Queue = match self {
            On::System(q) => q,
            On::Own(q) => q,
        };
        // `Queue` is `#[repr(transparent)]` over `Opaque<workqueue_struct>`
        // (rust/kernel/workqueue.rs); the crate's own accessor is private.
        core::ptr::from_ref(q)
            .cast_mut()
            .cast::<bindings::workqueue_struct>()
    }
}

// `On::raw` relies on the layout of a type whose field is private: a kernel
// crate that changed it would fail to build here.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<Queue>() == size_of::<bindings::workqueue_struct>());
    assert!(align_of::<Queue>() == align_of::<bindings::workqueue_struct>());
};

/// The system's freezable workqueue, whose work does not run while the
/// system is frozen for suspend or hibernation.
pub(crate) fn system_freezable() -> On {
    On::System(workqueue::system_freezable())
}

/// The system's unbound workqueue: its work runs on whichever CPU is free,
/// not necessarily the one that queued it, and also while the system
/// freezes.
pub(crate) fn system_unbound() -> On {
    On::System(workqueue::system_unbound())
}

/// # Invariants
///
/// `dwork` was initialised as `INIT_DELAYED_WORK` does (work and timer,
/// with lockdep classes of their own: [`Work::new`]) with [`run_trampoline::<H>`]
/// as its function; the struct lives in an [`Arc`], so it is pinned.
#[pin_data]
struct Inner<H: WorkHandler> {
    #[pin]
    dwork: Opaque<bindings::delayed_work>,
    queue: On,
    stopped: AtomicBool,
    handler: H,
}

// SAFETY: the `delayed_work` is only handed to the workqueue API, which is
// designed to be called from any thread; the handler is `Send + Sync`.
unsafe impl<H: WorkHandler> Send for Inner<H> {}
// SAFETY: see `Send`; shared access only reaches the workqueue API, atomics
// and `&H` (which is `Sync`).
unsafe impl<H: WorkHandler> Sync for Inner<H> {}

/// A work item that runs `H::run` on a workqueue, and runs it again when the
/// handler asks. Queueing an item that is already pending does nothing.
///
/// Once [`Work::stop`] has returned (and in any case once the `Work` is
/// dropped) the handler is not running and never runs again. The one
/// exception is a handler that stops or drops its own item: it cannot wait
/// for itself, so the call returns at once and the current run is the last
/// (the item's memory lives until it has returned).
///
/// # Invariants
///
/// `inner` came from `Arc::into_raw` and holds the reference this value
/// owns; every pointer handed to C is projected from it without references
/// (so it keeps that provenance).
pub(crate) struct Work<H: WorkHandler> {
    inner: *const Inner<H>,
}

// SAFETY: the `Arc<Inner<H>>` it holds is `Send + Sync` (see `Inner`).
unsafe impl<H: WorkHandler> Send for Work<H> {}
// SAFETY: see `Send`.
unsafe impl<H: WorkHandler> Sync for Work<H> {}

/// Creates a [`Work`] that runs `$handler` on `$queue`, named `$name` for
/// lockdep, with lockdep classes of its own (one per call site, for the work
/// and for its timer), as C's `INIT_DELAYED_WORK` gives one per expansion.
macro_rules! new_work {
    ($queue:expr, $handler:expr, $name:literal $(,)?) => {
        $crate::kapi::work::Work::new(
            $queue,
            $handler,
            ::kernel::c_str!($name),
            ::kernel::static_lock_class!(),
            ::kernel::static_lock_class!(),
        )
    };
}

impl<H: WorkHandler> Work<H> {
    /// Creates a work item, not yet queued, that will run `handler` on
    /// `queue`. Lockdep knows the work as `name`, in `work_key`'s class, and
    /// its timer in `timer_key`'s: [`new_work!`] makes them, one pair per
    /// call site, so that lockdep tells the items apart.
    pub(crate) fn new(
        queue: On,
        handler: H,
        name: &'static CStr,
        work_key: &'static LockClassKey,
        timer_key: &'static LockClassKey,
    ) -> Result<Self> {
        let init = pin_init!(Inner::<H> {
            // SAFETY: `slot` is valid for writes and pinned. The kernel
            // crate's `init_work_with_key` initialises the work half as
            // `INIT_WORK` does (not on the stack), and the helper the timer
            // half as `INIT_DELAYED_WORK` does: together they initialise the
            // whole `delayed_work`. The trampoline matches the handler type
            // stored alongside; `name` and the keys are static, as lockdep
            // keeps them.
            // INVARIANT: initialised with `run_trampoline::<H>`, in an Arc.
            dwork <- Opaque::ffi_init(|slot: *mut bindings::delayed_work| unsafe {
                bindings::init_work_with_key(
                    core::ptr::addr_of_mut!((*slot).work),
                    Some(run_trampoline::<H>),
                    false,
                    name.as_char_ptr(),
                    class_ptr(work_key),
                );
                bindings::init_delayed_work_timer_key(slot, name.as_char_ptr(), class_ptr(timer_key));
            }),
            queue,
            stopped: AtomicBool::new(false),
            handler,
        });
        let arc: Arc<Inner<H>> = Arc::pin_init(init, GFP_KERNEL)?;
        // INVARIANT: our reference, as a raw pointer.
        Ok(Self {
            inner: Arc::into_raw(arc),
        })
    }

    /// Queues the item to run now, also when a delayed run is pending (that
    /// one is brought forward). Safe from any context, interrupts included.
    pub(crate) fn queue(&self) {
        // SAFETY: `inner` is alive while `self` holds its reference.
        unsafe { Inner::queue_after(self.inner, 0, true) };
    }

    /// Stops the item: cancels it if pending, waits for a running handler to
    /// return (unless called from that handler), and keeps it from ever
    /// being queued again.
    pub(crate) fn stop(&self) {
        // SAFETY: as above.
        unsafe { Inner::stop(self.inner) };
    }
}

impl<H: WorkHandler> Inner<H> {
    /// The `delayed_work`, projected from `this` without a reference.
    ///
    /// # Safety
    ///
    /// `this` points to a live `Inner<H>`.
    unsafe fn dwork(this: *const Self) -> *mut bindings::delayed_work {
        // SAFETY: a field projection of a live value (caller's contract).
        unsafe { Opaque::raw_get(core::ptr::addr_of!((*this).dwork)) }
    }

    /// # Safety
    ///
    /// `this` points to a live `Inner<H>` held by an `Arc`, and was derived
    /// from the `Arc`'s raw pointer.
    unsafe fn queue_after(this: *const Self, ms: u32, modify: bool) {
        // SAFETY: live (caller's contract).
        let (stopped, queue) = unsafe { (&(*this).stopped, (*this).queue.raw()) };
        if stopped.load(Ordering::Acquire) {
            return;
        }
        let delay = msecs_to_jiffies(ms);
        // SAFETY: an initialised delayed work (type invariant) and a live
        // workqueue; the item stays valid until `stop` disabled it, which
        // `Work`'s `Drop` does before the memory can go.
        unsafe {
            let dwork = Self::dwork(this);
            if modify {
                bindings::mod_delayed_work(queue, dwork, delay);
            } else {
                bindings::queue_delayed_work(queue, dwork, delay);
            }
        }
    }

    /// # Safety
    ///
    /// As for [`Inner::queue_after`].
    unsafe fn stop(this: *const Self) {
        // SAFETY: live (caller's contract).
        unsafe { (*this).stopped.store(true, Ordering::Release) };
        // SAFETY: as above.
        let dwork = unsafe { Self::dwork(this) };
        // Disabling (unlike cancelling) also makes every later queueing
        // attempt a no-op, so a `queue` racing with `stop` cannot slip the
        // item back in.
        // SAFETY: `current_work` only reads the current task's state; the
        // work item's address is computed, not read.
        if unsafe { bindings::current_work() } == unsafe { &raw mut (*dwork).work } {
            // Called from our own handler: waiting for it would wait for
            // ever. The trampoline holds a reference until the handler
            // returns, and it does not re-queue a stopped item.
            // SAFETY: an initialised delayed work.
            unsafe { bindings::disable_delayed_work(dwork) };
        } else {
            // SAFETY: as above; this also waits for a running handler.
            unsafe { bindings::disable_delayed_work_sync(dwork) };
        }
    }
}

impl<H: WorkHandler> Drop for Work<H> {
    fn drop(&mut self) {
        // SAFETY: alive until the reference is given back below.
        unsafe { Inner::stop(self.inner) };
        // After this nothing can queue or run the item again (see `stop`),
        // so our reference may go; a handler still running holds its own.
        // SAFETY: the reference `new` took (type invariant), given back once.
        drop(unsafe { Arc::from_raw(self.inner) });
    }
}

/// Called by the workqueue for an item created by [`Work::new`].
///
/// # Safety
///
/// `work` must be the `work` field of the `delayed_work` inside an
/// `Inner<H>` held by an [`Arc`] whose count does not drop to zero before
/// this function takes its own reference. Only `Work::new` installs this
/// function, and the owning `Work` waits for a running trampoline before it
/// lets go (or, from inside the handler, lets go only after this reference
/// was taken).
unsafe extern "C" fn run_trampoline<H: WorkHandler>(work: *mut bindings::work_struct) {
    let offset = core::mem::offset_of!(Inner<H>, dwork)
        + core::mem::offset_of!(bindings::delayed_work, work);
    // `work` was projected from the `Arc`'s raw pointer (see `Work`), so
    // stepping back keeps its provenance.
    let raw = work
        .cast::<u8>()
        .wrapping_sub(offset)
        .cast::<Inner<H>>()
        .cast_const();
    // SAFETY: per the function's contract the `Arc` is alive now.
    let inner: Arc<Inner<H>> = unsafe { ArcBorrow::from_raw(raw) }.into();
    if inner.stopped.load(Ordering::Acquire) {
        return;
    }
    // A driver-owned queue must not be destroyed from a work item running
    // on it (destroying drains the queue, which waits for this very item):
    // hold a reference of our own across the end of the item.
    let own_queue = match &inner.queue {
        On::Own(q) => Some(q.clone()),
        On::System(_) => None,
    };
    let me = Running {
        stopped: &inner.stopped,
    };
    let again = match inner.handler.run(&me) {
        Next::Idle => None,
        Next::Again => Some(0),
        Next::After(ms) => Some(ms),
    };
    if let Some(ms) = again {
        // SAFETY: `raw` is alive (we hold `inner`) and came from the `Arc`.
        unsafe { Inner::queue_after(raw, ms, false) };
    }
    // Dropping `inner` may free the item (its `Work` went during the run).
    drop(inner);
    if let Some(q) = own_queue {
        if let Some(last) = q.into_unique_or_drop() {
            // Everything else let go of the queue while this item ran on
            // it: it cannot be destroyed from here. Keep it (a small leak)
            // rather than wait for ever.
            pr_warn!("a work item dropped the last reference to its own workqueue; leaking the workqueue\n");
            core::mem::forget(last);
        }
    }
}
