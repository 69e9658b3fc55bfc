// SPDX-License-Identifier: GPL-2.0

//! Synchronisation primitives the 6.12 `kernel` crate lacks: completions,
//! a mutex that can be tried, an irq-saving spinlock, and a read-write
//! semaphore.
//!
//! Why a second mutex: the balloon's page migration must never sleep on
//! the balloon lock, so it needs `mutex_trylock`. The 6.12
//! `kernel::sync::Mutex` cannot be tried (upstream added
//! `Lock::try_lock` in 6.13), and a backport would be a change to the
//! kernel crate itself, which an out-of-tree module cannot carry. The type
//! here follows the kernel crate's lock rules exactly: lockdep classes are
//! [`LockClassKey`]s, the guard is `!Send` (a mutex is released by the
//! task that took it) and it is `Sync` only when the data is.

use crate::kapi::bindings;
use core::{
    cell::UnsafeCell,
    marker::PhantomData,
    ops::{Deref, DerefMut},
};
use kernel::{prelude::*, str::CStr, sync::LockClassKey, types::Opaque};

/// The C pointer behind a [`LockClassKey`].
pub(crate) fn class_ptr(key: &'static LockClassKey) -> *mut bindings::lock_class_key {
    // `LockClassKey` is `#[repr(transparent)]` over
    // `Opaque<lock_class_key>` (rust/kernel/sync.rs); its own accessor is
    // private to the kernel crate in 6.12. Lockdep only uses the address.
    core::ptr::from_ref(key)
        .cast_mut()
        .cast::<bindings::lock_class_key>()
}

// The cast above relies on the layout of a private type: a kernel crate
// that changed it would fail here rather than hand lockdep a wrong pointer.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<LockClassKey>() == size_of::<bindings::lock_class_key>());
    assert!(align_of::<LockClassKey>() == align_of::<bindings::lock_class_key>());
};

/// A `struct completion`: one side waits until the other signals.
///
/// # Invariants
///
/// `inner` was initialised as `init_completion` does (with the caller's
/// lockdep class: [`Completion::new`]) and is pinned, so the wait queue
/// inside it never moves.
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

/// C's `might_sleep()` at the caller's file and line (without its
/// `might_resched()`, a scheduling point on kernels without preemption,
/// which the layer's callers do not rely on): with
/// `CONFIG_DEBUG_ATOMIC_SLEEP` (the debug kernel), a call from atomic
/// context is reported at once ("BUG: sleeping function called from
/// invalid context"), also when the call would not have slept this time.
/// Every operation of the layer that may sleep starts with it, so that a
/// driver callback that runs in atomic context and reaches one is caught
/// by the debug kernel's tests.
macro_rules! might_sleep {
    () => {
        $crate::kapi::sync::might_sleep_at(::kernel::c_str!(::core::file!()), ::core::line!())
    };
}

/// See [`might_sleep!`].
#[cfg_attr(not(CONFIG_DEBUG_ATOMIC_SLEEP), allow(unused_variables))]
pub(crate) fn might_sleep_at(file: &'static CStr, line: u32) {
    #[cfg(CONFIG_DEBUG_ATOMIC_SLEEP)]
    // SAFETY: a static NUL-terminated string and a line number, which the
    // kernel only prints.
    unsafe {
        bindings::__might_sleep(file.as_char_ptr(), line as kernel::ffi::c_int)
    };
}

/// Creates a [`Completion`] initialiser with a lockdep class of its own (one
/// per call site) and an optional name.
macro_rules! new_completion {
    ($($name:literal)? $(,)?) => {
        $crate::kapi::sync::Completion::new(
            ::kernel::optional_name!($($name)?),
            ::kernel::static_lock_class!(),
        )
    };
}

impl Completion {
    /// Returns an initialiser for a fresh completion, whose wait queue's
    /// lock is named `name` for lockdep, in `key`'s class.
    /// [`new_completion!`] makes both, one class per call site (C's
    /// `init_completion` gives one per expansion of the macro).
    pub(crate) fn new(name: &'static CStr, key: &'static LockClassKey) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: the helper fully initialises the completion at `slot`,
            // which is valid for writes and pinned; `name` and `key` are
            // static, as lockdep keeps them.
            // INVARIANT: the completion is initialised and pinned.
            inner <- Opaque::ffi_init(|slot| unsafe {
                bindings::init_completion_key(slot, name.as_char_ptr(), class_ptr(key))
            }),
        })
    }

    /// Signals one waiter. Safe in any context, hard interrupts included.
    pub(crate) fn complete(&self) {
        // SAFETY: `inner` is an initialised completion (type invariant).
        unsafe { bindings::complete(self.inner.get()) }
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
        might_sleep!();
        let j = kernel::time::msecs_to_jiffies(ms);
        // SAFETY: `inner` is an initialised completion (type invariant).
        unsafe { bindings::wait_for_completion_timeout(self.inner.get(), j) != 0 }
    }
}

/// Creates a [`Mutex`] initialiser with a lockdep class of its own (one per
/// call site) and an optional name.
macro_rules! new_mutex {
    ($inner:expr $(, $name:literal)? $(,)?) => {
        $crate::kapi::sync::Mutex::new(
            $inner,
            ::kernel::optional_name!($($name)?),
            ::kernel::static_lock_class!(),
        )
    };
}

/// A sleeping lock (`struct mutex`) that can also be tried without
/// blocking (see the module documentation for why it exists).
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
// SAFETY: only one thread at a time reaches `T` (type invariant), so
// sharing the mutex shares no `&T` between threads at once; `T: Send`
// suffices, as for the kernel crate's locks.
unsafe impl<T: Send> Sync for Mutex<T> {}

impl<T> Mutex<T> {
    /// A mutex around `data`, named `name` for lockdep, in `key`'s class.
    /// [`new_mutex!`] makes both.
    pub(crate) fn new(
        data: T,
        name: &'static CStr,
        key: &'static LockClassKey,
    ) -> impl PinInit<Self> {
        pin_init!(Self {
            data: UnsafeCell::new(data),
            // SAFETY: `slot` is valid for writes and pinned; `name` and `key`
            // are static, as lockdep requires.
            // INVARIANT: the mutex is initialised and pinned.
            raw <- Opaque::ffi_init(|slot| unsafe {
                bindings::__mutex_init(slot, name.as_char_ptr(), class_ptr(key))
            }),
        })
    }

    /// Takes the lock, sleeping until it is free.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        might_sleep!();
        // SAFETY: `raw` is an initialised mutex (type invariant).
        unsafe { bindings::mutex_lock(self.raw.get()) };
        // INVARIANT: the lock is held until the guard drops.
        MutexGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Takes the lock if it is free, without sleeping.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // SAFETY: `raw` is an initialised mutex (type invariant).
        if unsafe { bindings::mutex_trylock(self.raw.get()) } == 0 {
            return None;
        }
        // INVARIANT: the lock is held until the guard drops.
        Some(MutexGuard {
            lock: self,
            _not_send: PhantomData,
        })
    }
}

/// Proof that a [`Mutex`] is held; gives access to its data.
///
/// Not `Send`: the task that took a mutex must release it. `Sync` only
/// when `T` is, since a shared guard hands out `&T`.
///
/// # Invariants
///
/// `lock.raw` is held by the current task for as long as the guard lives.
#[must_use = "the lock unlocks at once when the guard is unused"]
pub(crate) struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
    _not_send: PhantomData<*mut ()>,
}

// SAFETY: sharing the guard shares `&T` only (see `Deref`).
unsafe impl<T: Sync> Sync for MutexGuard<'_, T> {}

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

/// Runs `f` with the `spinlock_t` at `lock` held and local interrupts
/// saved and disabled. The one place that takes an irq-saving spinlock:
/// [`SpinLockIrq`] and locks embedded in C structures both use it. Scoped
/// to a closure, so that nested locks are always released in reverse order
/// (releasing an outer one first would turn interrupts back on with the
/// inner one held).
///
/// # Safety
///
/// `lock` must be an initialised spinlock, valid for the call.
pub(crate) unsafe fn with_irq_locked<R>(
    lock: *mut bindings::spinlock_t,
    f: impl FnOnce() -> R,
) -> R {
    // SAFETY: per the function's contract.
    let flags = unsafe { bindings::spin_lock_irqsave(lock) };
    // Released even if `f` unwinds (the kernel does not unwind, but the
    // guard keeps the pairing obvious).
    let _release = kernel::types::ScopeGuard::new(|| {
        // SAFETY: taken above with these flags, on this CPU (interrupts are
        // off, so the task cannot move).
        unsafe { bindings::spin_unlock_irqrestore(lock, flags) }
    });
    f()
}

/// Creates a [`SpinLockIrq`] initialiser with a lockdep class of its own.
macro_rules! new_spinlock_irq {
    ($inner:expr $(, $name:literal)? $(,)?) => {
        $crate::kapi::sync::SpinLockIrq::new(
            $inner,
            ::kernel::optional_name!($($name)?),
            ::kernel::static_lock_class!(),
        )
    };
}

/// A spinlock taken with interrupts off, for data that interrupt handlers
/// share with process context (the 6.12 `kernel::sync::SpinLock` leaves
/// interrupts on). The data is reached only inside [`SpinLockIrq::with`].
/// Taking it again inside that closure deadlocks, as with any spinlock.
///
/// # Invariants
///
/// `raw` is an initialised, pinned spinlock; `data` is only reached with
/// it held (inside `with`).
#[pin_data]
pub(crate) struct SpinLockIrq<T> {
    #[pin]
    raw: Opaque<bindings::spinlock_t>,
    data: UnsafeCell<T>,
}

// SAFETY: as for `Mutex`.
unsafe impl<T: Send> Send for SpinLockIrq<T> {}
// SAFETY: as for `Mutex`.
unsafe impl<T: Send> Sync for SpinLockIrq<T> {}

impl<T> SpinLockIrq<T> {
    /// A lock around `data`, named `name` for lockdep, in `key`'s class.
    pub(crate) fn new(
        data: T,
        name: &'static CStr,
        key: &'static LockClassKey,
    ) -> impl PinInit<Self> {
        pin_init!(Self {
            data: UnsafeCell::new(data),
            // SAFETY: `slot` is valid for writes and pinned; `name` and
            // `key` are static, as lockdep requires.
            // INVARIANT: initialised and pinned.
            raw <- Opaque::ffi_init(|slot| unsafe {
                bindings::__spin_lock_init(slot, name.as_char_ptr(), class_ptr(key))
            }),
        })
    }

    /// Runs `f` on the data with the lock held and interrupts off.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: initialised and pinned, so valid while `self` is borrowed
        // (type invariant).
        unsafe {
            with_irq_locked(self.raw.get(), || {
                // SAFETY: the lock is held for the closure's duration, so
                // this is the only reference to the data; `f` cannot keep it.
                f(&mut *self.data.get())
            })
        }
    }
}

/// Creates a [`RwSem`] initialiser with a lockdep class of its own.
macro_rules! new_rwsem {
    ($($name:literal)?) => {
        $crate::kapi::sync::RwSem::new(
            ::kernel::optional_name!($($name)?),
            ::kernel::static_lock_class!(),
        )
    };
}

/// A read-write semaphore (`struct rw_semaphore`) guarding no data of its
/// own: readers run side by side, a writer alone. Its users say what it
/// protects.
///
/// # Invariants
///
/// `raw` was initialised by `__init_rwsem` and is pinned.
#[pin_data]
pub(crate) struct RwSem {
    #[pin]
    raw: Opaque<bindings::rw_semaphore>,
}

// SAFETY: a rw_semaphore is made to be taken from any task.
unsafe impl Send for RwSem {}
// SAFETY: see `Send`; every method synchronises in C.
unsafe impl Sync for RwSem {}

impl RwSem {
    /// A semaphore named `name` for lockdep, in `key`'s class.
    pub(crate) fn new(name: &'static CStr, key: &'static LockClassKey) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes and pinned; `name` and
            // `key` are static.
            // INVARIANT: initialised and pinned.
            raw <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_rwsem(slot, name.as_char_ptr(), class_ptr(key))
            }),
        })
    }

    /// Takes it for reading (shared), sleeping while a writer holds it.
    pub(crate) fn read(&self) -> RwSemRead<'_> {
        might_sleep!();
        // SAFETY: initialised (type invariant).
        unsafe { bindings::down_read(self.raw.get()) };
        // INVARIANT: held for reading until the guard drops.
        RwSemRead {
            sem: self,
            _not_send: PhantomData,
        }
    }

    /// Takes it for writing (exclusive), sleeping until nobody holds it.
    pub(crate) fn write(&self) -> RwSemWrite<'_> {
        might_sleep!();
        // SAFETY: initialised (type invariant).
        unsafe { bindings::down_write(self.raw.get()) };
        // INVARIANT: held for writing until the guard drops.
        RwSemWrite {
            sem: self,
            _not_send: PhantomData,
        }
    }
}

/// The [`RwSem`] held for reading.
///
/// # Invariants
///
/// `sem` is held for reading by the current task.
pub(crate) struct RwSemRead<'a> {
    sem: &'a RwSem,
    _not_send: PhantomData<*mut ()>,
}

impl Drop for RwSemRead<'_> {
    fn drop(&mut self) {
        // SAFETY: held for reading by this task (type invariant).
        unsafe { bindings::up_read(self.sem.raw.get()) };
    }
}

/// The [`RwSem`] held for writing.
///
/// # Invariants
///
/// `sem` is held for writing by the current task.
pub(crate) struct RwSemWrite<'a> {
    sem: &'a RwSem,
    _not_send: PhantomData<*mut ()>,
}

impl Drop for RwSemWrite<'_> {
    fn drop(&mut self) {
        // SAFETY: held for writing by this task (type invariant).
        unsafe { bindings::up_write(self.sem.raw.get()) };
    }
}

/// Sleeps for at least `ms` milliseconds (process context only).
pub(crate) fn msleep(ms: u32) {
    might_sleep!();
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
