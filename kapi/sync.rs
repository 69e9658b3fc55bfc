// SPDX-License-Identifier: GPL-2.0

//! Synchronisation primitives the 6.12 `kernel` crate lacks.

use core::{
    cell::UnsafeCell,
    ops::{Deref, DerefMut},
};
use kernel::{bindings, prelude::*, str::CStr, types::Opaque};

/// A `struct completion`: one side waits until the other signals.
///
/// Signals are counted: each [`Completion::complete`] lets one
/// [`Completion::wait`] return, also when it came first.
///
/// # Invariants
///
/// `inner` was initialised by `init_completion` and is pinned, so the wait
/// queue inside it never moves.
#[pin_data]
pub(crate) struct Completion {
    #[pin]
    inner: Opaque<bindings::completion>,
}

// SAFETY: a completion is designed to be signalled and waited on from any
// context and thread; its state is protected by its own spinlock.
unsafe impl Send for Completion {}
// SAFETY: see `Send`; all methods take `&self` and the C side synchronises.
unsafe impl Sync for Completion {}

impl Completion {
    /// Returns an initialiser for a fresh completion.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `init_completion` fully initialises the completion at
            // `slot`, which is valid for writes and pinned.
            // INVARIANT: the completion is initialised and pinned.
            inner <- Opaque::ffi_init(|slot| unsafe { bindings::init_completion(slot) }),
        })
    }

    /// Signals one waiter. Safe in any context, hard interrupts included.
    pub(crate) fn complete(&self) {
        // SAFETY: `inner` is an initialised completion (type invariant).
        unsafe { bindings::complete(self.inner.get()) }
    }

    /// Sleeps until signalled.
    pub(crate) fn wait(&self) {
        // SAFETY: `inner` is an initialised completion (type invariant).
        unsafe { bindings::wait_for_completion(self.inner.get()) }
    }

    /// Forgets the signals not yet waited for, so that a following wait
    /// returns for a new signal. Like `reinit_completion`, it does not
    /// synchronise with a concurrent [`Completion::complete`], whose count
    /// may then survive: callers must tolerate an early return (re-check
    /// their condition and wait again).
    pub(crate) fn reinit(&self) {
        // `reinit_completion` only stores 0 to the count, a word-sized store
        // that cannot tear; `complete` updates it under the completion's lock.
        // SAFETY: `inner` is initialised (type invariant); a racing `complete`
        // can at worst leave a stale count (the early return documented
        // above), never an invalid state.
        unsafe { bindings::reinit_completion(self.inner.get()) }
    }

    /// Sleeps until signalled or until `ms` milliseconds have passed;
    /// returns whether it was signalled.
    pub(crate) fn wait_timeout(&self, ms: u32) -> bool {
        let j = kernel::time::msecs_to_jiffies(ms);
        // SAFETY: `inner` is an initialised completion (type invariant).
        unsafe { bindings::wait_for_completion_timeout(self.inner.get(), j) != 0 }
    }
}

/// A lockdep class for a [`Mutex`]. Declare one per lock role as a `static`:
/// lockdep wants class keys in static memory.
#[repr(transparent)]
pub(crate) struct LockKey(Opaque<bindings::lock_class_key>);

// SAFETY: lockdep uses the key only as an identity and does its own
// synchronisation; the key is never read or written from Rust.
unsafe impl Sync for LockKey {}

impl LockKey {
    /// A key for a `static`.
    pub(crate) const fn new() -> Self {
        Self(Opaque::uninit())
    }

    /// The key, for the C lock initialisers.
    pub(crate) fn as_ptr(&self) -> *mut bindings::lock_class_key {
        self.0.get()
    }
}

/// A sleeping lock (`struct mutex`) that, unlike the 6.12 `kernel` crate's,
/// can also be tried without blocking. The balloon needs that: page
/// migration must never sleep on the balloon lock.
///
/// # Invariants
///
/// `raw` was initialised by `__mutex_init` and is pinned. `data` is accessed
/// only through a [`MutexGuard`], which exists only while `raw` is held.
#[pin_data]
pub(crate) struct Mutex<T> {
    #[pin]
    raw: Opaque<bindings::mutex>,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex hands `T` from thread to thread, so `T: Send` suffices.
unsafe impl<T: Send> Send for Mutex<T> {}
// SAFETY: only one thread at a time reaches `T` (type invariant).
unsafe impl<T: Send> Sync for Mutex<T> {}

impl<T> Mutex<T> {
    /// A mutex around `data`, named `name` for lockdep and `key`'s class.
    pub(crate) fn new(data: T, name: &'static CStr, key: &'static LockKey) -> impl PinInit<Self> {
        pin_init!(Self {
            data: UnsafeCell::new(data),
            // SAFETY: `slot` is valid for writes and pinned; `name` and `key`
            // are static, as lockdep requires.
            // INVARIANT: the mutex is initialised and pinned.
            raw <- Opaque::ffi_init(|slot| unsafe {
                bindings::__mutex_init(slot, name.as_char_ptr(), key.0.get())
            }),
        })
    }

    /// Takes the lock, sleeping until it is free.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        // SAFETY: `raw` is an initialised mutex (type invariant).
        unsafe { bindings::mutex_lock(self.raw.get()) };
        // INVARIANT: the lock is held until the guard drops.
        MutexGuard { lock: self }
    }

    /// Takes the lock if it is free, without sleeping.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // SAFETY: `raw` is an initialised mutex (type invariant).
        if unsafe { bindings::mutex_trylock(self.raw.get()) } == 0 {
            return None;
        }
        // INVARIANT: the lock is held until the guard drops.
        Some(MutexGuard { lock: self })
    }
}

/// Proof that a [`Mutex`] is held; gives access to its data.
///
/// # Invariants
///
/// `lock.raw` is held by the current task for as long as the guard lives.
pub(crate) struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the lock is held (type invariant), so no one else reaches
        // the data while this shared borrow lives.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held (type invariant) and the guard is borrowed
        // mutably, so this is the only reference to the data.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the current task holds the lock (type invariant).
        unsafe { bindings::mutex_unlock(self.lock.raw.get()) };
    }
}

/// Sleeps for at least `ms` milliseconds (process context only).
pub(crate) fn msleep(ms: u32) {
    // SAFETY: no preconditions beyond being allowed to sleep, which every
    // caller (work items, remove, freeze) is.
    unsafe { bindings::msleep(ms) }
}

/// Lets other tasks run if the scheduler wants the CPU, in a long loop that
/// may otherwise never sleep (kernels without preemption need this).
pub(crate) fn cond_resched() {
    // SAFETY: callers run in process context and hold no spinlock.
    unsafe { bindings::cond_resched() };
}
