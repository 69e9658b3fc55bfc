// SPDX-License-Identifier: GPL-2.0

//! Blocks of free memory taken from the page allocator and owned: a
//! [`PageBlock`] is `1 << order` contiguous pages, given back on drop;
//! [`PageBlocks`] holds any number of blocks of one order on an intrusive
//! list (through their head pages' `lru`), so holding one never allocates.

use super::virtio::queue::{Buffer, DropsAnywhere, Region};
use crate::kapi::bindings;
use core::ptr::NonNull;
use kernel::{page::PAGE_SIZE, prelude::*, types::Opaque};

/// The largest order the page allocator hands out (`MAX_PAGE_ORDER`).
pub(crate) const MAX_ORDER: u32 = bindings::MAX_PAGE_ORDER;

/// A block of `1 << order` pages.
///
/// # Invariants
///
/// `page` is the head of a block of `order` from `alloc_pages`, in the
/// kernel's direct map, owned by this value and on no list.
pub(crate) struct PageBlock {
    page: NonNull<bindings::page>,
    order: u32,
}

// SAFETY: a block of pages may be owned and freed by any thread.
unsafe impl Send for PageBlock {}

impl PageBlock {
    /// Takes a block that is free right now: no reclaim, no compaction, no
    /// retries, no emergency reserves and no warning on failure. `None`
    /// when no free block of that order is left. Never sleeps.
    pub(crate) fn take_free(order: u32) -> Option<Self> {
        if order > MAX_ORDER {
            return None;
        }
        let gfp = bindings::__GFP_NORETRY | bindings::__GFP_NOWARN | bindings::__GFP_NOMEMALLOC;
        // SAFETY: `order` is valid; without reclaim flags this never sleeps.
        let page = unsafe { bindings::alloc_pages(gfp, order) };
        // INVARIANT: a fresh block of `order`; without `__GFP_HIGHMEM` it
        // lies in the direct map.
        NonNull::new(page).map(|page| Self { page, order })
    }

    /// Bytes in the block.
    pub(crate) fn bytes(&self) -> usize {
        PAGE_SIZE << self.order
    }

    fn into_raw(self) -> NonNull<bindings::page> {
        let page = self.page;
        core::mem::forget(self);
        page
    }
}

impl Drop for PageBlock {
    fn drop(&mut self) {
        // SAFETY: we own the block (type invariant); this gives it back.
        unsafe { bindings::__free_pages(self.page.as_ptr(), self.order) };
    }
}

// SAFETY: dropping a block frees its pages (`__free_pages`: the page
// allocator's own locks, no sleeping).
unsafe impl DropsAnywhere for PageBlock {}

// SAFETY: the block is owned, in the direct map and never moves; while it
// is on a queue nothing else touches it (the value is the queue's).
unsafe impl Buffer for PageBlock {
    fn region(&self) -> Region {
        Region {
            // SAFETY: a live page in the direct map (type invariant).
            addr: unsafe { bindings::page_address(self.page.as_ptr()) },
            len: self.bytes() as u32,
            device_writes: true,
        }
    }
}

/// Blocks of one order, chained through their head pages' `lru`.
///
/// # Invariants
///
/// `head` is an initialised list head in its own allocation (so it does not
/// move with this value), and every entry on it is the `lru` of a block of
/// `order` that this value owns as a [`PageBlock`] would; `len` counts them.
pub(crate) struct PageBlocks {
    head: Pin<KBox<Opaque<bindings::list_head>>>,
    order: u32,
    len: usize,
}

// SAFETY: the list and its blocks are owned by this value and only reached
// through `&mut self` (or on drop).
unsafe impl Send for PageBlocks {}

impl PageBlocks {
    /// An empty list for blocks of `order`.
    pub(crate) fn new(order: u32) -> Result<Self> {
        let head = KBox::pin_init(
            // SAFETY: `slot` is valid for writes; INIT_LIST_HEAD points the
            // head at itself, in place, where it stays (it is pinned).
            Opaque::ffi_init(|slot: *mut bindings::list_head| unsafe {
                bindings::INIT_LIST_HEAD(slot)
            }),
            GFP_KERNEL,
        )?;
        // INVARIANT: an initialised empty list in its own allocation.
        Ok(Self {
            head,
            order,
            len: 0,
        })
    }

    /// Number of blocks held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keeps `block`; hands it back if it is of another order.
    pub(crate) fn push(&mut self, block: PageBlock) -> core::result::Result<(), PageBlock> {
        if block.order != self.order {
            return Err(block);
        }
        let page = block.into_raw();
        // SAFETY: the head is initialised (type invariant); the page is a
        // block head we own and that is on no list, so its `lru` is free.
        // INVARIANT: the block, of our order, is now owned through the list.
        unsafe { bindings::balloon_page_push(self.head.get(), page.as_ptr()) };
        self.len += 1;
        Ok(())
    }

    /// Takes a block off the list, if any.
    pub(crate) fn pop(&mut self) -> Option<PageBlock> {
        // SAFETY: the head is initialised (type invariant); the entries are
        // block heads this value owns, linked by `lru`.
        let page = unsafe { bindings::balloon_page_pop(self.head.get()) };
        let page = NonNull::new(page)?;
        self.len -= 1;
        // INVARIANT: off the list, of `order`, owned by the result alone.
        Some(PageBlock {
            page,
            order: self.order,
        })
    }

    /// Frees up to `n` blocks; returns how many.
    pub(crate) fn free(&mut self, n: usize) -> usize {
        let mut freed = 0;
        while freed < n {
            let Some(block) = self.pop() else {
                break;
            };
            drop(block);
            freed += 1;
        }
        freed
    }
}

impl Drop for PageBlocks {
    fn drop(&mut self) {
        self.free(usize::MAX);
    }
}
