// SPDX-License-Identifier: GPL-2.0

//! A vector with a fixed capacity, reserved up front: code that must not
//! allocate while memory is short (the balloon's hot paths, the OOM path)
//! reserves its bookkeeping once and then only moves items.

use super::virtio::queue::DropsAnywhere;
use core::mem::MaybeUninit;
use kernel::prelude::*;

/// A vector with a fixed capacity, reserved when it is made: adding to it
/// never allocates (a full batch hands the item back).
pub(crate) struct Batch<T> {
    items: KVec<T>,
}

impl<T> Batch<T> {
    /// An empty batch with room for `capacity` items.
    pub(crate) fn with_capacity(capacity: usize) -> Result<Self> {
        Ok(Self {
            items: KVec::with_capacity(capacity, GFP_KERNEL)?,
        })
    }

    /// Number of items.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Room left.
    pub(crate) fn room(&self) -> usize {
        self.items.capacity() - self.items.len()
    }

    /// Appends `item`, or hands it back if the batch is full.
    pub(crate) fn push(&mut self, item: T) -> core::result::Result<(), T> {
        if self.room() == 0 {
            return Err(item);
        }
        // Within the reserved capacity `push` does not allocate, so it
        // cannot fail; the flags are never used.
        self.items.push(item, GFP_NOWAIT).map_err(|_| ()).ok();
        Ok(())
    }

    /// Removes and returns the last item.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let len = self.items.len();
        if len == 0 {
            return None;
        }
        // SAFETY: index `len - 1` holds an initialised item; shrinking the
        // length first hands its ownership to us, so it is read exactly once.
        unsafe {
            self.items.set_len(len - 1);
            Some(self.items.as_ptr().add(len - 1).read())
        }
    }

    /// Moves items from the end of `from`, keeping their order, until this
    /// batch is full or `from` is empty.
    pub(crate) fn fill_from(&mut self, from: &mut Self) {
        let n = self.room().min(from.len());
        let left = from.items.len() - n;
        let len = self.items.len();
        let src = from.items.as_ptr();
        let dst = self.items.spare_capacity_mut().as_mut_ptr().cast::<T>();
        // `from`'s items `left..left + n` are initialised, and `dst` has
        // room for `n` (`n` is at most `self.room()`); the two vectors are
        // different allocations (two `&mut`), and `src` stays valid through
        // `from.items.set_len`, which only writes the length. Shortening
        // `from` first hands those items over, so each is owned exactly
        // once: by `self` once its length covers them. Nothing in between
        // can panic.
        // SAFETY: as above.
        unsafe {
            from.items.set_len(left);
            core::ptr::copy_nonoverlapping(src.add(left), dst, n);
            self.items.set_len(len + n);
        }
    }

    /// Drops every item.
    pub(crate) fn clear(&mut self) {
        while self.pop().is_some() {}
    }

    /// The items.
    pub(crate) fn as_slice(&self) -> &[T] {
        self.items.as_slice()
    }
    /// Of the items from index `from` on, keeps only those for which `keep`
    /// holds; the others are dropped. Those before `from` stay as they are;
    /// the kept ones may change order.
    pub(crate) fn retain_from(&mut self, from: usize, mut keep: impl FnMut(&T) -> bool) {
        let mut i = from;
        while let Some(item) = self.items.as_slice().get(i) {
            if keep(item) {
                i += 1;
            } else {
                // The last item takes its place.
                let last = self.items.len() - 1;
                self.items.as_mut_slice().swap(i, last);
                drop(self.pop());
            }
        }
    }

    /// The reserved room after the items, for code that fills it in place
    /// (and then calls [`Batch::set_len`]).
    pub(in crate::kapi) fn spare_capacity_mut(&mut self) -> &mut [MaybeUninit<T>] {
        self.items.spare_capacity_mut()
    }

    /// Sets the number of items.
    ///
    /// # Safety
    ///
    /// `len` is at most the capacity, and the slots up to it hold
    /// initialised items that the batch now owns (the ones past it are
    /// forgotten, not dropped).
    pub(in crate::kapi) unsafe fn set_len(&mut self, len: usize) {
        // SAFETY: as the caller promises.
        unsafe { self.items.set_len(len) };
    }
}

// SAFETY: dropping a batch drops its items, which are `DropsAnywhere`, and
// frees its kmalloc'd array (the slab allocator's own locks).
unsafe impl<T: DropsAnywhere> DropsAnywhere for Batch<T> {}
