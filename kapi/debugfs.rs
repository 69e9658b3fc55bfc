// SPDX-License-Identifier: GPL-2.0

//! Read-only counters (and, on fault-injection kernels, writable knobs) in
//! debugfs.
//!
//! A [`Dir`] is a directory; every entry holds a reference to its parent,
//! so a parent cannot go while something lives under it. [`CounterFiles`]
//! is a directory with one file per counter of a set defined with
//! [`counters!`]; it keeps the counters alive until its files are gone, so
//! a reader never sees freed memory.
//!
//! The counters and knobs are Rust atomics, which the driver updates with
//! atomic operations while a reader may read them: debugfs's own
//! `debugfs_create_u64`/`u32` files would load and store them with plain C
//! accesses, a data race (and a torn 64-bit read on 32-bit machines). The
//! files here have file operations of their own, which load and store with
//! atomic operations, as upstream Rust debugfs does for atomics.

use crate::kapi::bindings;
#[cfg(all(CONFIG_DEBUG_FS, CONFIG_FAULT_INJECTION_DEBUG_FS))]
use atomic_files::KNOB;
#[cfg(CONFIG_DEBUG_FS)]
use atomic_files::{create_file, COUNTER};
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
    ///
    /// The values handed to `f` live as long as `self` (the lifetime says
    /// so): their files point at them for as long as the directory keeps
    /// `self`.
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'static CStr, &'a AtomicU64));
}

/// A set of named knobs, writable by root, for fault injection.
#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
pub(crate) trait Knobs: Send + Sync + 'static {
    /// Calls `f` with each knob's file name and value, which lives as long
    /// as `self`.
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'static CStr, &'a core::sync::atomic::AtomicU32));
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
            fn each<'a>(
                &'a self,
                f: &mut dyn FnMut(&'static ::kernel::str::CStr, &'a ::core::sync::atomic::AtomicU64),
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
                // SAFETY: `dentry` is our live directory; `value` lives in
                // `counters`, which outlives the file (type invariant);
                // `COUNTER` reads an `AtomicU64` at the file's data.
                unsafe {
                    create_file(
                        file,
                        0o444,
                        dentry,
                        core::ptr::from_ref(value).cast(),
                        &COUNTER,
                    )
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

    /// Adds a writable (0600) file per knob of `knobs`, which reads and
    /// writes it with atomic operations.
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
            // SAFETY: `dir` is our live directory; `value` lives in `knobs`,
            // kept above until the directory is removed (type invariant);
            // `KNOB` reads and writes an `AtomicU32` at the file's data.
            unsafe { create_file(file, 0o600, dir, core::ptr::from_ref(value).cast(), &KNOB) };
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

// -- files over atomics ------------------------------------------------------

/// debugfs files over Rust atomics, with file operations of the module's
/// own that load and store them atomically.
#[cfg(CONFIG_DEBUG_FS)]
mod atomic_files {
    use crate::kapi::bindings;
    use core::{
        fmt::Write,
        sync::atomic::{AtomicU64, Ordering},
    };
    use kernel::{
        ffi::{c_char, c_void},
        prelude::*,
        str::CStr,
        types::Opaque,
    };

    // The module's own `struct module`, the owner of the operations below:
    // an open file keeps the module, and so these operations, loaded. Only
    // its address is taken (as the kernel crate's `module!` does), so the
    // layout of its empty arch part does not matter.
    #[allow(improper_ctypes)]
    extern "C" {
        static __this_module: Opaque<bindings::module>;
    }

    /// A `struct file_operations` in static memory, shared with C.
    #[repr(transparent)]
    pub(super) struct FileOps(bindings::file_operations);

    // SAFETY: never written after its constant initialisation; C only
    // reads it.
    unsafe impl Sync for FileOps {}

    type ReadFn = unsafe extern "C" fn(
        *mut bindings::file,
        *mut c_char,
        usize,
        *mut bindings::loff_t,
    ) -> isize;
    type WriteFn = unsafe extern "C" fn(
        *mut bindings::file,
        *const c_char,
        usize,
        *mut bindings::loff_t,
    ) -> isize;

    /// Operations with only the given read (and write) callbacks, owned by
    /// this module; `simple_open` puts the file's data in `private_data`.
    const fn file_ops(read: ReadFn, write: Option<WriteFn>) -> FileOps {
        // SAFETY: all-zero is a valid `file_operations` (no callbacks, no
        // owner).
        let mut ops: bindings::file_operations =
            unsafe { core::mem::MaybeUninit::zeroed().assume_init() };
        // SAFETY: only the address of the module's own `struct module` is
        // taken; the module loader defines it for every module, and it lives
        // as long as the module's code.
        ops.owner = unsafe { __this_module.get() };
        ops.open = Some(bindings::simple_open);
        ops.llseek = Some(bindings::default_llseek);
        ops.read = Some(read);
        ops.write = write;
        FileOps(ops)
    }

    /// A read-only file showing an `AtomicU64`.
    pub(super) static COUNTER: FileOps = file_ops(read_u64, None);

    /// A file showing an `AtomicU32` and taking a new value for it.
    #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
    pub(super) static KNOB: FileOps = file_ops(knob::read_u32, Some(knob::write_u32));

    /// `debugfs_create_file` of `name` under `dir`, with `data` and `ops`.
    /// Without the file, the value is simply not shown.
    ///
    /// # Safety
    ///
    /// `dir` is a live debugfs directory; `data` points to the kind of
    /// value `ops` reads (and writes), which stays alive until the file is
    /// removed (debugfs then waits for the callbacks running, and calls no
    /// more).
    pub(super) unsafe fn create_file(
        name: &'static CStr,
        mode: u16,
        dir: *mut bindings::dentry,
        data: *const c_void,
        ops: &'static FileOps,
    ) {
        // SAFETY: `name` is a NUL-terminated string (debugfs copies it);
        // `dir` and `data` are as the caller promises; `ops` is static.
        // debugfs wraps the operations in its proxy, so none of them runs
        // once the file is removed.
        unsafe {
            bindings::debugfs_create_file(name.as_char_ptr(), mode, dir, data.cast_mut(), &ops.0)
        };
    }

    /// A number and a newline, as a reader gets it.
    struct Line {
        buf: [u8; 24],
        len: usize,
    }

    impl Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    /// Hands `value` to a reader as text, whole, in one read from offset
    /// 0; a read from any other offset is the end of the file. Formatting
    /// again for a later offset would splice two values when the counter
    /// moved in between ("123\n5\n" seen by `cat` in a test loop); a
    /// buffer too small for the whole line (at most 21 bytes) gets `EINVAL`
    /// rather than a cut number.
    ///
    /// # Safety
    ///
    /// `buf`, `count` and `ppos` are those of a `read` file operation.
    unsafe fn read_value(
        value: u64,
        buf: *mut c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: `ppos` is this read's position (caller's contract).
        if unsafe { *ppos } != 0 {
            return 0;
        }
        let mut line = Line {
            buf: [0; 24],
            len: 0,
        };
        if writeln!(line, "{}", value).is_err() || count < line.len {
            return EINVAL.to_errno() as isize;
        }
        // SAFETY: `buf` and `ppos` are the user buffer and position of this
        // read (caller's contract); the source is `line.len` initialised
        // bytes.
        unsafe {
            bindings::simple_read_from_buffer(
                buf.cast(),
                count,
                ppos,
                line.buf.as_ptr().cast(),
                line.len,
            )
        }
    }

    /// `read` of a [`COUNTER`] file.
    ///
    /// # Safety
    ///
    /// Called by debugfs for a file made by [`create_file`] with
    /// [`COUNTER`]: `simple_open` put the `AtomicU64` it was made with, which
    /// outlives the file, in `private_data`.
    unsafe extern "C" fn read_u64(
        file: *mut bindings::file,
        buf: *mut c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: see the function's contract.
        let value = unsafe { &*(*file).private_data.cast::<AtomicU64>() };
        // SAFETY: the arguments of this read.
        unsafe { read_value(value.load(Ordering::Relaxed), buf, count, ppos) }
    }

    /// The knob files' callbacks.
    #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
    mod knob {
        use super::read_value;
        use crate::kapi::bindings;
        use core::sync::atomic::{AtomicU32, Ordering};
        use kernel::{error::to_result, ffi::c_char, prelude::*, uaccess::UserSlice};

        /// `read` of a `KNOB` file.
        ///
        /// # Safety
        ///
        /// Called by debugfs for a file made by `create_file` with `KNOB`:
        /// `private_data` is the `AtomicU32` it was made with, which outlives
        /// the file.
        pub(super) unsafe extern "C" fn read_u32(
            file: *mut bindings::file,
            buf: *mut c_char,
            count: usize,
            ppos: *mut bindings::loff_t,
        ) -> isize {
            // SAFETY: see the function's contract.
            let value = unsafe { &*(*file).private_data.cast::<AtomicU32>() };
            // SAFETY: the arguments of this read.
            unsafe { read_value(value.load(Ordering::Relaxed).into(), buf, count, ppos) }
        }

        /// `write` of a `KNOB` file: a decimal or `0x` hexadecimal number
        /// that fits 32 bits, optionally followed by a newline.
        ///
        /// # Safety
        ///
        /// As for [`read_u32`].
        pub(super) unsafe extern "C" fn write_u32(
            file: *mut bindings::file,
            buf: *const c_char,
            count: usize,
            _ppos: *mut bindings::loff_t,
        ) -> isize {
            // SAFETY: see the function's contract.
            let value = unsafe { &*(*file).private_data.cast::<AtomicU32>() };
            match parse(buf as usize, count) {
                Ok(v) => {
                    value.store(v, Ordering::Relaxed);
                    count as isize
                }
                Err(e) => e.to_errno() as isize,
            }
        }

        /// The number a writer sent: `count` bytes at user address `buf`.
        fn parse(buf: usize, count: usize) -> Result<u32> {
            // Room for the number, a newline and the NUL `kstrtouint` needs.
            let mut text = [0u8; 16];
            let dst = text.get_mut(..count).filter(|_| count < 16).ok_or(EINVAL)?;
            UserSlice::new(buf, count).reader().read_slice(dst)?;
            let mut parsed = 0u32;
            // SAFETY: `text` is NUL-terminated: at most 15 bytes were
            // written. `kstrtouint` takes a trailing newline.
            to_result(unsafe { bindings::kstrtouint(text.as_ptr().cast(), 0, &mut parsed) })?;
            Ok(parsed)
        }
    }
}
