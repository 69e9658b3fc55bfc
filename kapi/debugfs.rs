// SPDX-License-Identifier: GPL-2.0

//! Read-only counters in debugfs.
//!
//! The module owns one directory, `/sys/kernel/debug/virtio_balloon_rs/`
//! ([`init_root`]/[`remove_root`]); each device gets a [`CounterDir`] under
//! it with one file per counter. A `CounterDir` keeps its counters alive
//! until its files are gone, so a reader can never see freed memory.

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use kernel::{bindings, str::CStr, sync::Arc};

/// The module's directory, or null (no debugfs, or not created).
static ROOT: AtomicPtr<bindings::dentry> = AtomicPtr::new(core::ptr::null_mut());

/// A set of named counters that can be shown in debugfs.
pub(crate) trait Counters: Send + Sync + 'static {
    /// Calls `f` with each counter's file name and value.
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &AtomicU64));
}

/// A set of named knobs, writable by root, for fault injection.
pub(crate) trait Knobs: Send + Sync + 'static {
    /// Calls `f` with each knob's file name and value.
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &AtomicU32));
}

/// Creates the module's directory. Without debugfs this does nothing.
pub(crate) fn init_root(name: &'static CStr) {
    #[cfg(CONFIG_DEBUG_FS)]
    {
        // SAFETY: `name` is a valid C string; a null parent means the debugfs
        // root. The result is a dentry or an error pointer.
        let d = unsafe { bindings::debugfs_create_dir(name.as_char_ptr(), core::ptr::null_mut()) };
        if !is_err_or_null(d) {
            ROOT.store(d, Ordering::Release);
        }
    }
    #[cfg(not(CONFIG_DEBUG_FS))]
    let _ = name;
}

/// Removes the module's directory and everything left under it. Call after
/// every [`CounterDir`] is gone (after the driver is unregistered).
pub(crate) fn remove_root() {
    let d = ROOT.swap(core::ptr::null_mut(), Ordering::AcqRel);
    #[cfg(CONFIG_DEBUG_FS)]
    if !d.is_null() {
        // SAFETY: `d` came from `debugfs_create_dir` and is removed once.
        unsafe { bindings::debugfs_remove(d) };
    }
    #[cfg(not(CONFIG_DEBUG_FS))]
    let _ = d;
}

fn is_err_or_null(d: *mut bindings::dentry) -> bool {
    d.is_null() || (d as usize) >= (-(bindings::MAX_ERRNO as isize)) as usize
}

/// A directory of read-only counter files.
///
/// # Invariants
///
/// `dir` is null or a debugfs directory whose files point into `counters`
/// and `knobs`, which this value keeps alive until the directory is removed.
pub(crate) struct CounterDir<C: Counters> {
    dir: *mut bindings::dentry,
    counters: Arc<C>,
    /// Knob files point into this (see [`CounterDir::add_knobs`]).
    knobs: Option<Arc<dyn Knobs>>,
}

// SAFETY: the dentry is only passed to debugfs functions, which may be called
// from any thread; `C` is `Send + Sync`.
unsafe impl<C: Counters> Send for CounterDir<C> {}
// SAFETY: no method mutates through `&self`.
unsafe impl<C: Counters> Sync for CounterDir<C> {}

impl<C: Counters> CounterDir<C> {
    /// Creates `name` under the module's directory, with a file per counter
    /// of `counters`. Without debugfs (or if it fails) there is no
    /// directory: the counters still count, only nobody can read them.
    pub(crate) fn new(name: &CStr, counters: Arc<C>) -> Self {
        let mut dir = core::ptr::null_mut();
        #[cfg(CONFIG_DEBUG_FS)]
        {
            let root = ROOT.load(Ordering::Acquire);
            if !root.is_null() {
                // SAFETY: `name` is a valid C string (copied by debugfs);
                // `root` is live until `remove_root`, which runs after every
                // `CounterDir` is dropped.
                let d = unsafe { bindings::debugfs_create_dir(name.as_char_ptr(), root) };
                if !is_err_or_null(d) {
                    dir = d;
                }
            }
            if !dir.is_null() {
                counters.each(&mut |file, value| {
                    // debugfs reads the u64 with a plain load, which cannot
                    // tear on the 64-bit machines this driver is built for.
                    // SAFETY: `file` is a static C string; `value` lives in
                    // `counters`, which outlives the file (type invariant).
                    unsafe {
                        bindings::debugfs_create_u64(file.as_char_ptr(), 0o444, dir, value.as_ptr())
                    };
                });
            }
        }
        #[cfg(not(CONFIG_DEBUG_FS))]
        let _ = name;
        Self {
            dir,
            counters,
            knobs: None,
        }
    }

    /// Adds a writable (0600) file per knob of `knobs`, only on kernels
    /// built for fault injection (`CONFIG_FAULT_INJECTION_DEBUG_FS`).
    pub(crate) fn add_knobs(&mut self, knobs: Arc<dyn Knobs>) {
        #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
        if !self.dir.is_null() && self.knobs.is_none() {
            let dir = self.dir;
            knobs.each(&mut |file, value| {
                // SAFETY: `file` is a static C string; `value` lives in
                // `knobs`, kept below until the directory is removed (type
                // invariant). debugfs stores and loads the u32 whole.
                unsafe {
                    bindings::debugfs_create_u32(file.as_char_ptr(), 0o600, dir, value.as_ptr())
                };
            });
            self.knobs = Some(knobs);
        }
        #[cfg(not(CONFIG_FAULT_INJECTION_DEBUG_FS))]
        let _ = knobs;
    }

    /// The counters.
    pub(crate) fn counters(&self) -> &Arc<C> {
        &self.counters
    }
}

impl<C: Counters> Drop for CounterDir<C> {
    fn drop(&mut self) {
        #[cfg(CONFIG_DEBUG_FS)]
        if !self.dir.is_null() {
            // SAFETY: `dir` came from `debugfs_create_dir`; removing it waits
            // for readers of its files, after which `counters` may go.
            unsafe { bindings::debugfs_remove(self.dir) };
        }
    }
}
