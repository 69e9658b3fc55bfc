// SPDX-License-Identifier: GPL-2.0

//! Work items on a workqueue: the glue between interrupt-time events (a
//! config change, a returned buffer) and the process-context balloon work.

use core::{
    ptr::NonNull,
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{
    bindings, c_str,
    prelude::*,
    str::CStr,
    sync::Arc,
    time::{msecs_to_jiffies, Jiffies},
    types::Opaque,
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

/// The body of a work item.
pub(crate) trait WorkHandler: Send + Sync + 'static {
    /// Runs in process context on the item's workqueue; may sleep.
    fn run(&self) -> Next;
}

/// A workqueue the driver created; destroyed when the last [`Queue`]
/// referring to it goes.
///
/// # Invariants
///
/// `0` is a live workqueue from `alloc_workqueue`, owned by this value.
struct OwnedQueue(NonNull<bindings::workqueue_struct>);

// SAFETY: workqueues are designed to be used from any thread.
unsafe impl Send for OwnedQueue {}
// SAFETY: see `Send`.
unsafe impl Sync for OwnedQueue {}

impl Drop for OwnedQueue {
    fn drop(&mut self) {
        // Every `Work` on the queue holds a `Queue` that keeps this value
        // alive and stops its item before letting go.
        // SAFETY: owned, live workqueue (type invariant) on which nothing is
        // queued any more (see above); destroying drains what is left.
        unsafe { bindings::destroy_workqueue(self.0.as_ptr()) };
    }
}

/// A workqueue a [`Work`] can run on.
///
/// # Invariants
///
/// `raw` is a live workqueue: a system one, or the one `owner` keeps alive.
#[derive(Clone)]
pub(crate) struct Queue {
    raw: *mut bindings::workqueue_struct,
    owner: Option<Arc<OwnedQueue>>,
}

// SAFETY: workqueues are designed to be used from any thread.
unsafe impl Send for Queue {}
// SAFETY: see `Send`.
unsafe impl Sync for Queue {}

impl Queue {
    /// The system's freezable workqueue (`system_freezable_wq`): its work
    /// does not run while the system is frozen for suspend or hibernation.
    pub(crate) fn system_freezable() -> Self {
        // SAFETY: `system_freezable_wq` is set up at boot, before any module
        // loads, and never changes or goes away afterwards.
        let raw = unsafe { bindings::system_freezable_wq };
        // INVARIANT: a system workqueue lives for ever.
        Self { raw, owner: None }
    }

    /// A new freezable workqueue for long, CPU-bound work (`WQ_FREEZABLE |
    /// WQ_CPU_INTENSIVE`), named `name`, so that such work neither holds up
    /// the system's queues nor runs while the system is frozen.
    pub(crate) fn new_freezable_cpu_intensive(name: &'static CStr) -> Result<Self> {
        let flags = bindings::wq_flags_WQ_FREEZABLE | bindings::wq_flags_WQ_CPU_INTENSIVE;
        // SAFETY: `"%s"` takes exactly the one string argument passed, a
        // static NUL-terminated string; `max_active` 0 is the default.
        let raw = unsafe {
            bindings::alloc_workqueue(c_str!("%s").as_char_ptr(), flags, 0, name.as_char_ptr())
        };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        // INVARIANT: a fresh workqueue, now owned.
        let owner = Arc::new(OwnedQueue(raw), GFP_KERNEL)?;
        Ok(Self {
            raw: raw.as_ptr(),
            owner: Some(owner),
        })
    }
}

/// # Invariants
///
/// `dwork` was initialised by `init_delayed_work` with [`run_trampoline::<H>`]
/// as its function and is pinned. `queue` is a live workqueue.
#[pin_data]
struct Inner<H: WorkHandler> {
    #[pin]
    dwork: Opaque<bindings::delayed_work>,
    queue: Queue,
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
/// dropped) the handler is not running and never runs again.
pub(crate) struct Work<H: WorkHandler> {
    inner: Pin<KBox<Inner<H>>>,
}

impl<H: WorkHandler> Work<H> {
    /// Creates a work item, not yet queued, that will run `handler` on `queue`.
    pub(crate) fn new(queue: Queue, handler: H) -> Result<Self> {
        let init = pin_init!(Inner::<H> {
            // SAFETY: `init_delayed_work` fully initialises the pinned slot;
            // the trampoline matches the handler type stored alongside.
            // INVARIANT: initialised with `run_trampoline::<H>`, and pinned.
            dwork <- Opaque::ffi_init(|slot| unsafe {
                bindings::init_delayed_work(slot, Some(run_trampoline::<H>))
            }),
            queue,
            stopped: AtomicBool::new(false),
            handler,
        });
        Ok(Self {
            inner: KBox::pin_init(init, GFP_KERNEL)?,
        })
    }

    /// The handler this item runs.
    pub(crate) fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// Queues the item to run now, also when a delayed run is pending (that
    /// one is brought forward). Safe from any context, interrupts included.
    pub(crate) fn queue(&self) {
        self.inner.queue_after_jiffies(0, true);
    }

    /// Queues the item to run after `ms` milliseconds; if it is already
    /// pending, moves its start to `ms` from now.
    pub(crate) fn queue_after(&self, ms: u32) {
        self.inner.queue_after_jiffies(msecs_to_jiffies(ms), true);
    }

    /// Stops the item: cancels it if pending, waits for a running handler to
    /// return, and keeps it from ever being queued again.
    pub(crate) fn stop(&self) {
        self.inner.stop();
    }
}

impl<H: WorkHandler> Inner<H> {
    fn queue_after_jiffies(&self, delay: Jiffies, modify: bool) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: `dwork` is an initialised delayed work and `queue` a live
        // workqueue (type invariants); the item stays valid until it is
        // cancelled in `stop`, which `Drop` calls before freeing it.
        unsafe {
            if modify {
                bindings::mod_delayed_work(self.queue.raw, self.dwork.get(), delay);
            } else {
                bindings::queue_delayed_work(self.queue.raw, self.dwork.get(), delay);
            }
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        // Disabling (unlike cancelling) also makes every later queueing
        // attempt a no-op, so a `queue` racing with `stop` cannot slip the
        // item back in; it also waits for a running handler.
        // SAFETY: `dwork` is an initialised delayed work (type invariant).
        unsafe { bindings::disable_delayed_work_sync(self.dwork.get()) };
    }
}

impl<H: WorkHandler> Drop for Work<H> {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

/// Called by the workqueue for an item created by [`Work::new`].
///
/// # Safety
///
/// `work` must be the `work` field of the `delayed_work` inside a live
/// `Inner<H>`; this holds because only `Work::new` installs this function.
unsafe extern "C" fn run_trampoline<H: WorkHandler>(work: *mut bindings::work_struct) {
    let offset = core::mem::offset_of!(Inner<H>, dwork)
        + core::mem::offset_of!(bindings::delayed_work, work);
    // SAFETY: per the function's safety contract `work` lies `offset` bytes
    // into a live `Inner<H>`; it stays alive while the handler runs because
    // `stop` waits for a running handler before the item can be freed.
    let inner = unsafe { &*work.cast::<u8>().sub(offset).cast::<Inner<H>>() };
    if inner.stopped.load(Ordering::Acquire) {
        return;
    }
    match inner.handler.run() {
        Next::Idle => {}
        Next::Again => inner.queue_after_jiffies(0, false),
        Next::After(ms) => inner.queue_after_jiffies(msecs_to_jiffies(ms), false),
    }
}
