// SPDX-License-Identifier: GPL-2.0

//! Read-only sysfs attributes a driver gives each device it is bound to:
//! a named group (a directory under the device) that the driver core
//! creates from `struct device_driver::dev_groups` once probe has
//! succeeded, and removes before the bus's remove runs. Removal waits for
//! the reads in progress (kernfs drains them), so a read always finds the
//! driver bound and its data alive.
//!
//! The attributes are made when the driver registers, from a table of
//! [`Attr`]s (a name and the function that shows it); one C callback of
//! the bus's layer serves them all and finds the entry by
//! [`Group::index_of`]. A value is written with [`Show`], which keeps to
//! the page sysfs hands a show callback, as `sysfs_emit` does.

use crate::kapi::bindings;
use core::{fmt, marker::PhantomPinned, ptr};
use kernel::{ffi::c_char, page::PAGE_SIZE, prelude::*, str::CStr, types::Opaque};

/// One read-only attribute of a driver's group: its file name and what it
/// shows for the driver's data `T` (one value, in the unit its
/// documentation names, and a newline).
pub(crate) struct Attr<T> {
    pub(crate) name: &'static CStr,
    pub(crate) show: fn(&T, &mut Show<'_>) -> Result,
}

/// Whether `attrs` can be the files of one sysfs directory: each name is
/// a file name (not empty, no `/`) and none is used twice. Checked when a
/// driver is built: sysfs would only refuse them at probe.
pub(crate) const fn names_are_valid<T>(attrs: &[Attr<T>]) -> bool {
    let mut i = 0;
    while i < attrs.len() {
        let a = attrs[i].name.as_bytes_with_nul();
        if a.len() < 2 {
            return false;
        }
        let mut k = 0;
        while k < a.len() {
            if a[k] == b'/' {
                return false;
            }
            k += 1;
        }
        let mut j = i + 1;
        while j < attrs.len() {
            let b = attrs[j].name.as_bytes_with_nul();
            if a.len() == b.len() {
                let mut k = 0;
                while k < a.len() && a[k] == b[k] {
                    k += 1;
                }
                if k == a.len() {
                    return false;
                }
            }
            j += 1;
        }
        i += 1;
    }
    true
}

/// The C signature of a device attribute's show callback.
pub(crate) type ShowCallback = unsafe extern "C" fn(
    *mut bindings::device,
    *mut bindings::device_attribute,
    *mut c_char,
) -> isize;

/// One attribute, and where it sits in its table.
#[repr(C)]
struct Slot {
    attr: Opaque<bindings::device_attribute>,
    index: usize,
}

/// A group of read-only device attributes in the form
/// `struct device_driver::dev_groups` takes.
///
/// # Invariants
///
/// Pinned and never changed after [`Group::new`]: every `slots[i].attr`
/// is an initialised `device_attribute` (name from a `'static` table, mode
/// 0444, `show` set, no `store`, lockdep key static) with `slots[i].index
/// == i`; `ptrs` holds a pointer to each of them and then null; `group`
/// names a directory and points to `ptrs`; `groups` is `[&group, null]`.
/// The vectors are never pushed to again, so their buffers do not move.
#[pin_data]
pub(crate) struct Group {
    slots: KVec<Slot>,
    ptrs: KVec<*mut bindings::attribute>,
    #[pin]
    group: Opaque<bindings::attribute_group>,
    groups: [*const bindings::attribute_group; 2],
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: after `new` nothing in a `Group` changes; the C side only reads
// it (from any thread) while the driver is registered.
unsafe impl Send for Group {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for Group {}

impl Group {
    /// Makes a group named `dir` of attributes called `names`, each shown
    /// by `show` (which finds its entry by [`Group::index_of`]).
    pub(crate) fn new(
        dir: &'static CStr,
        names: impl ExactSizeIterator<Item = &'static CStr>,
        show: ShowCallback,
    ) -> Result<Pin<KBox<Self>>> {
        let n = names.len();
        let mut slots = KVec::with_capacity(n, GFP_KERNEL)?;
        for (index, name) in names.enumerate() {
            // SAFETY: all-zero is a valid `device_attribute` (null pointers,
            // `None`s); the fields set below are those sysfs reads.
            let mut attr: bindings::device_attribute = unsafe { core::mem::zeroed() };
            attr.attr.name = name.as_char_ptr();
            attr.attr.mode = 0o444;
            // A made attribute needs a static lockdep key
            // (`sysfs_attr_init`): one class for every attribute made here.
            #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
            {
                let key: &'static kernel::sync::LockClassKey = kernel::static_lock_class!();
                attr.attr.key = crate::kapi::sync::class_ptr(key);
            }
            attr.show = Some(show);
            slots.push(
                Slot {
                    attr: Opaque::new(attr),
                    index,
                },
                GFP_KERNEL,
            )?;
        }
        let mut ptrs = KVec::with_capacity(n + 1, GFP_KERNEL)?;
        let mut group = KBox::pin_init(
            pin_init!(Self {
                slots,
                ptrs: KVec::new(),
                // SAFETY: all-zero is a valid `attribute_group`; filled in
                // below, once the slots are where they stay.
                group <- Opaque::ffi_init(|g: *mut bindings::attribute_group| unsafe {
                    g.write(core::mem::zeroed())
                }),
                groups: [ptr::null(); 2],
                _pin: PhantomPinned,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: nothing is moved out of the pinned box: only plain fields
        // are written and the C structs are filled in place.
        let this = unsafe { group.as_mut().get_unchecked_mut() };
        // Each pointer is to a whole `Slot` (its provenance covers `index`,
        // which `index_of` reads back): `attr` is the first field of the
        // `repr(C)` `Slot`, and `attr.attr` of the `device_attribute`.
        let base = this.slots.as_mut_ptr();
        for i in 0..this.slots.len() {
            ptrs.push(
                base.wrapping_add(i).cast::<bindings::attribute>(),
                GFP_KERNEL,
            )?;
        }
        ptrs.push(ptr::null_mut(), GFP_KERNEL)?;
        this.ptrs = ptrs;
        let g = this.group.get();
        // SAFETY: `g` is valid for writes (initialised above, not shared
        // yet); `dir` and the pointer table outlive the group.
        unsafe {
            (*g).name = dir.as_char_ptr();
            (*g).attrs = this.ptrs.as_mut_ptr();
        }
        this.groups = [g.cast_const(), ptr::null()];
        // INVARIANT: every slot is initialised with its index; `ptrs`,
        // `group` and `groups` point as stated; nothing changes after this.
        Ok(group)
    }

    /// The null-terminated array `dev_groups` takes; valid while `self`
    /// is.
    pub(crate) fn as_dev_groups(self: Pin<&Self>) -> *mut *const bindings::attribute_group {
        self.groups.as_ptr().cast_mut()
    }

    /// Which attribute of its table a show callback was called for.
    ///
    /// # Safety
    ///
    /// `attr` is the attribute sysfs passed to a show callback of a
    /// [`Group`] that is still alive.
    pub(crate) unsafe fn index_of(attr: *mut bindings::device_attribute) -> usize {
        // SAFETY: each attribute of a `Group` is the first field of a
        // `repr(C)` `Slot`, and sysfs was handed a pointer to the whole slot
        // (type invariant), which is alive (per the function's contract);
        // `Opaque` is transparent.
        unsafe { (*attr.cast::<Slot>()).index }
    }
}

/// The page a show callback writes its value into: at most
/// `PAGE_SIZE - 1` bytes, as `sysfs_emit` (sysfs takes a full page for an
/// error and cuts the value).
pub(crate) struct Show<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Show<'_> {
    /// # Safety
    ///
    /// `buf` is the buffer sysfs passed to a show callback: `PAGE_SIZE`
    /// bytes, valid for writes and not otherwise used until the callback
    /// returns.
    pub(crate) unsafe fn from_raw<'a>(buf: *mut c_char) -> Show<'a> {
        Show {
            // SAFETY: per the function's contract (the last byte is left
            // alone).
            buf: unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE - 1) },
            len: 0,
        }
    }

    /// Writes `args` and a newline: one value, as sysfs wants it.
    pub(crate) fn line(&mut self, args: fmt::Arguments<'_>) -> Result {
        fmt::Write::write_fmt(self, args).map_err(|_| EINVAL)?;
        fmt::Write::write_str(self, "\n").map_err(|_| EINVAL)
    }

    /// Bytes written so far (what the callback returns).
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl fmt::Write for Show<'_> {
    /// Appends `s`, or nothing if it does not fit in the page (an error).
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
