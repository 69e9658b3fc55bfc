// SPDX-License-Identifier: GPL-2.0

//! Module parameters (`module_param_cb`, `MODULE_PARM_DESC`), which the
//! 6.12 `module!` macro does not have yet.
//!
//! A parameter is a `static` [`UintParam`] (its value, default and range)
//! that [`module_param!`] publishes: an entry in the module's `__param`
//! section, which the module loader parses `insmod`/`modprobe` arguments
//! into and sysfs shows in `/sys/module/<module>/parameters/`, and the
//! `parm=`/`parmtype=` strings `modinfo` prints. The value is an atomic:
//! the loader and sysfs write it through [`UintParam`]'s own setter, which
//! refuses anything outside the range with a message naming it, while the
//! driver reads it at any time.

use crate::kapi::bindings;
use core::{
    ffi::c_void,
    fmt::Write,
    sync::atomic::{AtomicU32, Ordering},
};
use kernel::{
    ffi::{c_char, c_int},
    prelude::*,
    str::CStr,
};

/// An unsigned 32-bit module parameter with an inclusive range.
pub(crate) struct UintParam {
    value: AtomicU32,
    min: u32,
    max: u32,
}

impl UintParam {
    /// A parameter of `default` that may be set to `min..=max`. A default
    /// outside its range does not build (when used in a `static`).
    pub(crate) const fn new(default: u32, min: u32, max: u32) -> Self {
        assert!(min <= default && default <= max);
        Self {
            value: AtomicU32::new(default),
            min,
            max,
        }
    }

    /// The current value (what the user set, else the default).
    pub(crate) fn get(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }

    /// Parses and range-checks `text` (as `kstrtouint`, base 0, a trailing
    /// newline allowed) and stores it; `name` is for the message.
    fn set(&self, name: &CStr, text: &CStr) -> Result {
        let mut v = 0u32;
        // SAFETY: `text` is NUL-terminated and `v` is valid for a write.
        let ret = unsafe { bindings::kstrtouint(text.as_char_ptr(), 0, &mut v) };
        if ret != 0 {
            // What the user wrote, without the newline `echo` adds.
            let shown = text
                .as_bytes()
                .strip_suffix(b"\n")
                .unwrap_or(text.as_bytes());
            let shown = core::str::from_utf8(shown).unwrap_or("(not text)");
            let err = Error::from_errno(ret);
            if err == ERANGE {
                pr_err!("{}: {} is too large (at most {})\n", name, shown, self.max);
            } else {
                pr_err!("{}: not a number: {}\n", name, shown);
            }
            return Err(err);
        }
        if v < self.min || v > self.max {
            pr_err!(
                "{}: {} is out of range ({} to {})\n",
                name,
                v,
                self.min,
                self.max
            );
            return Err(EINVAL);
        }
        self.value.store(v, Ordering::Relaxed);
        Ok(())
    }
}

/// An entry of the module's `__param` section.
///
/// # Invariants
///
/// The `name` is a `'static` NUL-terminated string, `ops` is [`UINT_OPS`]
/// and `arg` points to a `'static` [`UintParam`].
#[repr(transparent)]
pub(crate) struct ParamEntry(bindings::kernel_param);

// SAFETY: the entry is never written after it is built; the loader and
// sysfs only read it, and what it points to is `'static` and `Sync`
// (`UintParam` is atomics and constants).
unsafe impl Sync for ParamEntry {}

impl ParamEntry {
    /// The entry for `param`, called `name`, with sysfs permissions `perm`
    /// (0: not in sysfs). Only [`module_param!`] places one in the section.
    pub(crate) const fn uint(name: &'static CStr, param: &'static UintParam, perm: u16) -> Self {
        // INVARIANT: all three pointers are as the invariants require.
        Self(bindings::kernel_param {
            name: name.as_char_ptr(),
            // As C's THIS_MODULE: the loader locks the module's
            // parameters through it while it parses the arguments.
            mod_: &raw const bindings::__this_module as *mut bindings::module,
            ops: &UINT_OPS,
            perm,
            // As `module_param_cb`: not a built-in's init level.
            level: -1,
            flags: 0,
            __bindgen_anon_1: bindings::kernel_param__bindgen_ty_1 {
                arg: param as *const UintParam as *mut c_void,
            },
        })
    }
}

/// The operations of every [`UintParam`].
static UINT_OPS: bindings::kernel_param_ops = bindings::kernel_param_ops {
    flags: 0,
    set: Some(set_uint),
    get: Some(get_uint),
    free: None,
};

/// The parameter of entry `kp`, and its name.
///
/// # Safety
///
/// `kp` points to a [`ParamEntry`] (its `ops` are [`UINT_OPS`]).
unsafe fn param_of(kp: *const bindings::kernel_param) -> (&'static UintParam, &'static CStr) {
    // SAFETY: per the contract and `ParamEntry`'s invariants, `kp` is live
    // for the module's life and its `arg` and `name` are `'static`.
    unsafe {
        (
            &*(*kp).__bindgen_anon_1.arg.cast::<UintParam>(),
            CStr::from_char_ptr((*kp).name),
        )
    }
}

/// `kernel_param_ops::set` of a [`UintParam`].
///
/// # Safety
///
/// Called by the loader or sysfs with a [`ParamEntry`] and `val` either
/// null or NUL-terminated.
unsafe extern "C" fn set_uint(val: *const c_char, kp: *const bindings::kernel_param) -> c_int {
    // SAFETY: `kp` is one of the entries `UINT_OPS` belongs to.
    let (param, name) = unsafe { param_of(kp) };
    if val.is_null() {
        pr_err!(
            "{}: needs a value ({}={}..{})\n",
            name,
            name,
            param.min,
            param.max
        );
        return EINVAL.to_errno();
    }
    // SAFETY: `val` is NUL-terminated (the contract) and outlives the call.
    let text = unsafe { CStr::from_char_ptr(val) };
    match param.set(name, text) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Writes into a byte slice, cutting what does not fit.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// `kernel_param_ops::get` of a [`UintParam`]: the value and a newline.
///
/// # Safety
///
/// Called by sysfs with a [`ParamEntry`] and a `PAGE_SIZE` buffer.
unsafe extern "C" fn get_uint(buffer: *mut c_char, kp: *const bindings::kernel_param) -> c_int {
    // SAFETY: `kp` is one of the entries `UINT_OPS` belongs to.
    let (param, _) = unsafe { param_of(kp) };
    // Ten digits and a newline at most; sysfs's buffer is a page.
    // SAFETY: `buffer` is valid for writes of `PAGE_SIZE` bytes (the
    // contract), more than the 16 used, and nothing else uses it now.
    let buf = unsafe { core::slice::from_raw_parts_mut(buffer.cast::<u8>(), 16) };
    let mut w = SliceWriter { buf, len: 0 };
    let _ = writeln!(w, "{}", param.get());
    w.len as c_int
}

/// The `.modinfo` string `text` as a NUL-terminated byte array of `N`
/// bytes (`text.len() + 1`), as `modinfo` reads them.
pub(crate) const fn modinfo<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    assert!(bytes.len() + 1 == N);
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Declares the module parameter `$name`, backed by the `static`
/// [`UintParam`] `$param`, with sysfs permissions `$perm` and the
/// description `$desc` (shown by `modinfo`), as C's `module_param_cb()`
/// with `MODULE_PARM_DESC()` and `parmtype` `uint`. Use it once per
/// parameter, in the crate root of a loadable module.
macro_rules! module_param {
    ($param:path, $name:literal, $perm:expr, $desc:literal) => {
        const _: () = {
            // Stricter than VERIFY_OCTAL_PERMISSIONS: only the owner writes.
            assert!(($perm) & 0o002 == 0 && ($perm) & 0o020 == 0 && ($perm) <= 0o777);
            #[link_section = "__param"]
            #[used]
            static ENTRY: $crate::kapi::param::ParamEntry =
                $crate::kapi::param::ParamEntry::uint(::kernel::c_str!($name), &$param, $perm);
            const PARM: &str = concat!("parm=", $name, ":", $desc);
            #[link_section = ".modinfo"]
            #[used]
            static PARM_INFO: [u8; PARM.len() + 1] = $crate::kapi::param::modinfo(PARM);
            const TYPE: &str = concat!("parmtype=", $name, ":uint");
            #[link_section = ".modinfo"]
            #[used]
            static TYPE_INFO: [u8; TYPE.len() + 1] = $crate::kapi::param::modinfo(TYPE);
        };
    };
}
