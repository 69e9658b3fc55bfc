// SPDX-License-Identifier: GPL-2.0

//! Read-only counters (and, on fault-injection kernels, writable knobs) in
//! debugfs.
//!
//! A [`Dir`] is a directory; every entry holds a reference to its parent,
//! so a parent cannot go while something lives under it. [`CounterFiles`]
//! is a directory with one file per counter of a set defined with
//! [`counters!`]; it keeps the counters alive until its files are gone, so
//! a reader never sees freed memory.

use crate::kapi::bindings;
use core::sync::atomic::AtomicU64;
use kernel::{str::CStr, sync::Arc};

/// A debugfs directory, removed (with everything in it) when the last
/// reference goes.
///
/// # Invariants
///
/// `dentry` is null (no debugfs, or creation failed) or a directory from
/// `debugfs_create_dir` under `parent`'s directory (the debugfs root when
/// `parent` is `None`), removed only by this value's `Drop`.
pub(crate) struct Dir {
    dentry: *mut bindings::dentry,
    _parent: Option<Arc<Dir>>,
}

// SAFETY: the dentry is only passed to debugfs functions, which may be called
// from any thread.
unsafe impl Send for Dir {}
// SAFETY: no method mutates through `&self`.
unsafe impl Sync for Dir {}

#[cfg(CONFIG_DEBUG_FS)]
fn is_err_or_null(d: *mut bindings::dentry) -> bool {
    d.is_null() || (d as usize) >= (-(bindings::MAX_ERRNO as isize)) as usize
}

/// `debugfs_create_dir`, or null when debugfs is off or refuses.
fn create_dir(name: &CStr, parent: *mut bindings::dentry) -> *mut bindings::dentry {
    #[cfg(CONFIG_DEBUG_FS)]
    {
        // SAFETY: `name` is a valid C string (debugfs copies it); `parent`
        // is null (the root) or a live directory the caller keeps alive.
        let d = unsafe { bindings::debugfs_create_dir(name.as_char_ptr(), parent) };
        if !is_err_or_null(d) {
            return d;
        }
    }
    #[cfg(not(CONFIG_DEBUG_FS))]
    let _ = (name, parent);
    core::ptr::null_mut()
}

/// `debugfs_remove` of a directory made by [`create_dir`].
fn remove(d: *mut bindings::dentry) {
    #[cfg(CONFIG_DEBUG_FS)]
    if !d.is_null() {
        // SAFETY: `d` came from `create_dir` and is removed once (by its
        // owner's `Drop`); removal waits for readers of its files.
        unsafe { bindings::debugfs_remove(d) };
    }
    #[cfg(not(CONFIG_DEBUG_FS))]
    let _ = d;
}

impl Dir {
    /// Creates directory `name` under `parent` (the debugfs root with
    /// `None`). Without debugfs, or if it fails, the directory does not
    /// exist but everything that uses it still works, unseen.
    pub(crate) fn new(
        name: &CStr,
        parent: Option<&Arc<Dir>>,
    ) -> Result<Arc<Self>, kernel::alloc::AllocError> {
        let dentry = match parent {
            None => create_dir(name, core::ptr::null_mut()),
            // A parent that does not exist has no children (a null parent
            // would mean the debugfs root).
            Some(p) if p.dentry.is_null() => core::ptr::null_mut(),
            Some(p) => create_dir(name, p.dentry),
        };
        // INVARIANT: created under `parent`, which we keep.
        let this = Self {
            dentry,
            _parent: parent.cloned(),
        };
        Arc::new(this, kernel::alloc::flags::GFP_KERNEL)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // Children hold a reference to us, so none is left now.
        remove(self.dentry);
    }
}

/// A set of named counters that can be shown in debugfs. Implemented by
/// [`counters!`].
pub(crate) trait Counters: Send + Sync + 'static {
    /// Calls `f` with each counter's file name and value (only to make
    /// their files: unused on kernels without debugfs).
    #[cfg_attr(not(CONFIG_DEBUG_FS), allow(dead_code))]
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &AtomicU64));
}

/// A set of named knobs, writable by root, for fault injection.
#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
pub(crate) trait Knobs: Send + Sync + 'static {
    /// Calls `f` with each knob's file name and value.
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &core::sync::atomic::AtomicU32));
}

/// Defines a struct of `AtomicU64` counters and its [`Counters`] listing,
/// from one list: each field becomes a file of the same name.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Default)]
        $vis struct $name {
            $( $(#[$fmeta])* $vis $field: ::core::sync::atomic::AtomicU64, )*
        }

        impl $crate::kapi::debugfs::Counters for $name {
            fn each(
                &self,
                f: &mut dyn FnMut(&'static ::kernel::str::CStr, &::core::sync::atomic::AtomicU64),
            ) {
                $( f(::kernel::c_str!(stringify!($field)), &self.$field); )*
            }
        }
    };
}

/// A directory with a read-only file per counter (and, on kernels built
/// for fault injection, a writable file per knob).
///
/// # Invariants
///
/// `dentry` is null or a directory made under `parent`, whose files point
/// into `counters` and `knobs`; both are kept until the directory is
/// removed in `Drop` (before the fields go).
pub(crate) struct CounterFiles<C: Counters> {
    dentry: *mut bindings::dentry,
    _counters: Arc<C>,
    #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
    knobs: kernel::alloc::KVec<Arc<dyn Knobs>>,
    _parent: Arc<Dir>,
}

// SAFETY: the dentry is only passed to debugfs functions, which may be called
// from any thread; `C` is `Send + Sync`.
unsafe impl<C: Counters> Send for CounterFiles<C> {}
// SAFETY: no method mutates through `&self`.
unsafe impl<C: Counters> Sync for CounterFiles<C> {}

impl<C: Counters> CounterFiles<C> {
    /// Creates directory `name` under `parent`, with a file per counter.
    pub(crate) fn new(name: &CStr, parent: &Arc<Dir>, counters: Arc<C>) -> Self {
        let dentry = if parent.dentry.is_null() {
            core::ptr::null_mut()
        } else {
            create_dir(name, parent.dentry)
        };
        #[cfg(CONFIG_DEBUG_FS)]
        if !dentry.is_null() {
            counters.each(&mut |file, value| {
                // debugfs reads the u64 with a plain load, which cannot
                // tear on the 64-bit machines this driver is built for.
                // SAFETY: `file` is a static C string; `value` lives in
                // `counters`, which outlives the file (type invariant).
                unsafe {
                    bindings::debugfs_create_u64(file.as_char_ptr(), 0o444, dentry, value.as_ptr())
                };
            });
        }
        // INVARIANT: the files point into `counters`, kept below.
        Self {
            dentry,
            _counters: counters,
            #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
            knobs: kernel::alloc::KVec::new(),
            _parent: parent.clone(),
        }
    }

    /// Adds a writable (0600) file per knob of `knobs`. debugfs writes a
    /// knob with a plain word-sized store while the driver updates it
    /// atomically: fault-injection kernels only, where that is accepted.
    #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
    pub(crate) fn add_knobs(&mut self, knobs: Arc<dyn Knobs>) -> kernel::error::Result {
        if self.dentry.is_null() {
            return Ok(());
        }
        // Kept (below) before any file points into it.
        self.knobs
            .push(knobs.clone(), kernel::alloc::flags::GFP_KERNEL)?;
        let dir = self.dentry;
        knobs.each(&mut |file, value| {
            // SAFETY: `file` is a static C string; `value` lives in
            // `knobs`, kept below until the directory is removed (type
            // invariant). debugfs stores and loads the u32 whole.
            unsafe { bindings::debugfs_create_u32(file.as_char_ptr(), 0o600, dir, value.as_ptr()) };
        });
        Ok(())
    }
}

impl<C: Counters> Drop for CounterFiles<C> {
    fn drop(&mut self) {
        // Removing waits for readers of the files; after it, the counters
        // and knobs may go (they drop with the fields, after this).
        remove(self.dentry);
    }
}
