// SPDX-License-Identifier: GPL-2.0

//! Blocks of free memory for free page hinting (FREE_PAGE_HINT).
//!
//! A hinting run takes free memory from the page allocator in blocks of
//! `MAX_PAGE_ORDER` and tells the host their addresses: it may skip them
//! while it migrates the guest. The blocks stay taken until the host is
//! done, memory gets short, or the driver goes. [`HintBlock`] owns one
//! block and frees it on drop; [`HintBlocks`] holds any number of them on
//! an intrusive list, so holding a block never allocates.

use core::ptr::NonNull;
use kernel::{bindings, ffi::c_void, page::PAGE_SIZE, prelude::*, types::Opaque};

/// Allocation order of a hint block (`MAX_PAGE_ORDER`, as the C driver).
pub(crate) const ORDER: u32 = bindings::MAX_PAGE_ORDER;

/// Bytes in a hint block.
pub(crate) const BYTES: usize = PAGE_SIZE << ORDER;

/// A block of `1 << ORDER` free kernel pages taken for a hint.
///
/// # Invariants
///
/// `page` is the head of a block of order [`ORDER`] from `alloc_pages`,
/// in the kernel's direct map, owned by this value and on no list.
pub(crate) struct HintBlock {
    page: NonNull<bindings::page>,
}

// SAFETY: a block of pages may be owned and freed by any thread.
unsafe impl Send for HintBlock {}

impl HintBlock {
    /// Takes a block that is free right now: no reclaim, no compaction, no
    /// retries, no emergency reserves and no warning on failure. `None`
    /// when no free block of that size is left, which is how a hinting run
    /// knows it has hinted all it could.
    pub(crate) fn alloc() -> Option<Self> {
        let gfp = bindings::__GFP_NORETRY | bindings::__GFP_NOWARN | bindings::__GFP_NOMEMALLOC;
        // SAFETY: no preconditions; without reclaim flags this never sleeps.
        let page = unsafe { bindings::alloc_pages(gfp, ORDER) };
        // INVARIANT: a fresh block of order `ORDER`; without `__GFP_HIGHMEM`
        // it lies in the direct map.
        NonNull::new(page).map(|page| Self { page })
    }

    /// The block's kernel virtual address (also the token the free page
    /// queue hands back).
    pub(crate) fn addr(&self) -> *mut c_void {
        // SAFETY: a live page in the direct map (type invariant).
        unsafe { bindings::page_address(self.page.as_ptr()) }
    }

    fn into_raw(self) -> NonNull<bindings::page> {
        let page = self.page;
        core::mem::forget(self);
        page
    }
}

impl Drop for HintBlock {
    fn drop(&mut self) {
        // SAFETY: we own the block (type invariant); this gives it back.
        unsafe { bindings::__free_pages(self.page.as_ptr(), ORDER) };
    }
}

/// The hint blocks the driver holds, chained through their head pages'
/// `lru` (as balloon pages are): pushing and popping never allocate.
///
/// # Invariants
///
/// `head` is an initialised list head in its own allocation (so it does not
/// move with this value), and every entry on it is the `lru` of a block
/// that this value owns as a [`HintBlock`] would; `len` counts them.
pub(crate) struct HintBlocks {
    head: Pin<KBox<Opaque<bindings::list_head>>>,
    len: usize,
}

// SAFETY: the list and its blocks are owned by this value and only reached
// through `&mut self` (or on drop).
unsafe impl Send for HintBlocks {}

impl HintBlocks {
    /// An empty list.
    pub(crate) fn new() -> Result<Self> {
        let head = KBox::pin_init(
            // SAFETY: `slot` is valid for writes; INIT_LIST_HEAD points the
            // head at itself, in place, where it stays (it is pinned).
            Opaque::ffi_init(|slot: *mut bindings::list_head| unsafe {
                bindings::INIT_LIST_HEAD(slot)
            }),
            GFP_KERNEL,
        )?;
        // INVARIANT: an initialised empty list in its own allocation.
        Ok(Self { head, len: 0 })
    }

    /// Number of blocks held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keeps `block`.
    pub(crate) fn push(&mut self, block: HintBlock) {
        let page = block.into_raw();
        // SAFETY: the head is initialised (type invariant); the page is a
        // block head we own and that is on no list, so its `lru` is free.
        // INVARIANT: the block is now owned through the list.
        unsafe { bindings::balloon_page_push(self.head.get(), page.as_ptr()) };
        self.len += 1;
    }

    /// Takes a block off the list, if any.
    pub(crate) fn pop(&mut self) -> Option<HintBlock> {
        // SAFETY: the head is initialised (type invariant); the entries are
        // block heads this value owns, linked by `lru`.
        let page = unsafe { bindings::balloon_page_pop(self.head.get()) };
        let page = NonNull::new(page)?;
        self.len -= 1;
        // INVARIANT: off the list, owned by the returned value alone.
        Some(HintBlock { page })
    }

    /// Gives up to `n` blocks back to the page allocator; returns how many.
    pub(crate) fn release(&mut self, n: usize) -> usize {
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

impl Drop for HintBlocks {
    fn drop(&mut self) {
        self.release(usize::MAX);
    }
}
