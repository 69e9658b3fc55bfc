// SPDX-License-Identifier: GPL-2.0

//! Balloon pages through `mm/balloon_compaction.c`.
//!
//! Pages handed to the host live on the list of a [`BalloonPages`] (a
//! `struct balloon_dev_info`), where they stay movable: compaction may
//! isolate one and ask the driver, through [`Migrate`], to swap it for a
//! fresh page. Outside the list the driver owns pages through two types
//! whose `Drop` gives them back to the page allocator, so no error path can
//! leak one:
//!
//! - [`NewPage`]: allocated for the balloon, not yet enqueued;
//! - [`DeflatedPage`]: taken out of the balloon; on drop it also restores
//!   the managed page count if the balloon had taken it out.

use super::{batch::Batch, sync::with_irq_locked, virtio::queue::DropsAnywhere};
use crate::kapi::bindings;
use core::{
    cell::Cell, marker::PhantomData, marker::PhantomPinned, mem::MaybeUninit, ptr::NonNull,
};
use kernel::{ffi::c_int, prelude::*, types::Opaque};

/// Page frame number of `page`.
///
/// # Safety
///
/// `page` must point to a live `struct page`.
unsafe fn pfn_of(page: *mut bindings::page) -> u64 {
    // SAFETY: live page per the function's contract.
    unsafe { bindings::page_to_pfn(page) as u64 }
}

/// A page allocated for the balloon and not yet on its list.
///
/// # Invariants
///
/// `page` is a page from `balloon_page_alloc` (or the same allocation in
/// bulk) on which this value holds the only reference.
#[repr(transparent)]
pub(crate) struct NewPage {
    page: NonNull<bindings::page>,
}

// SAFETY: a page reference may be handed between threads.
unsafe impl Send for NewPage {}

impl NewPage {
    /// Page frame number (kernel pages).
    pub(crate) fn pfn(&self) -> u64 {
        // SAFETY: the page is live while we hold our reference.
        unsafe { pfn_of(self.page.as_ptr()) }
    }
}

impl Drop for NewPage {
    fn drop(&mut self) {
        // SAFETY: we hold the only reference (type invariant): this frees it.
        unsafe { bindings::put_page(self.page.as_ptr()) };
    }
}

// SAFETY: dropping a `NewPage` only frees a page (`put_page` of the only
// reference: the page allocator's own locks, no sleeping).
unsafe impl DropsAnywhere for NewPage {}

/// A page taken out of the balloon. Dropping it returns it to the guest:
/// first to the managed page count (if the balloon took it from there),
/// then to the page allocator.
///
/// # Invariants
///
/// `page` was dequeued from a balloon list and finalized; this value holds
/// the balloon's reference to it. `account` tells whether its enqueue took
/// it out of the managed page count.
pub(crate) struct DeflatedPage {
    page: NonNull<bindings::page>,
    account: bool,
}

// SAFETY: a page reference may be handed between threads.
unsafe impl Send for DeflatedPage {}

impl DeflatedPage {
    /// Page frame number (kernel pages).
    pub(crate) fn pfn(&self) -> u64 {
        // SAFETY: the page is live while we hold the balloon's reference.
        unsafe { pfn_of(self.page.as_ptr()) }
    }
}

impl Drop for DeflatedPage {
    fn drop(&mut self) {
        // SAFETY: live, finalized page off every balloon list, carrying the
        // balloon's reference (type invariant), which we drop here.
        unsafe {
            if self.account {
                bindings::adjust_managed_page_count(self.page.as_ptr(), 1);
            }
            bindings::put_page(self.page.as_ptr());
        }
    }
}

impl Batch<NewPage> {
    /// Adds up to `n` pages (at most the room left), allocated the balloon
    /// way (movable, no retries, no emergency reserves, no warning on
    /// failure, as `balloon_page_alloc`) but in bulk: from the per-CPU free
    /// lists in one go while the zone is well above its low watermark,
    /// otherwise one page through the allocator's slow path. Returns how
    /// many were added; 0 when memory is short. May sleep (reclaim):
    /// process context only.
    pub(crate) fn alloc_bulk(&mut self, n: usize) -> usize {
        let len = self.len();
        let spare = self.spare_capacity_mut();
        let n = n.min(spare.len());
        // The allocator fills only the NULL entries of the array.
        let array = spare.as_mut_ptr().cast::<*mut bindings::page>();
        // `NewPage` is a transparent `NonNull<page>`, so a slot is a
        // `struct page *`; `MaybeUninit` slots may hold any bit pattern and
        // nothing drops them, so nulling them first loses nothing. With
        // every entry NULL, `alloc_pages_bulk_noprof` (mm/page_alloc.c)
        // fills entries 0, 1, ... in order and returns how many.
        // SAFETY: `array` has `n` writable entries (see above).
        let got = unsafe {
            for i in 0..n {
                array.add(i).write(core::ptr::null_mut());
            }
            bindings::balloon_pages_alloc_bulk(n as _, array)
        } as usize;
        // So the first `got` entries are pages (see above).
        let got = got.min(n);
        // SAFETY: the first `got` spare slots hold fresh pages with one
        // reference each, now owned by the batch (`NewPage`'s invariant);
        // the slots after them hold nothing that needs dropping.
        unsafe { self.set_len(len + got) };
        got
    }
}

/// What a driver does when compaction migrates one of its balloon pages.
pub(crate) trait Migrate: Sized + Send + Sync {
    /// Swaps the isolated balloon page of `m` for its replacement: must not
    /// sleep on locks that balloon inflation holds while allocating (return
    /// `EAGAIN` and compaction retries later), and tells the host about both
    /// pages once the swap is committed. The old page is released when the
    /// returned [`Migrated`] drops, after the handler has returned.
    ///
    /// Once [`Migration::commit`] ran, the migration has happened, whatever
    /// the handler returns.
    fn migrate<'a>(pages: &'a BalloonPages<Self>, m: Migration<'a, Self>) -> Result<Migrated<'a>>;
}

/// The set of pages in a balloon (`struct balloon_dev_info`), together with
/// the driver data `T` that its migration callback needs.
///
/// # Invariants
///
/// `info` is initialised by `balloon_devinfo_init`, pinned, and its
/// `migratepage` (if set) is `migrate_trampoline::<T>`. `info` is the first
/// field of this `repr(C)` struct, so a pointer to it is a pointer to the
/// whole. Every page on its list or isolated from it holds one reference
/// owned by the balloon. `account` is fixed for the struct's life.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct BalloonPages<T: Migrate> {
    #[pin]
    info: Opaque<bindings::balloon_dev_info>,
    account: bool,
    #[pin]
    data: T,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the list is protected by its own spinlock; `T` is `Send + Sync`.
unsafe impl<T: Migrate> Send for BalloonPages<T> {}
// SAFETY: every method takes `&self` and locks `pages_lock` or calls C
// functions that do.
unsafe impl<T: Migrate> Sync for BalloonPages<T> {}

impl<T: Migrate> BalloonPages<T> {
    /// An empty balloon. With `account`, pages going in leave the managed
    /// page count (MemTotal shrinks) and come back to it on the way out.
    pub(crate) fn new(account: bool, data: impl PinInit<T, Error>) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            // SAFETY: `slot` is valid for writes and pinned.
            // INVARIANT: initialised; `migratepage` is ours or null.
            info <- Opaque::ffi_init(|slot: *mut bindings::balloon_dev_info| unsafe {
                bindings::balloon_devinfo_init(slot);
                if cfg!(CONFIG_BALLOON_COMPACTION) {
                    (*slot).migratepage = Some(migrate_trampoline::<T>);
                }
            }),
            account,
            data <- data,
            _pin: PhantomPinned,
        }? Error)
    }

    /// The driver data.
    pub(crate) fn data(&self) -> &T {
        &self.data
    }

    /// Whether pages in the balloon are taken out of the managed count.
    pub(crate) fn accounts(&self) -> bool {
        self.account
    }

    /// Puts every page of `pages` in the balloon (where they stay movable),
    /// under one acquisition of the balloon's list lock, and empties the
    /// batch. Counts a `balloon_inflate` event per page.
    pub(crate) fn enqueue_all(&self, pages: &mut Batch<NewPage>) {
        let n = pages.len();
        if n == 0 {
            return;
        }
        let mut head = MaybeUninit::<bindings::list_head>::uninit();
        let head = head.as_mut_ptr();
        // Each page is live with our only reference (`NewPage`'s
        // invariant), which goes to the balloon with it (type invariant):
        // the batch gives them up (its length is set to 0) before they go.
        // A fresh page's `lru` is unused, so it may link the local list.
        // SAFETY: as above; `head` is valid for writes and is not moved
        // while in use, and `info` is initialised.
        unsafe {
            bindings::INIT_LIST_HEAD(head);
            // Accounted before the pages become visible to migration.
            for page in pages.as_slice() {
                let raw = page.page.as_ptr();
                if self.account {
                    bindings::adjust_managed_page_count(raw, -1);
                }
                bindings::balloon_page_push(head, raw);
            }
            pages.set_len(0);
            // It takes every page of the list (or BUG()s on one it cannot
            // lock, which a fresh page never is).
            bindings::balloon_page_list_enqueue(self.info.get(), head);
        }
        // If a kernel ever left some on the list, they stay there, held by
        // nobody: the caller describes every page to the host, so freeing
        // one would hand the guest memory the host may discard.
        // SAFETY: `head` is initialised and only read.
        if !unsafe { bindings::list_empty(head) } {
            pr_err!("balloon pages were left off the balloon's list; leaking them\n");
        }
    }

    /// Takes up to `n` pages out of the balloon into `out` (as many as it has
    /// room for). Pages isolated by compaction are skipped. Counts a
    /// `balloon_deflate` event per page. Returns how many were taken.
    pub(crate) fn dequeue(&self, n: usize, out: &mut Batch<DeflatedPage>) -> usize {
        // `out` has room for all `n` pages: `push` cannot fail.
        self.dequeue_each(n.min(out.room()), |page| {
            let _ = out.push(page);
        })
    }

    /// Takes up to `n` pages out of the balloon and hands each to `f`,
    /// without allocating. Returns how many were taken.
    fn dequeue_each(&self, n: usize, mut f: impl FnMut(DeflatedPage)) -> usize {
        if n == 0 {
            return 0;
        }
        let mut head = MaybeUninit::<bindings::list_head>::uninit();
        let head = head.as_mut_ptr();
        // SAFETY: `head` is valid for writes and is not moved while in use;
        // `info` is initialised. Dequeued pages are finalized and carry the
        // balloon's reference, which `DeflatedPage` takes over.
        unsafe {
            bindings::INIT_LIST_HEAD(head);
            let got = bindings::balloon_page_list_dequeue(self.info.get(), head, n);
            for _ in 0..got {
                let Some(page) = NonNull::new(bindings::balloon_page_pop(head)) else {
                    break;
                };
                f(DeflatedPage {
                    page,
                    account: self.account,
                });
            }
            got
        }
    }

    /// Whether the balloon holds no page at all: its list is empty and
    /// compaction has none isolated, read together under the list's lock.
    /// (A page can be on the list and still not dequeueable for a moment,
    /// while the migration code holds its page lock.)
    pub(crate) fn is_drained(&self) -> bool {
        let info = self.info.get();
        self.with_pages_locked(|| {
            // SAFETY: `info` is initialised; both fields are read under the
            // lock that protects them.
            unsafe { bindings::list_empty(&raw const (*info).pages) && (*info).isolated_pages == 0 }
        })
    }

    /// Runs `f` with the list's lock (`pages_lock`) held, interrupts off.
    fn with_pages_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: `info` is initialised (type invariant), so its lock is,
        // and it lives as long as `self`.
        unsafe { with_irq_locked(&raw mut (*self.info.get()).pages_lock, f) }
    }
}

#[pinned_drop]
impl<T: Migrate> PinnedDrop for BalloonPages<T> {
    fn drop(self: Pin<&mut Self>) {
        // The driver empties the balloon (telling the host) before it lets
        // go of it. Should pages remain, give them back to the guest rather
        // than leak them or leave them pointing at freed memory; the device
        // is gone by now. This allocates nothing. Isolated pages come back
        // when their migration ends, which cannot take long.
        let mut left = 0usize;
        while !self.is_drained() {
            // Dropping a `DeflatedPage` gives it back to the guest.
            let got = self.dequeue_each(64, drop);
            left += got;
            if got == 0 {
                // SAFETY: process context (drop runs from remove/unload).
                unsafe { bindings::cond_resched() };
            }
        }
        if left != 0 {
            pr_warn!(
                "{} pages were still in the balloon at teardown; given back\n",
                left
            );
        }
    }
}

/// A migration in progress: compaction isolated `old` from the balloon and
/// offers `new` in its place. [`Migration::commit`] makes the swap.
///
/// # Invariants
///
/// `old` is an isolated page of `pages`, `new` a locked page with one
/// reference owned by the migration code; both live for `'a`, and both stay
/// locked by the migration code until after the callback returns (it locked
/// them before calling `migratepage` and unlocks them afterwards).
/// `committed` is the trampoline's record of whether the swap happened.
pub(crate) struct Migration<'a, T: Migrate> {
    pages: &'a BalloonPages<T>,
    new: NonNull<bindings::page>,
    old: NonNull<bindings::page>,
    committed: &'a Cell<bool>,
}

impl<'a, T: Migrate> Migration<'a, T> {
    /// Page frame number of the page going into the balloon.
    pub(crate) fn new_pfn(&self) -> u64 {
        // SAFETY: live page (type invariant).
        unsafe { pfn_of(self.new.as_ptr()) }
    }

    /// Page frame number of the page leaving the balloon.
    pub(crate) fn old_pfn(&self) -> u64 {
        // SAFETY: live page (type invariant).
        unsafe { pfn_of(self.old.as_ptr()) }
    }

    /// Puts the new page in the balloon in place of the old one and counts a
    /// `balloon_migrate` event. The old page leaves when the result drops.
    pub(crate) fn commit(self) -> Migrated<'a> {
        let info = self.pages.info.get();
        let (new, old) = (self.new.as_ptr(), self.old.as_ptr());
        // The balloon takes a reference on `new` (type invariant of
        // `BalloonPages`). Moving one page of accounting between zones keeps
        // the managed counts right when the pages' zones differ.
        // SAFETY: both pages are live and locked by the migration code.
        unsafe {
            bindings::get_page(new);
            if self.pages.account && bindings::page_zone(old) != bindings::page_zone(new) {
                bindings::adjust_managed_page_count(old, 1);
                bindings::adjust_managed_page_count(new, -1);
            }
        }
        self.pages.with_pages_locked(|| {
            // Once on the list, `new` can be found by anyone who takes pages
            // out of the balloon; `balloon_page_list_dequeue` only takes a
            // page it can lock, and the migration code keeps `new` locked
            // until after this callback (type invariant), so nobody takes it
            // before the swap (the count and the caller's accounting) is
            // complete.
            // SAFETY: the list and `isolated_pages` change under
            // `pages_lock`, held here; `new` is live and locked.
            unsafe {
                bindings::balloon_page_insert(info, new);
                (*info).isolated_pages -= 1;
                bindings::count_vm_event(bindings::vm_event_item_BALLOON_MIGRATE);
            }
        });
        self.committed.set(true);
        // INVARIANT: `old` is off the list, no longer counted as isolated,
        // and still holds the balloon's reference.
        Migrated {
            old: self.old,
            _life: PhantomData,
        }
    }
}

/// A committed migration. Dropping it releases the old page: it is
/// finalized and the balloon's reference is dropped. It cannot outlive the
/// migration callback (`'a`).
///
/// # Invariants
///
/// `old` is a locked page that has left the balloon but still holds the
/// balloon's reference.
pub(crate) struct Migrated<'a> {
    old: NonNull<bindings::page>,
    _life: PhantomData<&'a ()>,
}

impl Drop for Migrated<'_> {
    fn drop(&mut self) {
        // `balloon_page_finalize` clears the page's movable mapping, which
        // needs the page locked: the migration code keeps `old` locked
        // until after the callback, and a `Migrated` cannot outlive it
        // (`'a`).
        // SAFETY: the page is locked by the migration code and carries the
        // balloon's reference (type invariant), which we drop here.
        unsafe {
            bindings::balloon_page_finalize(self.old.as_ptr());
            bindings::put_page(self.old.as_ptr());
        }
    }
}

/// `balloon_dev_info.migratepage` of a [`BalloonPages<T>`].
///
/// # Safety
///
/// Called by `balloon_page_migrate` with the `info` of a live
/// `BalloonPages<T>` (only `BalloonPages::new` installs this function), an
/// isolated page of it as `page` and a locked replacement as `newpage`.
unsafe extern "C" fn migrate_trampoline<T: Migrate>(
    info: *mut bindings::balloon_dev_info,
    newpage: *mut bindings::page,
    page: *mut bindings::page,
    _mode: bindings::migrate_mode,
) -> c_int {
    // SAFETY: `info` is the first field of a live `repr(C)` `BalloonPages<T>`
    // (type invariant and the function's contract).
    let pages = unsafe { &*info.cast::<BalloonPages<T>>() };
    let (Some(new), Some(old)) = (NonNull::new(newpage), NonNull::new(page)) else {
        return EINVAL.to_errno();
    };
    let committed = Cell::new(false);
    // INVARIANT: per the function's contract.
    let m = Migration {
        pages,
        new,
        old,
        committed: &committed,
    };
    let result = T::migrate(pages, m);
    // A committed swap is a success even if the handler then failed (its
    // `Migrated` was dropped, releasing the old page): reporting failure
    // would make the migration code reuse a page that already changed hands.
    match result {
        Ok(done) => {
            drop(done);
            bindings::MIGRATEPAGE_SUCCESS as c_int
        }
        Err(_) if committed.get() => bindings::MIGRATEPAGE_SUCCESS as c_int,
        Err(e) => e.to_errno(),
    }
}
