// SPDX-License-Identifier: GPL-2.0

//! The cases for the parts of the safe layer (`kapi/`) whose guarantees
//! are behaviour rather than types: work items that end themselves,
//! debugfs entries that keep their parent, batches that neither drop nor
//! lose their items, sysfs values that keep to their page.

use super::*;

use core::sync::atomic::{AtomicU32, Ordering};
use kapi::{
    debugfs::{CounterFiles, Dir},
    sync::{Completion, Mutex},
    work::{self, Next, Running, Work, WorkHandler},
};

/// A handler that takes its own work item out of `slot` and drops it (or
/// only stops it), then says so. `runs` counts its runs and the runs that
/// saw themselves being stopped (checks in a work item would not reach
/// KUnit, which only hears the test's own task).
struct SelfEnding {
    slot: Arc<Mutex<Option<Work<SelfEnding>>>>,
    done: Arc<Completion>,
    runs: Arc<[AtomicU32; 2]>,
    drop_it: bool,
}

impl WorkHandler for SelfEnding {
    fn run(&self, me: &Running<'_>) -> Next {
        self.runs[0].fetch_add(1, Ordering::Relaxed);
        if self.drop_it {
            let work = self.slot.lock().take();
            drop(work);
        } else if let Some(work) = self.slot.lock().as_ref() {
            work.stop();
        }
        if me.stopping() {
            self.runs[1].fetch_add(1, Ordering::Relaxed);
        }
        self.done.complete();
        // Asks to run again: a stopped item must not.
        Next::Again
    }
}

/// Queues a `SelfEnding` item and waits for its first run to say it is
/// done; a work item that waited for itself would never get there.
type Slot = Arc<Mutex<Option<Work<SelfEnding>>>>;

fn self_ending(drop_it: bool) -> Option<(Slot, Arc<[AtomicU32; 2]>)> {
    let slot = Arc::pin_init(new_mutex!(None), GFP_KERNEL).ok()?;
    let done = Arc::pin_init(new_completion!("kunit::self_ending_done"), GFP_KERNEL).ok()?;
    let runs = Arc::new([AtomicU32::new(0), AtomicU32::new(0)], GFP_KERNEL).ok()?;
    let handler = SelfEnding {
        slot: slot.clone(),
        done: done.clone(),
        runs: runs.clone(),
        drop_it,
    };
    let work = new_work!(work::system_freezable(), handler, "kunit::self_ending").ok()?;
    let mut guard = slot.lock();
    let work = guard.insert(work);
    work.queue();
    drop(guard);
    if !done.wait_timeout(5000) {
        return None;
    }
    // Time for a wrong re-run to happen.
    kapi::sync::msleep(100);
    Some((slot, runs))
}

pub(crate) fn work_dropped_by_its_own_handler_does_not_wait_for_itself() {
    let ended = self_ending(true);
    check!(ended.is_some());
    if let Some((slot, runs)) = ended {
        check!(slot.lock().is_none());
        check_eq!(runs[0].load(Ordering::Relaxed), 1);
        check_eq!(runs[1].load(Ordering::Relaxed), 1);
    }
}

pub(crate) fn work_stopped_by_its_own_handler_runs_no_more() {
    let ended = self_ending(false);
    check!(ended.is_some());
    let Some((slot, runs)) = ended else {
        return;
    };
    check_eq!(runs[0].load(Ordering::Relaxed), 1);
    check_eq!(runs[1].load(Ordering::Relaxed), 1);
    let guard = slot.lock();
    check!(guard.is_some());
    if let Some(work) = guard.as_ref() {
        // Queueing a stopped item does nothing.
        work.queue();
    }
    drop(guard);
    kapi::sync::msleep(100);
    check_eq!(runs[0].load(Ordering::Relaxed), 1);
    // Dropping it now (from the test, not the handler) is an ordinary stop.
    let work = slot.lock().take();
    drop(work);
}

counters! {
    /// Counters for the debugfs case.
    struct TestCounters {
        /// One counter.
        ticks,
    }
}

/// Whether `/sys/kernel/debug/<name>` exists.
#[cfg(CONFIG_DEBUG_FS)]
fn debugfs_has(name: &kernel::str::CStr) -> bool {
    // SAFETY: `name` is a valid C string; a null parent is the debugfs root.
    let d = unsafe { bindings::debugfs_lookup(name.as_char_ptr(), core::ptr::null_mut()) };
    if d.is_null() || kernel::error::from_err_ptr(d).is_err() {
        return false;
    }
    // SAFETY: `debugfs_lookup` returned a referenced dentry.
    unsafe { bindings::dput(d) };
    true
}

/// Without debugfs nothing is ever there, and the entries must still work.
#[cfg(not(CONFIG_DEBUG_FS))]
fn debugfs_has(_name: &kernel::str::CStr) -> bool {
    false
}

pub(crate) fn debugfs_entries_keep_their_parent() {
    let name = c_str!("vbrs_kunit_parent");
    let Ok(root) = Dir::new(name, None) else {
        check!(false);
        return;
    };
    let Ok(counters) = Arc::new(TestCounters::default(), GFP_KERNEL) else {
        check!(false);
        return;
    };
    let files = CounterFiles::new(c_str!("child"), &root, counters);
    let debugfs = cfg!(CONFIG_DEBUG_FS);
    check!(debugfs_has(name) == debugfs);
    // The parent's handle goes first; the child keeps the directory.
    drop(root);
    check!(debugfs_has(name) == debugfs);
    drop(files);
    check!(!debugfs_has(name));
}

/// An item that counts its drops, to check that moving items between
/// batches neither drops nor loses any.
struct Counted<'a>(u32, &'a AtomicU32);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn batches_move_their_tail_and_filter_from_an_index() {
    use kapi::{balloon::NewPage, batch::Batch};
    let drops = AtomicU32::new(0);
    let (Ok(mut from), Ok(mut into)) = (Batch::with_capacity(8), Batch::with_capacity(5)) else {
        check!(false);
        return;
    };
    for i in 1..=6u32 {
        check!(from.push(Counted(i, &drops)).is_ok());
    }
    check!(into.push(Counted(0, &drops)).is_ok());
    let ids = |b: &Batch<Counted<'_>>| b.as_slice().iter().fold(0u32, |acc, c| acc * 10 + c.0);
    // The last items move, in order, behind what the batch holds, up to
    // the room there is.
    into.fill_from(&mut from);
    check_eq!(ids(&into), 3456);
    check_eq!(ids(&from), 12);
    // Full: nothing moves. Then `from` runs out before the room does.
    into.fill_from(&mut from);
    check_eq!(from.len(), 2);
    let Ok(mut wide) = Batch::with_capacity(8) else {
        check!(false);
        return;
    };
    wide.fill_from(&mut from);
    check_eq!(ids(&wide), 12);
    check_eq!(from.len(), 0);
    check_eq!(drops.load(Ordering::Relaxed), 0);
    drop((from, into, wide));
    check_eq!(drops.load(Ordering::Relaxed), 7);
    // Real pages: those before the index are kept whatever `keep` says.
    let Ok(mut pages) = Batch::<NewPage>::with_capacity(8) else {
        check!(false);
        return;
    };
    while pages.len() < 6 && pages.alloc_bulk(6 - pages.len()) != 0 {}
    check_eq!(pages.len(), 6);
    let first: [u64; 3] = core::array::from_fn(|i| pages.as_slice().get(i).map_or(0, |p| p.pfn()));
    pages.retain_from(3, |_| false);
    check_eq!(pages.len(), 3);
    for (i, pfn) in first.iter().enumerate() {
        check_eq!(pages.as_slice().get(i).map(|p| p.pfn()), Some(*pfn));
    }
    let odd = pages.as_slice().iter().filter(|p| p.pfn() % 2 == 1).count();
    pages.retain_from(0, |p| p.pfn() % 2 == 1);
    check_eq!(pages.len(), odd);
    check!(pages.as_slice().iter().all(|p| p.pfn() % 2 == 1));
}

pub(crate) fn sysfs_values_keep_to_their_page() {
    let mut page = match KVec::<u8>::with_capacity(kernel::page::PAGE_SIZE, GFP_KERNEL) {
        Ok(p) => p,
        Err(_) => {
            check!(false);
            return;
        }
    };
    for _ in 0..kernel::page::PAGE_SIZE {
        page.push(0, GFP_KERNEL).ok();
    }
    check_eq!(page.len(), kernel::page::PAGE_SIZE);
    // SAFETY: `page` is PAGE_SIZE bytes, valid for writes, used by nothing
    // else while `out` lives.
    let mut out = unsafe { kapi::sysfs::Show::from_raw(page.as_mut_ptr().cast()) };
    check!(out.line(format_args!("{}", 4096u64)).is_ok());
    check_eq!(out.len(), 5);
    // A value that would run past the page is refused, and written nowhere.
    let size = kernel::page::PAGE_SIZE;
    let mut xs = KVec::<u8>::new();
    for _ in 0..size - 4 {
        xs.push(b'x', GFP_KERNEL).ok();
    }
    let long = core::str::from_utf8(&xs).unwrap_or("");
    check_eq!(long.len(), size - 4);
    check!(out.line(format_args!("{}", long)).is_err());
    check_eq!(out.len(), 5);
    // What fits in a page less one byte (sysfs takes a full page for an
    // error) is taken.
    check!(out.line(format_args!("{}", &long[..size - 7])).is_ok());
    check_eq!(out.len(), size - 1);
    check!(out.line(format_args!("")).is_err());
    // `out` is not used after this point; the page is read directly.
    check_eq!(&page[..5], b"4096\n");
    check_eq!(page[size - 2], b'\n');
    check_eq!(page[size - 1], 0);
}
